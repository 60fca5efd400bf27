"""Which TensorRT this process uses: full TensorRT (module ``tensorrt``) or TensorRT-RTX.

Everything else in this package talks to the chosen module through a :class:`Backend`, so one
code path serves TensorRT 10.x (JetPack 6), TensorRT 11.x and TensorRT-RTX.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Optional

from rmeeto_export.errors import UserError, first_line

BACKENDS = ("auto", "tensorrt", "tensorrt-rtx")
_MODULE_OF_FLAVOUR = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_INSTALL_HINT = "pip install 'rmeeto-export[rtx]' (TensorRT-RTX) or install NVIDIA TensorRT (JetPack, pip tensorrt)"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """The imported TensorRT flavour; ``trt`` is its Python module."""

    flavour: str
    trt: ModuleType = field(repr=False)

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.flavour == "tensorrt-rtx"

    @property
    def logger(self):
        return _logger_for(self.trt)


class BackendNotInstalled(UserError):
    """The TensorRT flavour asked for is not installed (with --trt auto: none is); nothing else."""


def load_backend(name: str = "auto") -> Backend:
    """Import the TensorRT flavour ``name`` ("auto" prefers full TensorRT).

    BackendNotInstalled when it is not installed; a UserError saying so when it is installed but
    does not import (with "auto", only when no flavour imports).
    """
    if name not in BACKENDS:
        raise UserError(f"unknown TensorRT backend {name!r}; choose one of {', '.join(BACKENDS)}")
    wanted = ("tensorrt", "tensorrt-rtx") if name == "auto" else (name,)
    broken = []
    for flavour in wanted:
        module_name = _MODULE_OF_FLAVOUR[flavour]
        if importlib.util.find_spec(module_name) is None:
            continue
        try:
            module = importlib.import_module(module_name)
        except (ImportError, OSError) as err:  # e.g. the pip stub of tensorrt whose libraries never downloaded
            broken.append(f"{flavour} is installed but does not import ({first_line(err)})")
            _log.warning("%s", broken[-1])
            continue
        backend = Backend(flavour, module)
        if backend.is_rtx:
            ensure_rtx_unversioned_library()
        return backend
    if broken:
        raise UserError("; ".join(broken))
    if name == "auto":
        raise BackendNotInstalled(f"no TensorRT installed: {_INSTALL_HINT}")
    raise BackendNotInstalled(f"TensorRT backend {name!r} is not installed (no module {_MODULE_OF_FLAVOUR[name]}): "
                              f"{_INSTALL_HINT}")


def ensure_rtx_unversioned_library(libs_dir: Optional[Path] = None) -> Optional[Path]:
    """Make ``libtensorrt_rtx.so`` exist next to ``libtensorrt_rtx.so.1`` in the wheel's libs folder.

    TensorRT-RTX's ONNX parser dlopens "libtensorrt_rtx.so" when it meets a plugin node, and the
    process aborts when that fails; the pip wheel ships only the versioned file. The parser's
    RPATH is $ORIGIN, so a symlink in that folder is found. Returns the link (None where there is
    no wheel folder, e.g. a tarball install that has the unversioned name already).
    """
    folder = libs_dir if libs_dir is not None else _rtx_wheel_libs_dir()
    if folder is None:
        return None
    link = folder / "libtensorrt_rtx.so"
    if link.exists():
        return link
    versioned = sorted(folder.glob("libtensorrt_rtx.so.*"))
    if not versioned:
        return None
    # Link under a private name, then rename: concurrent processes never see a half-made link.
    temp = folder / f".libtensorrt_rtx.so.{os.getpid()}.tmp"
    try:
        temp.unlink(missing_ok=True)
        temp.symlink_to(versioned[0].name)
        os.replace(temp, link)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise UserError(
            f"TensorRT-RTX's parser needs {link} for plugin nodes and it cannot be created ({err.strerror}); "
            f"run: ln -s {versioned[0].name} {link}"
        ) from err
    return link


def _rtx_wheel_libs_dir() -> Optional[Path]:
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def _logger_for(trt: ModuleType):
    """One logger per TensorRT module (TensorRT wants a single logger per process)."""

    class _ForwardingLogger(trt.ILogger):
        """Sends TensorRT's messages to Python logging and keeps the errors for error messages."""

        _levels = {
            trt.ILogger.INTERNAL_ERROR: logging.ERROR,
            trt.ILogger.ERROR: logging.ERROR,
            trt.ILogger.WARNING: logging.WARNING,
            trt.ILogger.INFO: logging.DEBUG,
            trt.ILogger.VERBOSE: logging.DEBUG,
        }

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            level = self._levels.get(severity, logging.DEBUG)
            if level >= logging.ERROR:
                self.errors.append(msg)
            _log.log(level, "TensorRT: %s", msg)

        def take_errors(self) -> list[str]:
            taken, self.errors = self.errors, []
            return taken

    return _ForwardingLogger()
