"""Making our plugins known to TensorRT: the C++ library (preferred) or the Python plugins."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rmeeto_export.contracts import PLUGIN_NAMESPACE, PLUGIN_VERSION
from rmeeto_export.errors import UserError
from rmeeto_export.files import atomic_open, file_sha256
from rmeeto_export.libraries import library_candidates
from rmeeto_export.trt.backend import Backend
from rmeeto_export.trt.plugin_build import (
    KERNELS_LIBRARY,
    LIBRARY_PATTERNS,
    PLUGIN_LIBRARY,
    build_plugins,
    find_cached_library,
    inspect_toolchain,
)
from rmeeto_export.trt.python_plugins import python_plugin_creators
from rmeeto_export.trt.targets import ComputeCapability, sm_name

PLUGIN_MODES = ("auto", "on", "python", "off")
PLUGIN_LIBRARY_ENV = "RMEETO_TRT_PLUGINS"
PYTHON_PLUGINS = "python-plugins"
_BUILD_HINT = f"build it with `rmeeto-export plugins build` (`plugins info` says what it needs) or point {PLUGIN_LIBRARY_ENV} at it"

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


def find_plugin_library(backend: Optional[Backend] = None, target: Optional[ComputeCapability] = None) -> Optional[Path]:
    """$RMEETO_TRT_PLUGINS, else build/plugins_trt/ here or in the source tree, else the per-user
    cache's build for ``backend``'s TensorRT and the ``target`` GPU (`rmeeto-export plugins build`)."""
    configured = os.environ.get(PLUGIN_LIBRARY_ENV)
    if configured and not Path(configured).is_file():
        raise UserError(f"{PLUGIN_LIBRARY_ENV}={configured} is not a file; {_BUILD_HINT}")
    found = next((path.resolve() for path in library_candidates(PLUGIN_LIBRARY, PLUGIN_LIBRARY_ENV) if path.is_file()), None)
    if found is not None or backend is None:
        return found
    return find_cached_library(backend.flavour, backend.version, target)


def build_plugin_library(backend: Backend, target: Optional[ComputeCapability], mode: str) -> Optional[Path]:
    """Compiles the library into the cache when this machine can (nvcc, CMake, headers); else None
    ("auto", with a warning naming what is missing) or a UserError ("on")."""
    toolchain = inspect_toolchain(backend.flavour, archs=(target,) if target else ())
    try:
        return build_plugins(toolchain, log=_log.warning).library
    except UserError as err:
        if mode == "on":
            raise
        _log.warning("no C++ plugin library for %s %s (%s): using the Python plugins, which the engine needs at "
                     "run time", backend.flavour, backend.version, err)
        return None


def require_plugin_library(backend: Backend, target: Optional[ComputeCapability]) -> Optional[Path]:
    """--plugins on, before any slow stage: the library for this TensorRT and target, or None when there
    is none yet but this machine can compile one; UserError naming what is missing otherwise."""
    library = find_plugin_library(backend, target)
    if library is None:
        toolchain = inspect_toolchain(backend.flavour, archs=(target,) if target else ())
        if not toolchain.ready:
            missing = "; ".join(f"{what} (fix: {fix})" for what, fix in toolchain.problems)
            raise UserError(f"--plugins on: no C++ plugin library for {backend.flavour} {backend.version} "
                            f"{sm_name(target) if target else ''} and none can be built here, missing: {missing}")
    return library


def elf_needed_libraries(path: Path) -> list[str]:
    """DT_NEEDED names of an ELF shared library ([] for anything else), read with pyelftools.

    From the dynamic segment, which the loader itself reads, so stripped section headers do not matter.
    """
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as stream:
            return [tag.needed for segment in ELFFile(stream).iter_segments("PT_DYNAMIC")
                    for tag in segment.iter_tags("DT_NEEDED")]
    except ELFError:
        return []


def linked_tensorrt(path: Path) -> Optional[tuple[str, int]]:
    """(flavour, major version) of the TensorRT a plugin library links, None when it links none."""
    for name in elf_needed_libraries(path):
        for flavour, pattern in LIBRARY_PATTERNS.items():
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


def load_plugins(backend: Backend, mode: str, target: Optional[ComputeCapability] = None) -> Optional[PluginSource]:
    """Registers our plugins for ``mode`` (see PLUGIN_MODES) and a ``target`` GPU; None for "off".

    "on" requires the C++ library; "python" uses the Python plugins; "auto" takes the library when
    one for this TensorRT is found and the Python plugins otherwise. Both compile the library into
    the per-user cache first when none is found and this machine has what a build needs.
    """
    if mode not in PLUGIN_MODES:
        raise UserError(f"unknown plugin mode {mode!r}; choose one of {', '.join(PLUGIN_MODES)}")
    if mode == "off":
        return None
    library = None
    if mode in ("auto", "on"):
        library = find_plugin_library(backend, target) or build_plugin_library(backend, target, mode)
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


def copy_plugin_library(source: PluginSource, folder: Path) -> list[str]:
    """Puts the C++ library an engine was built with into ``folder``, with the kernels library it
    loads from beside itself (RPATH $ORIGIN), so the folder deploys as it is; returns the names."""
    library = Path(source.library)
    names = [library.name, KERNELS_LIBRARY]
    for name in names:
        with open(library.parent / name, "rb") as original, atomic_open(folder / name) as copy:
            shutil.copyfileobj(original, copy)
    return names


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


