"""Compiling the native CPU ops (plugins_trt/cpu) on the user's machine, into the cache entry
rmeeto_export.native loads them from (native.cache_entry()): `rmeeto-export native info|build`.

librmeeto_cpu_kernels.so needs CMake and a C++ compiler; librmeeto_ort_ops.so also needs ONNX Runtime's
C/C++ API headers, which its Python wheel does not ship. They come from --onnxruntime-include,
$ONNXRUNTIME_INCLUDE_DIR, a previous fetch into the cache, the system's libonnxruntime-dev, else a
fetch into the cache by plugins_trt/cpu/ort/fetch_headers.sh (Debian's package; apt-get, dpkg-deb and
the network). Without them the CPU kernels are built alone and ONNX Runtime keeps the function bodies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rmeeto_export import native
from rmeeto_export.cmake_build import (
    Found,
    Log,
    cmake_problem,
    find_cmake,
    plugin_sources,
    run_logged,
    staged_entry,
    start_log,
    tool_version,
)
from rmeeto_export.errors import UserError

HEADERS_ENV_VAR = "ONNXRUNTIME_INCLUDE_DIR"
API_HEADER = "onnxruntime_cxx_api.h"
# Where fetch_headers.sh leaves them in the cache folder: the package's files under ort-headers/ (Debian's layout).
FETCH_FOLDER = "ort-headers"
PACKAGE_HEADERS = Path("usr") / "include" / "onnxruntime"
FETCHED_HEADERS = Path(FETCH_FOLDER) / PACKAGE_HEADERS
SYSTEM_HEADERS = (Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime"))  # ort/CMakeLists.txt's PATHS
BUILD_INFO = "build.json"
HEADERS_FIX = f"give --onnxruntime-include DIR (the folder with {API_HEADER}) or set {HEADERS_ENV_VAR}"
ORT_NEEDS_HEADERS = f"{native.ORT_OPS_LIBRARY} not built: it needs ONNX Runtime's C/C++ headers: {HEADERS_FIX}"


@dataclass(frozen=True)
class Toolchain:
    """What `native build` would use; ``problems`` are (what is missing, the fix). Headers are optional."""

    cmake: Optional[Found]
    compiler: Optional[Found]
    headers: Optional[Found]
    problems: tuple[tuple[str, str], ...]

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {name: None if item is None else item.to_json()
                for name, item in (("cmake", self.cmake), ("compiler", self.compiler), ("onnxruntime_headers", self.headers))}


def sources() -> Path:
    return plugin_sources() / "cpu"


# ---------------------------------------------------------------------------------------- discovery


def ort_api_version(include_dir: Path) -> str:
    """"C API <n>" from onnxruntime_c_api.h: what decides which runtimes load the library (that one and newer)."""
    try:
        match = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", (include_dir / "onnxruntime_c_api.h").read_text(errors="replace"))
    except OSError:
        match = None
    return f"C API {match.group(1)}" if match else "unknown"


def _named_headers(folder: Path, source: str) -> Found:
    """Headers the user named: a folder that does not hold them is an error, not a silent fallback."""
    if not folder.is_dir():
        raise UserError(f"{source} {folder}: not a folder")
    if not (folder / API_HEADER).is_file():
        raise UserError(f"{source} {folder}: no {API_HEADER} there (give the folder that holds ONNX Runtime's C/C++ headers)")
    return Found(folder.resolve(), ort_api_version(folder), source)


def find_headers(onnxruntime_include: Optional[Path]) -> Optional[Found]:
    """ONNX Runtime's headers, from the first of: the option, the variable, the cache, the system."""
    if onnxruntime_include is not None:
        return _named_headers(onnxruntime_include, "--onnxruntime-include")
    if os.environ.get(HEADERS_ENV_VAR):
        return _named_headers(Path(os.environ[HEADERS_ENV_VAR]), HEADERS_ENV_VAR)
    candidates = [(native.user_cache_dir() / FETCHED_HEADERS, "fetched into the cache")]
    candidates += [(folder, "system") for folder in SYSTEM_HEADERS]
    return next((Found(folder, ort_api_version(folder), source) for folder, source in candidates
                 if (folder / API_HEADER).is_file()), None)


def find_compiler() -> Optional[Found]:
    """$CXX, else c++ on PATH: the compiler CMake would pick, passed to it explicitly."""
    name, source = (os.environ["CXX"], "CXX") if os.environ.get("CXX") else ("c++", "PATH")
    path = shutil.which(name)
    if path is None:
        return None
    return Found(Path(path), tool_version([path, "--version"], r"(\d+\.\d+\.\d+)") or "unknown", source)


