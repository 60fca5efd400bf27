"""The build folder: every artifact's name, manifest.json, and how a stage's files get in.

A stage writes its outputs into a private staging folder (`.staging-<stage>/`); only when it has
finished are they moved into place, together with the new manifest.json and report.md, while
SIGINT is held back. So an interrupted or failed stage leaves the folder as it was before it.

manifest.json holds the settings (`BuildSettings`), tool versions, one record per stage (status,
seconds, note, and the key, input and output digests that decide "up to date"), and the size and
sha256 of every artifact present. It is rewritten with the digests of the files as they are
whenever a command changes the folder, so it always matches them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from rmeeto_export.errors import UserError
from rmeeto_export.export.polygraphy_check import INPUTS as PARITY_INPUTS
from rmeeto_export.export.polygraphy_check import OUTPUTS as PARITY_OUTPUTS
from rmeeto_export.files import file_sha256, write_json_atomic
from rmeeto_export.pipelines.settings import BuildSettings
from rmeeto_export.trt.plugin_build import KERNELS_LIBRARY, PLUGIN_LIBRARY  # the engine's, copied beside it

MANIFEST = "manifest.json"
REPORT = "report.md"
SCHEDULE = "schedule.json"
ONNX = "model.onnx"
PORTABLE_ONNX = "model.portable.onnx"
CALIBRATION = "calibration.json"
INT8_ONNX = "model.int8.onnx"
PORTABLE_INT8_ONNX = "model.portable.int8.onnx"
PARITY = "parity.json"
ENGINE = "model.engine"
ENGINE_RECORD = "model.engine.json"  # trt.record's record_path(ENGINE)
TIMING_CACHE = "timing.cache"
RETRAINED_WEIGHTS = "retrain/model.pth"
RETRAIN_METRICS = "retrain/metrics.json"
RETRAIN_CHECKPOINT = "retrain/checkpoint.pth"
TOKENS_FIGURE = "figures/tokens_per_block.png"
GFLOPS_FIGURE = "figures/gflops_per_block.png"
PARITY_FIGURE = "figures/parity_error.png"
FIGURES = {  # file: caption in report.md
    TOKENS_FIGURE: "Tokens per block, plain and merged",
    GFLOPS_FIGURE: "GFLOPs per block, plain and merged",
    PARITY_FIGURE: "Parity error of every input image, per graph",
}
ARTIFACTS = (SCHEDULE, ONNX, PORTABLE_ONNX, CALIBRATION, INT8_ONNX, PORTABLE_INT8_ONNX, PARITY, PARITY_INPUTS,
             PARITY_OUTPUTS, ENGINE, ENGINE_RECORD, TIMING_CACHE, PLUGIN_LIBRARY, KERNELS_LIBRARY, RETRAINED_WEIGHTS,
             RETRAIN_METRICS, RETRAIN_CHECKPOINT, *FIGURES)
INT8_TWINS = {ONNX: INT8_ONNX, PORTABLE_ONNX: PORTABLE_INT8_ONNX}
MANIFEST_VERSION = 2
STAGING_PREFIX = ".staging-"


def graph_name(settings: BuildSettings, portable: bool) -> str:
    """The graph later stages consume: the INT8 twin when building INT8."""
    name = PORTABLE_ONNX if portable else ONNX
    return INT8_TWINS[name] if settings.export.int8 else name


def versions() -> dict[str, Optional[str]]:
    def version_of(package: str) -> Optional[str]:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    packages = ("torch", "onnx", "onnxruntime", "onnxscript", "tensorrt", "tensorrt-rtx", "rmeeto-export")
    return {"python": platform.python_version(), **{p: version_of(p) for p in packages}}


class Digests:
    """Digests computed once per command: a file's sha256 per (path, size, mtime), anything else per key."""

    def __init__(self) -> None:
        self._known: dict[tuple[Any, ...], str] = {}

    def of(self, path: Path) -> str:
        stat = path.stat()
        return self.remembered((str(path.resolve()), stat.st_size, stat.st_mtime_ns), lambda: file_sha256(path))

    def remembered(self, key: tuple[Any, ...], compute: Callable[[], str]) -> str:
        if key not in self._known:
            self._known[key] = compute()
        return self._known[key]


