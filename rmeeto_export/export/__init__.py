"""ONNX export of Vim + R-MeeTo: custom rmeeto:: nodes with standard-ONNX function bodies, a portable
(inlined) variant, fp32/fp16, graph checks and ONNX Runtime parity against PyTorch.

API for the build pipeline:
    export_onnx(model, path, *, batch=1, precision="fp32", portable=False) -> Path   (atomic write)
    check_graph(onnx.load(path))                       # raises GraphCheckError
    check_parity(model, path, images, precision) -> ParityReport   (.passed, .to_dict() for parity.json)
"""

from rmeeto_export.export.graph_checks import GraphCheckError, check_graph
from rmeeto_export.export.onnx_export import build_onnx, export_onnx
from rmeeto_export.export.parity import ParityReport, check_parity

__all__ = ["GraphCheckError", "ParityReport", "build_onnx", "check_graph", "check_parity", "export_onnx"]
