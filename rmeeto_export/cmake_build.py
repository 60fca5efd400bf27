"""Compiling a CMake project of plugins_trt/ on the user's machine into a per-user cache: the pieces
`rmeeto-export plugins build` (trt.plugin_build) and `rmeeto-export native build` (native_build) share.

An installed package carries plugins_trt/ as rmeeto_export/plugins_trt/ (setup.py); a source
checkout uses plugins_trt/ where it is. A cache entry is a folder named after what it was built
from (sources digest and more); it is built in a temporary folder beside it and renamed into place
only when complete, so a failed or interrupted build leaves no entry behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from rmeeto_export.errors import UserError

MIN_CMAKE = (3, 25)  # cmake_minimum_required of plugins_trt/CMakeLists.txt and plugins_trt/cpu/CMakeLists.txt
LAST_BUILD_LOG = "last-build.log"
_PACKAGE_DIR = Path(__file__).resolve().parent

Log = Callable[[str], None]


def plugin_sources() -> Path:
    """plugins_trt/: inside the installed package (wheel), else beside it (source checkout)."""
    for candidate in (_PACKAGE_DIR / "plugins_trt", _PACKAGE_DIR.parent / "plugins_trt"):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate
    raise UserError(f"the plugin sources (plugins_trt/) are missing from {_PACKAGE_DIR}: reinstall rmeeto-export")


def sources_digest(sources: Path, patterns: tuple[str, ...] = ("**/*",)) -> str:
    """sha256 over the relative paths and contents of the files under `sources` matching `patterns`:
    a changed source is a new cache entry."""
    files = {p for pattern in patterns for p in sources.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(sources).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Found:
    """A thing a build needs: where it is, its version, and how it was found ("TENSORRT_ROOT", "PATH")."""

    path: Path
    version: str
    source: str

    def to_json(self) -> dict:
        return {"path": str(self.path), "version": self.version, "source": self.source}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def tool_version(command: list[str], pattern: str) -> Optional[str]:
    """The first group of `pattern` in what `command` prints, or None when it does not run or match."""
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, output)
    return match.group(1) if match else None


def find_cmake() -> Optional[Found]:
    path = shutil.which("cmake")
    if path is None:
        return None
    version = tool_version([path, "--version"], r"cmake version (\d+\.\d+(?:\.\d+)?)")
    return Found(Path(path), version or "unknown", "PATH")


def cmake_problem(cmake: Optional[Found]) -> Optional[tuple[str, str]]:
    """(what is missing, the fix) when there is no CMake new enough for our projects."""
    if cmake is not None and version_tuple(cmake.version) >= MIN_CMAKE:
        return None
    found = "" if cmake is None else f" (found {cmake.version})"
    return f"CMake {'.'.join(map(str, MIN_CMAKE))} or newer{found}", "pip install 'cmake>=3.25'"


def run_logged(command: list[str], log_file: Path, what: str, cwd: Optional[Path] = None) -> None:
    """Runs `command` with its output appended to `log_file`; UserError naming `what` when it fails."""
    with open(log_file, "a") as stream:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=cwd)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:]
        raise UserError(f"{what} failed ({' '.join(tail)}); the full log is {log_file}")


def start_log(cache: Path) -> Path:
    """An empty <cache>/last-build.log: it outlives a failed build, whose entry does not."""
    cache.mkdir(parents=True, exist_ok=True)
    log_file = cache / LAST_BUILD_LOG
    log_file.write_text("")
    return log_file


@contextlib.contextmanager
def staged_entry(final: Path, is_complete: Callable[[Path], bool], replace: bool) -> Iterator[tuple[Path, Path]]:
    """(build folder, staged entry) in a temporary folder beside `final`; the block fills the staged
    entry, which is renamed to `final` when the block ends without an error (else all is removed).

    replace: an existing entry gives way (--force, or an entry to rebuild); an incomplete one always
    does. Without it, a complete entry that another process renamed into place first is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".building-") as work:
        build_dir, staged = Path(work) / "build", Path(work) / final.name
        staged.mkdir()
        yield build_dir, staged
        if final.exists() and (replace or not is_complete(final)):
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(staged, final)
        except OSError:  # another process finished the same build first: use its entry
            if not is_complete(final):
                raise
