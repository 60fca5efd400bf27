"""TensorRT / TensorRT-RTX engines: build (with our plugins or the portable graph) and run.

Importing this package does not import TensorRT; the backend is chosen when a build or an
engine load asks for it.
"""

from rmeeto_export.trt.backend import BACKENDS, load_backend
from rmeeto_export.trt.builder import build_engine
from rmeeto_export.trt.graph import layers_by_type
from rmeeto_export.trt.plugins import PLUGIN_MODES
from rmeeto_export.trt.record import BuildRecord, read_record
from rmeeto_export.trt.runtime import Engine

__all__ = [
    "BACKENDS",
    "PLUGIN_MODES",
    "BuildRecord",
    "Engine",
    "build_engine",
    "layers_by_type",
    "load_backend",
    "read_record",
]