def inspect_toolchain(onnxruntime_include: Optional[Path] = None) -> Toolchain:
    """What a build would use and each missing piece with its fix; changes nothing. UserError for
    headers the user named that are not there."""
    headers = find_headers(onnxruntime_include)
    cmake, compiler = find_cmake(), find_compiler()
    problems = [problem for problem in (cmake_problem(cmake),) if problem]
    if compiler is None:
        wanted = f"CXX={os.environ['CXX']}" if os.environ.get("CXX") else "c++"
        problems.append((f"a C++ compiler ({wanted} not found)", "install one (Debian/Ubuntu: apt install g++) or set CXX"))
    return Toolchain(cmake, compiler, headers, tuple(problems))


def fetch_hint() -> str:
    """What `native build` does without headers, for `native info`."""
    if shutil.which("apt-get") and shutil.which("dpkg-deb"):
        return (f"`native build` fetches them into {native.user_cache_dir() / FETCH_FOLDER} (Debian's libonnxruntime-dev; "
                f"needs the network), or {HEADERS_FIX}")
    return f"no apt-get/dpkg-deb to fetch them: {ORT_NEEDS_HEADERS}"


def fetch_headers(log_file: Path) -> Optional[Found]:
    """fetch_headers.sh into the cache folder; None (its reason in the log) when it cannot. The package is
    unpacked into a temporary folder renamed into place whole: an interrupted fetch leaves no partial headers."""
    cache = native.user_cache_dir()

    def has_headers(folder: Path) -> bool:
        return (folder / PACKAGE_HEADERS / API_HEADER).is_file()

    try:
        with staged_entry(cache / FETCH_FOLDER, has_headers, replace=True) as (_, staged):
            # A destination relative to the folder it runs in, the way `make native` runs it in the checkout.
            run_logged(["bash", str(sources() / "ort" / "fetch_headers.sh"), str(staged.relative_to(cache))], log_file,
                       "fetching ONNX Runtime's headers", cwd=cache)
            if not has_headers(staged):
                raise UserError("fetch_headers.sh unpacked no headers")
    except UserError:
        return None
    folder = cache / FETCHED_HEADERS
    return Found(folder, ort_api_version(folder), "fetched into the cache")


# ---------------------------------------------------------------------------------------- the cache entry


