"""INT8 for TensorRT 10 and 11: calibrate activation ranges, then write explicit Q/DQ into the ONNX graph.

TensorRT 11 has no implicit INT8 calibration; precision lives in the graph (docs/tensorrt.md).
API for the build pipeline:
    calibrate(onnx_path, cache_path, images, num=512, method="percentile") -> {tensor: scale}
    quantize(onnx_path, cache_path, out_path) -> Path       # the INT8 Q/DQ graph
    quantize_graphs({fp32: int8}, cache_path, settings)    # the INT8 twins of a build folder's graphs
    check_int8_parity(model, int8_onnx, images) -> Int8Parity
    linear_layers(onnx_model) -> [LinearLayer]              # what gets quantised
"""

from rmeeto_export.calibration.cache import CalibrationCache, load_cache
from rmeeto_export.calibration.collect import DEFAULT_NUM_IMAGES, DEFAULT_PERCENTILE, METHODS, calibrate
from rmeeto_export.calibration.folder import quantize_graphs
from rmeeto_export.calibration.layers import ROLES, LinearLayer, linear_layers
from rmeeto_export.calibration.parity import Int8Parity, Int8Tolerance, check_int8_parity
from rmeeto_export.calibration.qdq import quantize, quantize_model

__all__ = [
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_PERCENTILE",
    "METHODS",
    "ROLES",
    "CalibrationCache",
    "Int8Parity",
    "Int8Tolerance",
    "LinearLayer",
    "calibrate",
    "check_int8_parity",
    "linear_layers",
    "load_cache",
    "quantize",
    "quantize_graphs",
    "quantize_model",
]
