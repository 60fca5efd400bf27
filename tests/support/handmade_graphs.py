"""Small ONNX graphs written with onnx.helper: our custom nodes, or standard ops only.

They stand in for exported Vim graphs where the test is about TensorRT's handling of the nodes
(parsing, plugin mapping, shapes, dtypes), not about the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rmeeto_export.contracts import DOMAIN, DOMAIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION

CHANNELS, STATES, LENGTH = 8, 16, 9  # d_state 16 as in Vim; the C++ kernels are compiled for it
TOKENS, WIDTH, MERGE_R, CLS_INDEX = 9, 8, 2, 4
_ONNX_TYPE = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}

Batch = Union[int, str]  # a number, or a symbolic name for a dynamic batch


def _custom_node(op_type: str, inputs: list[str], outputs: list[str], **attributes) -> onnx.NodeProto:
    return helper.make_node(
        op_type, inputs, outputs, domain=DOMAIN, plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION,
        **attributes,
    )


def write_custom_node_graph(path: Path, precision: str = "fp32", batch: Batch = 1, stream_precision: str = "fp32") -> Path:
    """Forward and reverse SelectiveScan plus one TokenMerge, activations in ``precision``.

    stream_precision: type of TokenMerge's residual and size, which the plugins require in fp32.
    """
    act = _ONNX_TYPE[precision]
    fp32 = _ONNX_TYPE[stream_precision]
    rng = np.random.default_rng(0)
    seq = [batch, CHANNELS, LENGTH]
    states = [batch, STATES, LENGTH]
    tokens = [batch, TOKENS, WIDTH]
    merged = [batch, TOKENS - MERGE_R, WIDTH]
    inputs = [
        helper.make_tensor_value_info("u", act, seq),
        helper.make_tensor_value_info("delta", act, seq),
        helper.make_tensor_value_info("B", act, states),
        helper.make_tensor_value_info("C", act, states),
        helper.make_tensor_value_info("z", act, seq),
        helper.make_tensor_value_info("hidden", act, tokens),
        helper.make_tensor_value_info("residual", fp32, tokens),
        helper.make_tensor_value_info("size", fp32, [batch, TOKENS, 1]),
    ]
    weights = [
        numpy_helper.from_array(-np.exp(rng.standard_normal((CHANNELS, STATES))).astype(np.float32), "A"),
        numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32), "D"),
        numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32), "delta_bias"),
    ]
    scan_inputs = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    nodes = [
        _custom_node("SelectiveScan", scan_inputs, ["y_forward"], delta_softplus=1, reverse=0),
        _custom_node("SelectiveScan", scan_inputs, ["y_backward"], delta_softplus=1, reverse=1),
        _custom_node("TokenMerge", ["hidden", "residual", "size"], ["hidden_out", "residual_out", "size_out"],
                     r=MERGE_R, cls_index=CLS_INDEX),
    ]
    outputs = [
        helper.make_tensor_value_info("y_forward", act, seq),
        helper.make_tensor_value_info("y_backward", act, seq),
        helper.make_tensor_value_info("hidden_out", act, merged),
        helper.make_tensor_value_info("residual_out", fp32, merged),
        helper.make_tensor_value_info("size_out", fp32, [batch, TOKENS - MERGE_R, 1]),
    ]
    graph = helper.make_graph(nodes, "custom_nodes", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    onnx.save(model, str(path))
    return path


def write_standard_graph(path: Path, batch: Batch = 1) -> Path:
    """x @ W + b with standard ops only (no plugin needed)."""
    weight = numpy_helper.from_array(np.eye(WIDTH, dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "standard",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, WIDTH])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
