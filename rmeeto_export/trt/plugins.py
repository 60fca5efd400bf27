"""Making our plugins known to TensorRT: the C++ library (preferred) or the Python plugins."""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rmeeto_export.contracts import PLUGIN_NAMESPACE, PLUGIN_VERSION
from rmeeto_export.errors import UserError
from rmeeto_export.files import file_sha256
from rmeeto_export.libraries import library_candidates
from rmeeto_export.trt.backend import Backend
from rmeeto_export.trt.python_plugins import python_plugin_creators

PLUGIN_MODES = ("auto", "on", "python", "off")
PLUGIN_LIBRARY_ENV = "RMEETO_TRT_PLUGINS"
PYTHON_PLUGINS = "python-plugins"
PLUGIN_LIBRARY_NAME = "librmeeto_trt_plugins.so"
_BUILD_HINT = (
    "build it with: cmake -S plugins_trt -B build/plugins_trt -DTENSORRT_ROOT=<TensorRT prefix> && "
    f"cmake --build build/plugins_trt, or point {PLUGIN_LIBRARY_ENV} at it"
)
# DT_NEEDED entry of the TensorRT core library a plugin library was linked against.
_TRT_LIBRARY_PATTERNS = {
    "tensorrt": re.compile(r"^libnvinfer\.so\.(\d+)$"),
    "tensorrt-rtx": re.compile(r"^libtensorrt_rtx\.so\.(\d+)$"),
}

_log = logging.getLogger(__name__)
_loaded_libraries: set[str] = set()  # TensorRT registers a library's creators once per process


@dataclass(frozen=True)
class PluginSource:
    """Where the plugins of an engine come from: a C++ library (path + sha256) or the Python plugins."""

    library: Optional[str]
    sha256: Optional[str]

    @property
    def is_python(self) -> bool:
        return self.library is None

    def to_json(self) -> dict:
        if self.is_python:
            return {"library": PYTHON_PLUGINS, "sha256": None}
        return {"library": self.library, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict) -> "PluginSource":
        if data["library"] == PYTHON_PLUGINS:
            return cls(None, None)
        return cls(data["library"], data["sha256"])


def find_plugin_library() -> Optional[Path]:
    """$RMEETO_TRT_PLUGINS, else build/plugins_trt/librmeeto_trt_plugins.so here or in the source tree."""
    configured = os.environ.get(PLUGIN_LIBRARY_ENV)
    if configured and not Path(configured).is_file():
        raise UserError(f"{PLUGIN_LIBRARY_ENV}={configured} is not a file; {_BUILD_HINT}")
    return next((path.resolve() for path in library_candidates(PLUGIN_LIBRARY_NAME, PLUGIN_LIBRARY_ENV) if path.is_file()), None)


def require_plugin_library() -> Path:
    """The C++ plugin library (--plugins on); UserError with the way to build it when there is none."""
    library = find_plugin_library()
    if library is None:
        raise UserError(f"plugins=on but the C++ plugin library {PLUGIN_LIBRARY_NAME} was not found; {_BUILD_HINT}")
    return library


def elf_needed_libraries(path: Path) -> list[str]:
    """DT_NEEDED names of a 64-bit ELF shared library ([] for anything else)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # ELFCLASS64 only: x86-64 and aarch64
        return []
    order = "<" if data[5] == 1 else ">"
    section_offset, = struct.unpack_from(order + "Q", data, 0x28)
    entry_size, count = struct.unpack_from(order + "HH", data, 0x3A)
    sections = [struct.unpack_from(order + "IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)]
    needed = []
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind != 6:  # SHT_DYNAMIC; its sh_link is the string table with the names
            continue
        strings_offset = sections[link][4]
        for tag, value in struct.iter_unpack(order + "qQ", data[offset:offset + size]):
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strings_offset + value)
                needed.append(data[strings_offset + value:end].decode())
    return needed


def linked_tensorrt(path: Path) -> Optional[tuple[str, int]]:
    """(flavour, major version) of the TensorRT a plugin library links, None when it links none."""
    for name in elf_needed_libraries(path):
        for flavour, pattern in _TRT_LIBRARY_PATTERNS.items():
            match = pattern.match(name)
            if match:
                return flavour, int(match.group(1))
    return None


def check_library_matches_backend(path: Path, backend: Backend) -> None:
    """UserError when the plugin library was linked against another TensorRT than ``backend``."""
    linked = linked_tensorrt(path)
    if linked is not None and linked != (backend.flavour, backend.major):
        raise UserError(
            f"plugin library {path} was built for {linked[0]} {linked[1]}.x but this process uses "
            f"{backend.flavour} {backend.version}: rebuild it against this TensorRT ({_BUILD_HINT})"
        )


def load_plugins(backend: Backend, mode: str) -> Optional[PluginSource]:
    """Registers our plugins for ``mode`` (see PLUGIN_MODES); None for "off".

    "on" requires the C++ library; "python" uses the Python plugins; "auto" takes the library when
    one for this TensorRT is found and the Python plugins otherwise.
    """
    if mode not in PLUGIN_MODES:
        raise UserError(f"unknown plugin mode {mode!r}; choose one of {', '.join(PLUGIN_MODES)}")
    if mode == "off":
        return None
    library = {"on": require_plugin_library, "auto": find_plugin_library}.get(mode, lambda: None)()
    if library is not None:
        try:
            return load_plugin_library(backend, library)
        except UserError as err:
            if mode == "on":
                raise
            _log.warning("%s; using the Python plugins instead", err)
    register_python_plugins(backend)
    return PluginSource(None, None)


def load_plugin_library(backend: Backend, path: Path) -> PluginSource:
    """Loads the C++ plugin library into the plugin registry (once per process and path)."""
    check_library_matches_backend(path, backend)
    registry = backend.trt.get_plugin_registry()
    _deregister_python_plugins(backend)
    if str(path) not in _loaded_libraries:
        if registry.load_library(str(path)) is None:
            raise UserError(f"TensorRT could not load the plugin library {path}: {' '.join(backend.logger.take_errors())}")
        _loaded_libraries.add(str(path))
    return PluginSource(str(path), file_sha256(path))


def register_python_plugins(backend: Backend) -> None:
    """Registers the Python SelectiveScan and TokenMerge creators unless some are registered already."""
    registry = backend.trt.get_plugin_registry()
    for creator in python_plugin_creators(backend.trt):
        if registry.get_creator(creator.name, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            registry.register_creator(creator, PLUGIN_NAMESPACE)


def _deregister_python_plugins(backend: Backend) -> None:
    """The library's creators take the same names; Python ones registered earlier would clash."""
    registry = backend.trt.get_plugin_registry()
    for creator in python_plugin_creators(backend.trt):
        if registry.get_creator(creator.name, PLUGIN_VERSION, PLUGIN_NAMESPACE) is creator:
            registry.deregister_creator(creator)


