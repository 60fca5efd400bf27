"""Checks an exported graph must pass before any backend sees it."""

from __future__ import annotations

from collections import Counter

import onnx

from rmeeto_export.contracts import DOMAIN


class GraphCheckError(RuntimeError):
    """The exported graph is invalid or not fully static."""


def inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, strict (an inference error raises) and with constant data propagation."""
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def _is_static(info: onnx.ValueInfoProto) -> bool:
    tensor = info.type.tensor_type
    return tensor.HasField("shape") and all(dim.HasField("dim_value") for dim in tensor.shape.dim)


def unshaped_tensors(model: onnx.ModelProto) -> list[str]:
    """Main-graph tensors that shape inference leaves without a fully static shape."""
    model = inferred(model)
    infos = {info.name: info for info in (*model.graph.value_info, *model.graph.output)}
    produced = [name for node in model.graph.node for name in node.output if name]
    return [name for name in produced if name not in infos or not _is_static(infos[name])]


def custom_op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node if node.domain == DOMAIN)


def check_graph(model: onnx.ModelProto) -> None:
    """Raise GraphCheckError unless the ONNX checker (full) passes and every tensor has a static shape."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise GraphCheckError(f"ONNX checker: {error}") from None
    missing = unshaped_tensors(model)
    if missing:
        raise GraphCheckError(f"{len(missing)} tensors without a static shape, e.g. {', '.join(missing[:3])}")
