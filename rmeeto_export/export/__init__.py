"""ONNX export of Vim + R-MeeTo: custom rmeeto:: nodes with standard-ONNX function bodies, a portable
(inlined) variant, fp32/fp16, graph checks and ONNX Runtime parity against PyTorch.

API for the build pipeline:
    export_onnx(model, path, *, batch=1, precision="fp32", portable=False) -> Path
    check_graph(onnx_model)  # raises GraphCheckError
"""

from rmeeto_export.export.graph_checks import GraphCheckError, check_graph
from rmeeto_export.export.onnx_export import PRECISIONS, build_onnx, export_onnx

__all__ = ["PRECISIONS", "GraphCheckError", "build_onnx", "check_graph", "export_onnx"]
