"""Compiling our C++ plugin library on the user's machine, into a per-user cache.

An installed package carries plugins_trt/ (the CMake project: CUDA kernels and IPluginV3 glue).
This module finds what a build needs (a TensorRT library, TensorRT headers that match it, nvcc,
CMake 3.25+), says what is missing and how to fix it, and builds librmeeto_trt_plugins.so and
librmeeto_kernels.so for given GPU architectures into

    $XDG_CACHE_HOME/rmeeto-export/plugins/<flavour>-<version>_cuda<version>_<sm..>_<machine>_src<digest>/

so a build for one TensorRT, CUDA and GPU is made once and found again by ``find_cached_library``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rmeeto_export.cmake_build import (
    Found,
    Log,
    cmake_problem,
    find_cmake,
    plugin_sources,
    run_logged,
    sources_digest,
    staged_entry,
    start_log,
    tool_version,
    version_tuple,
)
from rmeeto_export.errors import UserError
from rmeeto_export.kernels import LIBRARY_NAME as KERNELS_LIBRARY  # the plugin library loads it from beside itself
from rmeeto_export.trt.targets import DEFAULT_RTX_TARGET, ComputeCapability, current_gpu, sm_name

FLAVOURS = ("tensorrt", "tensorrt-rtx")
PLUGIN_LIBRARY = "librmeeto_trt_plugins.so"
BUILD_INFO = "build.json"
# The TensorRT core library a plugin library links, per flavour (DT_NEEDED / file name).
LIBRARY_PATTERNS = {
    "tensorrt": re.compile(r"^libnvinfer\.so\.(\d+)$"),
    "tensorrt-rtx": re.compile(r"^libtensorrt_rtx\.so\.(\d+)$"),
}
# TensorRT-RTX's plugin interface is TensorRT 11's: its plugins compile against TensorRT 11 headers.
RTX_HEADERS_MAJOR = 11
_PIP_LIBS_PACKAGE = {"tensorrt": "tensorrt_libs", "tensorrt-rtx": "tensorrt_rtx_libs"}
_PIP_DISTRIBUTION = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx"}
SYSTEM_PREFIX = Path("/usr")  # JetPack and Debian packages: include/<multiarch>, lib/<multiarch>


# ---------------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Toolchain:
    """Everything ``plugins info`` reports; ``problems`` are (what is missing, the fix)."""

    flavour: Optional[str]
    library: Optional[Found]
    headers: Optional[Found]
    nvcc: Optional[Found]
    cmake: Optional[Found]
    archs: tuple[ComputeCapability, ...]
    archs_source: str
    problems: tuple[tuple[str, str], ...]

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        def found(item: Optional[Found]) -> Optional[dict]:
            return None if item is None else item.to_json()

        return {
            "flavour": self.flavour,
            "library": found(self.library),
            "headers": found(self.headers),
            "nvcc": found(self.nvcc),
            "cmake": found(self.cmake),
            "archs": [sm_name(cc) for cc in self.archs],
            "archs_source": self.archs_source,
            "problems": [{"missing": what, "fix": fix} for what, fix in self.problems],
        }


def _multiarch() -> str:
    return f"{platform.machine()}-linux-gnu"  # Debian / JetPack library folders: aarch64-linux-gnu, x86_64-linux-gnu


def _pip_libs_dir(flavour: str) -> Optional[Path]:
    spec = importlib.util.find_spec(_PIP_LIBS_PACKAGE[flavour])
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _library_version(path: Path, flavour: str, source: str) -> str:
    """The full version of a TensorRT library: its pip distribution's, else the real file's suffix."""
    if source == "pip":
        return importlib.metadata.version(_PIP_DISTRIBUTION[flavour])
    match = re.search(r"\.so\.(\d+(?:\.\d+)*)$", path.resolve().name)
    return match.group(1) if match else "unknown"


def find_library(flavour: str, root: Optional[Path]) -> Optional[Found]:
    """libnvinfer.so.N / libtensorrt_rtx.so.N: in root/lib, then the system (JetPack), then pip."""
    folders: list[tuple[Path, str]] = []
    if root is not None:
        folders += [(root / "lib", "TENSORRT_ROOT"), (root / "lib64", "TENSORRT_ROOT")]
    if flavour == "tensorrt":
        folders += [(SYSTEM_PREFIX / "lib" / _multiarch(), "system"), (SYSTEM_PREFIX / "lib", "system")]
    pip_dir = _pip_libs_dir(flavour)
    if pip_dir is not None:
        folders.append((pip_dir, "pip"))
    pattern = LIBRARY_PATTERNS[flavour]
    for folder, source in folders:
        if not folder.is_dir():
            continue
        names = sorted(p.name for p in folder.iterdir() if pattern.match(p.name))
        if names:
            path = folder / names[-1]
            return Found(path, _library_version(path, flavour, source), source)
    return None


def read_headers_version(include_dir: Path) -> Optional[str]:
    """major.minor.patch from NvInferVersion.h (its macros may point at other macros, as in TensorRT 11)."""
    header = include_dir / "NvInferVersion.h"
    if not header.is_file():
        return None
    macros = dict(re.findall(r"^\s*#define\s+(\w+)\s+(\w+)", header.read_text(errors="replace"), re.MULTILINE))

    def value(name: str) -> Optional[str]:
        seen = set()
        while name in macros and name not in seen:
            seen.add(name)
            name = macros[name]
        return name if name.isdigit() else None

    parts = [value(f"NV_TENSORRT_{part}") for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts) if all(parts) else None


def find_headers(root: Optional[Path]) -> Optional[Found]:
    """The folder holding NvInferRuntime.h: root/include, then the system's (JetPack: libnvinfer-dev)."""
    folders: list[tuple[Path, str]] = []
    if root is not None:
        folders += [(root / "include", "TENSORRT_ROOT"), (root, "TENSORRT_ROOT")]
    folders += [(SYSTEM_PREFIX / "include" / _multiarch(), "system"), (SYSTEM_PREFIX / "include", "system")]
    for folder, source in folders:
        if (folder / "NvInferRuntime.h").is_file():
            return Found(folder, read_headers_version(folder) or "unknown", source)
    return None