@contextlib.contextmanager
def sigint_held_back() -> Iterator[None]:
    """SIGINT waits until the block is done, then raises KeyboardInterrupt: moves into place stay whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class Staging:
    """Where one stage writes: `path(name)` is the file that becomes `name` in the folder on success."""

    def __init__(self, folder: "BuildFolder", stage: str) -> None:
        self.folder = folder
        self.root = folder.root / f"{STAGING_PREFIX}{stage}"

    def __enter__(self) -> "Staging":
        shutil.rmtree(self.root, ignore_errors=True)  # a leftover of a process that was killed outright
        self.root.mkdir(parents=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def path(self, name: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def path_from_previous(self, name: str) -> Path:
        """`path(name)` holding a copy of the folder's current `name`, for stages that update a file (caches)."""
        path = self.path(name)
        current = self.folder.path(name)
        if current.is_file():
            shutil.copy2(current, path)
        return path

    def written(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def move_into_place(self) -> list[str]:
        names = self.written()
        for name in names:
            target = self.folder.path(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / name, target)
        return names


class BuildFolder:
    """One build folder and its manifest (in memory until `save`)."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.digests = Digests()

    @classmethod
    def open(cls, root: Path) -> "BuildFolder":
        """A folder `build` made; UserError naming the problem otherwise."""
        path = root / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{root} has no {MANIFEST}: run `rmeeto-export build --out {root}` first") from None
        except (ValueError, OSError) as err:
            raise UserError(f"{path} is not readable JSON ({err})") from None
        if not isinstance(data, dict) or data.get("manifest_version") != MANIFEST_VERSION:
            version = data.get("manifest_version") if isinstance(data, dict) else None
            raise UserError(f"{path} has manifest version {version!r}, this tool reads {MANIFEST_VERSION}: "
                            "build into a new folder")
        folder = cls(root, data)
        folder.settings  # noqa: B018 - fail here, before any stage, when the settings do not fit
        return folder

    @classmethod
    def for_build(cls, root: Path, settings: BuildSettings) -> "BuildFolder":
        """The folder at `root` with `settings`: its stage records kept when it is a build folder already."""
        manifest = cls.open(root).manifest if (root / MANIFEST).is_file() else {
            "manifest_version": MANIFEST_VERSION, "stages": {}, "artifacts": {}}
        folder = cls(root, manifest)
        folder.settings = settings
        return folder

    @property
    def settings(self) -> BuildSettings:
        return BuildSettings.from_json(self.manifest["settings"])

    @settings.setter
    def settings(self, settings: BuildSettings) -> None:
        self.manifest["settings"] = settings.to_json()
        self.manifest["random_weights"] = settings.model.random_weights and not settings.retraining

    def path(self, name: str) -> Path:
        return self.root / name

    def digest(self, name: str) -> Optional[str]:
        path = self.path(name)
        return self.digests.of(path) if path.is_file() else None

    def stage_record(self, stage: str) -> dict[str, Any]:
        return self.manifest["stages"].get(stage, {})

    def record_stage(self, stage: str, record: dict[str, Any]) -> None:
        self.manifest["stages"][stage] = record

    def save(self) -> None:
        """manifest.json (with the digests of the artifacts as they are now) and report.md, each atomically."""
        from rmeeto_export.pipelines.report import report_text
        from rmeeto_export.files import write_bytes_atomic

        self.manifest["artifacts"] = {
            name: {"bytes": self.path(name).stat().st_size, "sha256": self.digest(name)}
            for name in ARTIFACTS if self.path(name).is_file()
        }
        self.manifest["versions"] = versions()
        write_json_atomic(self.path(MANIFEST), self.manifest)
        write_bytes_atomic(self.path(REPORT), report_text(self).encode())
