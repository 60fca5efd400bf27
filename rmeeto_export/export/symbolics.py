"""TorchScript-exporter symbolics: torch.ops.rmeeto.* become bare rmeeto:: custom nodes.

The function bodies are attached afterwards (functions.py), the same way for every op, instead of
through g.onnxscript_op: the bodies need a Scan subgraph and attribute references, which are plain
to write with onnx.helper. Output types are copied from the traced op, whose shapes are static (the
exporter's own shape inference knows nothing of custom ops); in an export for a batch range
(`symbolic_batch()`) their batch axis is left symbolic.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from torch.onnx import symbolic_helper

from rmeeto_export.contracts import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, SELECTIVE_SCAN, TOKEN_MERGE, OpContract
from rmeeto_export.export.functions import ONNX_OPSET

PLUGIN_ATTRIBUTES = {"plugin_namespace_s": PLUGIN_NAMESPACE, "plugin_version_s": PLUGIN_VERSION}


class ExportError(RuntimeError):
    """The model uses an op in a way the ONNX custom ops cannot express."""


def _custom_node(g, contract: OpContract, inputs: list, attribute_values: list):
    """The node of `contract`'s op with its int attributes (constants in the traced graph) and the
    plugin's namespace and version, which TensorRT's ONNX parser reads to find the plugin."""
    attributes = {
        f"{attribute.name}_i": int(symbolic_helper._maybe_get_const(value, "b" if attribute.flag else "i"))
        for attribute, value in zip(contract.attributes, attribute_values)
    }
    return g.op(f"{DOMAIN}::{contract.name}", *inputs, outputs=len(contract.outputs), **attributes, **PLUGIN_ATTRIBUTES)


_SYMBOLIC_BATCH = contextvars.ContextVar("symbolic_batch", default=False)


@contextlib.contextmanager
def symbolic_batch(enabled: bool = True) -> Iterator[None]:
    """Within it, custom nodes' outputs get a symbolic batch axis (an export with dynamic batch axes)."""
    token = _SYMBOLIC_BATCH.set(enabled)
    try:
        yield
    finally:
        _SYMBOLIC_BATCH.reset(token)


def _set_traced_type(output, traced) -> None:
    """The traced output type; axis 0 (the batch) symbolic inside `symbolic_batch()`."""
    if _SYMBOLIC_BATCH.get():
        sizes = traced.type().varyingSizes()
        output.setType(traced.type().with_sizes([None, *sizes[1:]]))
    else:
        output.setType(traced.type())


def _zero_per_channel(g):
    """A (d,) fp32 zero vector for an absent D / delta_bias: adding zero is exactly the op without it."""
    channels = g.original_node.inputsAt(2).type().sizes()[0]  # A is (d, n)
    return g.op("Constant", value_t=torch.zeros(channels, dtype=torch.float32))


def _selective_scan(g, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    if symbolic_helper._is_none(z):
        raise ExportError(f"{DOMAIN}::{SELECTIVE_SCAN.name} export needs the gate z (every Vim mixer has one)")
    D = _zero_per_channel(g) if symbolic_helper._is_none(D) else D
    delta_bias = _zero_per_channel(g) if symbolic_helper._is_none(delta_bias) else delta_bias
    out = _custom_node(g, SELECTIVE_SCAN, [u, delta, A, B, C, D, z, delta_bias], [delta_softplus, reverse])
    _set_traced_type(out, g.original_node.output())
    return out


def _token_merge(g, hidden, residual, size, r, cls_index):
    outputs = _custom_node(g, TOKEN_MERGE, [hidden, residual, size], [r, cls_index])
    for exported, traced in zip(outputs, g.original_node.outputs()):
        _set_traced_type(exported, traced)
    return outputs


def register_symbolics() -> None:
    """Idempotent: the registry is global to the process and later registrations replace earlier ones."""
    torch.onnx.register_custom_op_symbolic(SELECTIVE_SCAN.torch_op, _selective_scan, ONNX_OPSET)
    torch.onnx.register_custom_op_symbolic(TOKEN_MERGE.torch_op, _token_merge, ONNX_OPSET)