def find_nvcc() -> Optional[Found]:
    """$CUDACXX, nvcc on PATH, $CUDA_HOME/bin, /usr/local/cuda/bin (where JetPack puts it, off PATH)."""
    candidates = [(os.environ.get("CUDACXX"), "CUDACXX"), (shutil.which("nvcc"), "PATH")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append((str(Path(home) / "bin" / "nvcc"), home))
    for path, source in candidates:
        if path and Path(path).is_file():
            version = tool_version([path, "--version"], r"release (\d+\.\d+)")
            if version:
                return Found(Path(path), version, source)
    return None


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def default_archs(flavour: Optional[str]) -> tuple[tuple[ComputeCapability, ...], str]:
    """The GPU present; without one, TensorRT-RTX's default ahead-of-time target; else nothing."""
    gpu = current_gpu()
    if gpu is not None:
        return (gpu[1],), f"the GPU present ({gpu[0]})"
    if flavour == "tensorrt-rtx":
        return (DEFAULT_RTX_TARGET,), "TensorRT-RTX's default target without a GPU"
    return (), "no GPU visible"


def pick_flavour(wanted: str, root: Optional[Path]) -> Optional[str]:
    """"auto": full TensorRT when its library is found, else TensorRT-RTX's, else None."""
    if wanted != "auto":
        if wanted not in FLAVOURS:
            raise UserError(f"unknown TensorRT flavour {wanted!r}; choose auto, {', '.join(FLAVOURS)}")
        return wanted
    return next((flavour for flavour in FLAVOURS if find_library(flavour, root) is not None), None)


def _headers_problem(flavour: str, library: Optional[Found], headers: Optional[Found]) -> Optional[tuple[str, str]]:
    """The headers must declare the plugin interface the library implements."""
    wanted = RTX_HEADERS_MAJOR if flavour == "tensorrt-rtx" else (
        version_tuple(library.version)[0] if library is not None else None)
    label = f"TensorRT {wanted}" if wanted is not None else "TensorRT"
    fix = (f"point --tensorrt-root (or TENSORRT_ROOT) at a folder with include/NvInferRuntime.h of {label}: pip wheels ship "
           "no headers; they are in NVIDIA's TensorRT tar archive, the libnvinfer-dev package (JetPack: apt install "
           "nvidia-tensorrt-dev) or github.com/NVIDIA/TensorRT's include/")
    if headers is None:
        return f"{label} headers (NvInferRuntime.h)", fix
    found = version_tuple(headers.version)
    if wanted is not None and (not found or found[0] != wanted):
        return f"{label} headers (found version {headers.version} at {headers.path})", fix
    return None


def inspect_toolchain(flavour: str = "auto", tensorrt_root: Optional[Path] = None,
                      archs: tuple[ComputeCapability, ...] = ()) -> Toolchain:
    """What a plugin build would use, and each missing piece with its fix; changes nothing."""
    root = tensorrt_root or (Path(os.environ["TENSORRT_ROOT"]) if os.environ.get("TENSORRT_ROOT") else None)
    chosen = pick_flavour(flavour, root)
    library = find_library(chosen, root) if chosen else None
    headers = find_headers(root)
    nvcc, cmake = find_nvcc(), find_cmake()
    archs_source = "--arch"
    if not archs:
        archs, archs_source = default_archs(chosen)
    problems: list[tuple[str, str]] = []
    if chosen is None or library is None:
        name = {"tensorrt-rtx": "libtensorrt_rtx.so", None: "a TensorRT library"}.get(chosen, "libnvinfer.so")
        problems.append((name, "install TensorRT (JetPack 6 has it; a server: pip install tensorrt, or "
                               "pip install 'rmeeto-export[rtx]' for TensorRT-RTX) or set TENSORRT_ROOT to an unpacked "
                               "TensorRT tar archive"))
    if chosen is not None:
        problem = _headers_problem(chosen, library, headers)
        if problem:
            problems.append(problem)
    if nvcc is None:
        problems.append(("nvcc (the CUDA compiler)", "install the CUDA toolkit; on a Jetson it is in /usr/local/cuda/bin "
                                                     "(export PATH=/usr/local/cuda/bin:$PATH), or set CUDACXX"))
    if problem := cmake_problem(cmake):
        problems.append(problem)
    if not archs:
        problems.append(("a GPU architecture to build for (no GPU visible)",
                         "give --arch, e.g. --arch 87 (Jetson Orin), 86, 89 or 90"))
    return Toolchain(chosen, library, headers, nvcc, cmake, tuple(archs), archs_source, tuple(problems))


# ---------------------------------------------------------------------------------------- the cache


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rmeeto-export" / "plugins"


def cache_key(flavour: str, trt_version: str, cuda_version: str, archs: tuple[ComputeCapability, ...], digest: str) -> str:
    """Folder name of one build: TensorRT flavour and major.minor, CUDA, architectures, machine, sources."""
    sms = "-".join(sm_name(cc) for cc in sorted(archs))
    return f"{flavour}-{_major_minor(trt_version)}_cuda{cuda_version}_{sms}_{platform.machine()}_src{digest[:12]}"


@dataclass(frozen=True)
class CachedBuild:
    folder: Path
    flavour: str
    trt_version: str
    cuda_version: str
    archs: tuple[str, ...]
    sources_digest: str

    @property
    def library(self) -> Path:
        return self.folder / PLUGIN_LIBRARY


def _read_build(folder: Path) -> Optional[CachedBuild]:
    try:
        info = json.loads((folder / BUILD_INFO).read_text())
        build = CachedBuild(folder, info["flavour"], info["trt_version"], info["cuda_version"],
                            tuple(info["archs"]), info["sources_digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return build if build.library.is_file() and (folder / KERNELS_LIBRARY).is_file() else None


def find_cached_library(flavour: str, trt_version: str, target: Optional[ComputeCapability]) -> Optional[Path]:
    """A cached plugin library for this TensorRT (major.minor), these sources and ``target`` (None: any)."""
    root = cache_root()
    if not root.is_dir():
        return None
    digest = sources_digest(plugin_sources())
    matches = [
        build for build in map(_read_build, sorted(root.iterdir()))
        if build is not None and build.flavour == flavour and build.sources_digest == digest
        and _major_minor(build.trt_version) == _major_minor(trt_version)
        and (target is None or sm_name(target) in build.archs)
    ]
    # Newest CUDA first: its kernels are the ones nvcc optimised best; the driver runs any it supports.
    matches.sort(key=lambda build: version_tuple(build.cuda_version), reverse=True)
    return matches[0].library if matches else None


# ---------------------------------------------------------------------------------------- building


def _cmake_arguments(toolchain: Toolchain, sources: Path, build_dir: Path) -> list[str]:
    """Configure with exactly what discovery found, so CMake's own search cannot pick something else."""
    archs = ";".join(f"{major}{minor}-real" for major, minor in toolchain.archs)
    return [
        str(toolchain.cmake.path), "-S", str(sources), "-B", str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CUDA_COMPILER={toolchain.nvcc.path}",
        f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
        f"-DTENSORRT_INCLUDE_DIR={toolchain.headers.path}",
        f"-DTENSORRT_NVINFER_LIBRARY={toolchain.library.path}",
        f"-DRMEETO_TENSORRT_RTX={'ON' if toolchain.flavour == 'tensorrt-rtx' else 'OFF'}",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]


def build_plugins(toolchain: Toolchain, *, jobs: int = 2, force: bool = False, log: Log = print) -> CachedBuild:
    """Builds the plugin and kernels libraries into the cache (unless there already); returns the entry.
    A failed or interrupted build leaves no entry behind (cmake_build.staged_entry), only its log."""
    if not toolchain.ready:
        missing = "; ".join(f"{what} (fix: {fix})" for what, fix in toolchain.problems)
        raise UserError(f"cannot build the plugins, missing: {missing}")
    sources = plugin_sources()
    digest = sources_digest(sources)
    root = cache_root()
    key = cache_key(toolchain.flavour, toolchain.library.version, toolchain.nvcc.version, toolchain.archs, digest)
    final = root / key
    existing = _read_build(final)
    if existing is not None and not force:
        log(f"already built: {final}")
        return existing
    log_file = start_log(root)
    log(f"compiling the plugins for {toolchain.flavour} {toolchain.library.version}, CUDA {toolchain.nvcc.version}, "
        f"{', '.join(sm_name(cc) for cc in toolchain.archs)} (log: {log_file})")
    with staged_entry(final, lambda folder: _read_build(folder) is not None, replace=force) as (build_dir, staged):
        run_logged(_cmake_arguments(toolchain, sources, build_dir), log_file, "compiling the plugins")
        run_logged([str(toolchain.cmake.path), "--build", str(build_dir), "--target", "rmeeto_trt_plugins",
                    "-j", str(jobs)], log_file, "compiling the plugins")
        for name in (PLUGIN_LIBRARY, KERNELS_LIBRARY):
            if not (build_dir / name).is_file():
                raise UserError(f"the plugin build made no {name}; see {log_file}")
            shutil.copy2(build_dir / name, staged / name)
        info = {
            "flavour": toolchain.flavour,
            "trt_version": toolchain.library.version,
            "cuda_version": toolchain.nvcc.version,
            "archs": [sm_name(cc) for cc in toolchain.archs],
            "sources_digest": digest,
            "toolchain": toolchain.to_json(),
        }
        (staged / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log(f"built: {final / PLUGIN_LIBRARY}")
    return _read_build(final)


def describe(toolchain: Toolchain, cached: Optional[Path]) -> list[str]:
    """``plugins info`` as lines: what was found, what is missing and the fix for each."""
    def line(label: str, item: Optional[Found], missing: str = "not found") -> str:
        return f"{label:<9} " + (missing if item is None else f"{item.version} at {item.path} ({item.source})")

    flavour = toolchain.flavour or "none found"
    lines = [
        f"{'TensorRT':<9} {flavour}" + (f" {toolchain.library.version} at {toolchain.library.path} "
                                        f"({toolchain.library.source})" if toolchain.library else ""),
        line("headers", toolchain.headers),
        line("nvcc", toolchain.nvcc),
        line("cmake", toolchain.cmake),
        f"{'archs':<9} " + (", ".join(sm_name(cc) for cc in toolchain.archs) or "none") + f" ({toolchain.archs_source})",
        f"{'sources':<9} {plugin_sources()}",
        f"{'cache':<9} {cached if cached is not None else f'no library built yet under {cache_root()}'}",
    ]
    for what, fix in toolchain.problems:
        lines.append(f"missing: {what}\n  fix: {fix}")
    lines.append("ready: `rmeeto-export plugins build` compiles the plugins" if toolchain.ready
                 else "not ready: fix the above, then run `rmeeto-export plugins build`")
    return lines
