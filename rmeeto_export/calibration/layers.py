"""Which nodes of an exported Vim graph get INT8: the linear layers, found by their weight shapes.

Only main-graph MatMul/Gemm nodes whose weight is a constant 2-D float initializer qualify, and only
when that weight has the shape of one of Vim's linear layers (in_proj, x_proj, dt_proj, out_proj,
head; docs/vim.md), with the embedding width read from the patch-embedding Conv. This holds
for both exports: in the plugin graph the scan and the merge are custom nodes whose bodies live in
functions (never walked); in the portable graph their inlined MatMuls multiply computed or
batch-shaped operands, not a 2-D weight, and the scan's own MatMuls sit inside its Scan body. Node
names are not used: the exporter does not name dt_proj (it is a bare `dt @ weight.t()`).

An out_proj whose output the next block merges on (the R-MeeTo metric is that mixer output) is marked
`feeds_merge`: normally the mixer output only goes to the next block's residual Add, but before a
merge it goes to the merge (its TokenMerge node, or the inlined merge's first Gathers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import onnx

from rmeeto_export.errors import UserError
from rmeeto_export.models.vim import VimConfig

ROLES = ("in_proj", "x_proj", "dt_proj", "out_proj", "head")
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT})


@dataclass(frozen=True)
class LinearLayer:
    """One quantised layer: its activation input is quantised per tensor, its weight per channel."""

    node: str
    op_type: str
    role: str
    activation: str
    weight: str
    channel_axis: int  # the weight's output-channel axis as stored (MatMul (K, N): 1; Gemm transB: 0)
    feeds_merge: bool = False


def embed_dim(model: onnx.ModelProto) -> int:
    """Vim's width D: output channels of the patch-embedding Conv, the Conv that reads the images."""
    graph_inputs = {value.name for value in model.graph.input}
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[0] in graph_inputs and node.input[1] in initializers:
            return int(initializers[node.input[1]].dims[0])
    raise UserError("the ONNX model has no patch-embedding Conv on its input: it is not a Vim exported by rmeeto-export")


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _weight_as_used(node: onnx.NodeProto, weight: onnx.TensorProto) -> Optional[tuple[int, int, int]]:
    """(K, N, output-channel axis) of y = x @ W for a 2-D weight; None where the node is not such a layer."""
    if len(weight.dims) != 2 or weight.data_type not in _FLOAT_TYPES:
        return None
    rows, cols = int(weight.dims[0]), int(weight.dims[1])
    if node.op_type == "MatMul":
        return rows, cols, 1
    if _attribute(node, "transA", 0):
        return None
    return (cols, rows, 0) if _attribute(node, "transB", 0) else (rows, cols, 1)


def _role(op_type: str, k: int, n: int, width: int, is_graph_output: bool) -> Optional[str]:
    vim = VimConfig(embed_dim=width)  # the other widths follow from D as in the model
    d_inner, dt_rank = vim.d_inner, vim.dt_rank
    if k == width and (op_type == "Gemm" or is_graph_output):
        return "head"
    if (k, n) == (width, 2 * d_inner):
        return "in_proj"
    if (k, n) == (d_inner, width):
        return "out_proj"
    if k == d_inner:
        return "x_proj"  # (d_inner, dt_rank + 2 * d_state)
    if (k, n) == (dt_rank, d_inner):
        return "dt_proj"
    return None


def linear_layers(model: onnx.ModelProto) -> list[LinearLayer]:
    """The graph's quantisable linear layers, in graph order."""
    initializers = {init.name: init for init in model.graph.initializer}
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in initializers.values()):
        raise UserError("the ONNX model has fp16 weights: INT8 quantisation starts from the fp32 export")
    width = embed_dim(model)
    graph_outputs = {value.name for value in model.graph.output}
    consumer_ops: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumer_ops.setdefault(name, set()).add(node.op_type)
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[0] in initializers or node.input[1] not in initializers:
            continue
        used = _weight_as_used(node, initializers[node.input[1]])
        if used is None:
            continue
        k, n, axis = used
        role = _role(node.op_type, k, n, width, node.output[0] in graph_outputs)
        if role is not None:
            feeds_merge = role == "out_proj" and consumer_ops.get(node.output[0], set()) != {"Add"}
            layers.append(LinearLayer(node.name, node.op_type, role, node.input[0], node.input[1], axis, feeds_merge))
    if not layers:
        raise UserError("found no linear layers to quantise in the ONNX model: is it a Vim exported by rmeeto-export?")
    return layers