def read_entry(folder: Path) -> Optional[dict]:
    """A complete entry's build.json (the CPU kernels library at least), else None."""
    try:
        info = json.loads((folder / BUILD_INFO).read_text())
        libraries = list(info["libraries"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    complete = native.CPU_KERNELS_LIBRARY in libraries and all((folder / name).is_file() for name in libraries)
    return info if complete else None


def has_ort_ops(info: Optional[dict]) -> bool:
    return info is not None and native.ORT_OPS_LIBRARY in info["libraries"]


# ---------------------------------------------------------------------------------------- building


def _cmake_arguments(toolchain: Toolchain, build_dir: Path, headers: Optional[Found]) -> list[str]:
    arguments = [str(toolchain.cmake.path), "-S", str(sources()), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CXX_COMPILER={toolchain.compiler.path}"]
    return arguments + ([f"-DONNXRUNTIME_INCLUDE_DIR={headers.path}"] if headers else [])


def _compile(toolchain: Toolchain, headers: Optional[Found], final: Path, *, jobs: int, replace: bool, log_file: Path) -> list[str]:
    """Compiles plugins_trt/cpu into the cache entry `final` (staged, renamed into place); the libraries made."""
    with staged_entry(final, lambda folder: read_entry(folder) is not None, replace=replace) as (build_dir, staged):
        run_logged(_cmake_arguments(toolchain, build_dir, headers), log_file, "compiling the native ops")
        run_logged([str(toolchain.cmake.path), "--build", str(build_dir), "-j", str(jobs)], log_file, "compiling the native ops")
        if not (build_dir / native.CPU_KERNELS_LIBRARY).is_file():
            raise UserError(f"the native build made no {native.CPU_KERNELS_LIBRARY}; see {log_file}")
        libraries = [name for name in (native.CPU_KERNELS_LIBRARY, native.ORT_OPS_LIBRARY) if (build_dir / name).is_file()]
        for name in libraries:  # librmeeto_ort_ops.so finds the kernels beside itself ($ORIGIN)
            shutil.copy2(build_dir / name, staged / name)
        info = {"libraries": libraries, "sources": str(sources()), "toolchain": {**toolchain.to_json(),
                "onnxruntime_headers": None if headers is None else headers.to_json()}}
        (staged / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return libraries


def build_native(toolchain: Toolchain, *, jobs: int = 2, force: bool = False, log: Log = print) -> Path:
    """Builds the native ops into native.cache_entry() unless it holds them already; returns the entry.
    An entry without the ONNX Runtime library is rebuilt once headers are found. A failed or interrupted
    build leaves no entry behind (cmake_build.staged_entry), only its log."""
    if not toolchain.ready:
        missing = "; ".join(f"{what} (fix: {fix})" for what, fix in toolchain.problems)
        raise UserError(f"cannot build the native ops, missing: {missing}")
    final = native.cache_entry()
    existing = read_entry(final)
    if has_ort_ops(existing) and not force:
        log(f"already built: {final}")
        return final
    log_file = start_log(native.user_cache_dir())
    headers = toolchain.headers
    if headers is None:
        log(f"fetching ONNX Runtime's headers into the cache (log: {log_file})")
        headers = fetch_headers(log_file)
    if existing is not None and headers is None and not force:
        log(f"already built: {final}\n{ORT_NEEDS_HEADERS}")
        return final
    log(f"compiling the native ops (ONNX Runtime's headers: {headers.path if headers else 'none found'}; log: {log_file})")
    libraries = _compile(toolchain, headers, final, jobs=jobs, replace=existing is not None, log_file=log_file)
    if native.ORT_OPS_LIBRARY not in libraries:
        log(ORT_NEEDS_HEADERS)
    log(f"built: {final}")
    return final


@dataclass(frozen=True)
class Status:
    """What `native info` reports beyond the toolchain: the cache entry and what this process loads."""

    entry: Path
    built: Optional[dict]  # the entry's build.json, None when nothing is built there
    up_to_date: bool  # nothing a build with this toolchain would add
    loads: Optional[Path]  # the CPU kernels library rmeeto_export.native loads
    scan_variant: Optional[str]


def status(toolchain: Toolchain) -> Status:
    entry = native.cache_entry()
    built = read_entry(entry)
    loads = native.find_library(native.CPU_KERNELS_LIBRARY)
    return Status(entry, built, built is not None and (has_ort_ops(built) or toolchain.headers is None), loads,
                  native.scan_variant() if loads else None)


def info_json(toolchain: Toolchain) -> dict:
    state = status(toolchain)
    return {**toolchain.to_json(), "sources": str(sources()), "cache_entry": str(state.entry),
            "built_libraries": state.built["libraries"] if state.built else [], "up_to_date": state.up_to_date,
            "loads": None if state.loads is None else str(state.loads), "scan_variant": state.scan_variant,
            "problems": [{"missing": what, "fix": fix} for what, fix in toolchain.problems]}


def describe(toolchain: Toolchain) -> list[str]:
    """`native info` as lines: what a build would use, the cache entry, what this process loads."""
    def line(label: str, item: Optional[Found], missing: str = "not found") -> str:
        return f"{label:<9} " + (missing if item is None else f"{item.version} at {item.path} ({item.source})")

    state = status(toolchain)
    if state.built is None:
        cache = f"{state.entry}: nothing built yet"
    elif state.up_to_date:
        cache = f"{state.entry}: up to date ({', '.join(state.built['libraries'])})"
    else:
        cache = f"{state.entry}: built without {native.ORT_OPS_LIBRARY}; `native build` adds it with the headers found"
    lines = [
        f"{'sources':<9} {sources()}",
        line("cmake", toolchain.cmake),
        line("c++", toolchain.compiler),
        line("headers", toolchain.headers, f"ONNX Runtime's not found: {fetch_hint()}"),
        f"{'cache':<9} {cache}",
        f"{'loads':<9} " + (f"{state.loads} (scan variant on this CPU: {state.scan_variant})" if state.loads
                            else native.ABSENT_NOTE),
    ]
    for what, fix in toolchain.problems:
        lines.append(f"missing: {what}\n  fix: {fix}")
    lines.append("ready: `rmeeto-export native build` compiles the native ops" if toolchain.ready
                 else "not ready: fix the above, then run `rmeeto-export native build`")
    return lines
