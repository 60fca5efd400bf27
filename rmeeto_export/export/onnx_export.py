"""Export a (merged or plain) Vim with its frozen schedule to a static-shape ONNX file.

Exporter: torch's TorchScript exporter (dynamo=False). It keeps custom-domain nodes as they are
(symbolics.py) and the function bodies are attached afterwards (functions.py); the dynamo exporter
would inline every function.

Graph interface, whatever the precision: input "images" fp32 (batch, 3, img, img), output "logits"
fp32 (batch, classes). The batch is a fixed number, or the symbolic dimension "batch" when exported
for a batch range (export/batch.py); token counts are static either way. fp16 graphs cast the
images to fp16 first and the logits back to fp32 last, so callers never handle fp16 buffers;
inside, casts are explicit (the graph is strongly typed).
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Union

import onnx
import onnx.inliner
import torch
from torch import nn

from rmeeto_export.contracts import DOMAIN, DOMAIN_VERSION
from rmeeto_export.errors import UserError
from rmeeto_export.files import write_bytes_atomic
from rmeeto_export.export.batch import BatchSpec, parse_batch
from rmeeto_export.export.functions import ONNX_OPSET, custom_functions
from rmeeto_export.export.static_shapes import fold_static_shapes
from rmeeto_export.export.symbolics import ExportError, register_symbolics, symbolic_batch
from rmeeto_export.export.wire import Piece, join_weights, split_weights
from rmeeto_export.models.ops import native_values_while_tracing
from rmeeto_export.precision import EXPORTED_PRECISIONS, check_precision

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # keys: precision.EXPORTED_PRECISIONS
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"  # name of the symbolic batch dimension of a graph exported for a batch range

# Parameters the model reads as fp32 for the scan (A = -exp(A_log), D, delta_bias = dt_proj.bias): an
# fp16 copy keeps them fp32 so the scan's A, D and delta_bias are not rounded to fp16. Norm weights go
# fp16 because the model's RMSNorm returns its weight's dtype, which feeds the fp16 linears.
FP32_PARAMETER_SUFFIXES = (
    "mixer.A_log",
    "mixer.A_b_log",
    "mixer.D",
    "mixer.D_b",
    "mixer.dt_proj.bias",
    "mixer.dt_proj_b.bias",
)


class _ExportGraph(nn.Module):
    """The exported computation: images (fp32) -> model in its compute dtype -> fp32 logits."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.compute_dtype)).float()


def model_in_precision(model: nn.Module, precision: str) -> nn.Module:
    """A CPU, eval-mode copy of `model` with weights in `precision` (scan parameters stay fp32)."""
    check_precision(precision, EXPORTED_PRECISIONS)
    copied = copy.deepcopy(model).cpu().eval()
    if precision == "fp32":
        return copied.float()
    copied.half()
    for name, parameter in copied.named_parameters():
        if name.endswith(FP32_PARAMETER_SUFFIXES):
            parameter.data = parameter.data.float()
    return copied


def export_module(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """Trace `module` to ONNX with rmeeto:: nodes and their function bodies attached.

    Shapes are static, except axis 0 of every input and output with dynamic_batch.
    """
    register_symbolics()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), symbolic_batch(dynamic_batch), native_values_while_tracing():
            # The TorchScript exporter is deprecated, but it is the one that keeps custom-domain nodes;
            # its notes on constant folding (e.g. the backward conv's flipped weight) are harmless.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            # Shape checks in Python (token pruning's) are constants of a static-shape trace, as intended.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                example_inputs,
                buffer,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=input_names,
                output_names=output_names,
                custom_opsets={DOMAIN: DOMAIN_VERSION},
                do_constant_folding=True,
                dynamic_axes={name: {0: BATCH_DIM} for name in (*input_names, *output_names)} if dynamic_batch else None,
            )
    except ExportError as error:
        raise UserError(str(error)) from None
    model = onnx.ModelProto.FromString(buffer.getbuffer())  # getvalue() would copy the whole model first
    used = {(node.domain, node.op_type) for node in model.graph.node}
    model.functions.extend(f for f in custom_functions() if (f.domain, f.name) in used)
    return model


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node of the main graph and its subgraphs a name no other node has, in place.

    A function body's node names are the same at every call site; inliners that keep them make TensorRT
    warn "A node named CastLike_59 already exists". The first node keeps its name; later ones get the
    next free `_<k>` suffix, in graph order, so the result is deterministic.
    """
    taken: set[str] = set()
    next_suffix: dict[str, int] = {}

    def rename(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            name = base = node.name or node.op_type
            while name in taken:
                next_suffix[base] = next_suffix.get(base, 0) + 1
                name = f"{base}_{next_suffix[base]}"
            taken.add(name)
            node.name = name
            for attribute in node.attribute:
                for subgraph in (attribute.g,) if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    rename(subgraph)

    rename(model.graph)
    return model


def inline_custom_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline the rmeeto functions: standard ONNX only, no custom node, no function, no rmeeto opset.

    Every node name is unique afterwards, in subgraphs too (TensorRT warns about repeated names).
    """
    # The inliner takes the model through C++ and back, a copy of every byte; the weights (390 MB for
    # vim_b) play no part in inlining, so they are set aside while it runs and handed to the result.
    weights = list(model.graph.initializer)
    del model.graph.initializer[:]
    try:
        inlined = onnx.inliner.inline_local_functions(model)
    finally:
        model.graph.initializer.extend(weights)
    inlined.graph.initializer.extend(weights)
    del inlined.functions[:]
    kept = [opset for opset in inlined.opset_import if opset.domain != DOMAIN]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    return with_unique_node_names(inlined)


def inline_serialized(serialized: bytes) -> list[Piece]:
    """inline_custom_ops of a serialized model, serialized (as pieces to write in order). The weights'
    bytes are taken from `serialized` as they are: neither inlined nor copied nor serialized again."""
    split = split_weights(serialized)
    inlined = inline_custom_ops(onnx.load_model_from_string(split.rest))
    return join_weights(inlined.SerializeToString(), split.weights)


def build_onnx(
    model: nn.Module, *, batch: BatchSpec = 1, precision: str = "fp32", portable_graph: bool = False
) -> onnx.ModelProto:
    """The ONNX model of `model` (its schedule frozen in), in memory.

    batch: a fixed size, or a range ("1:8:64", BatchRange) for a graph with a symbolic batch axis.
    """
    batch = parse_batch(batch)
    check_precision(precision, EXPORTED_PRECISIONS)
    cfg = model.cfg
    if cfg.scan_backend == "mamba_ssm":  # it bypasses the rmeeto op, so the trace would have no scan node
        raise UserError("export needs scan_backend 'auto' or 'reference' (mamba_ssm's kernels do not export)")
    example = torch.zeros(batch.trace_size, cfg.in_chans, cfg.img_size, cfg.img_size)
    graph = _ExportGraph(model_in_precision(model, precision), _TORCH_DTYPES[precision])
    exported = export_module(graph, (example,), [INPUT_NAME], [OUTPUT_NAME], dynamic_batch=batch.dynamic)
    return fold_static_shapes(inline_custom_ops(exported) if portable_graph else exported)


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    batch: BatchSpec = 1,
    precision: str = "fp32",
    portable: bool = False,
) -> Path:
    """Export `model` to `path` (atomically) and return the path.

    precision "fp32" or "fp16"; portable=True inlines the rmeeto functions (standard ONNX only, for
    TensorRT without our plugins), otherwise rmeeto::SelectiveScan / rmeeto::TokenMerge nodes carry
    their function bodies. Same model and options give a byte-identical file.
    """
    proto = build_onnx(model, batch=batch, precision=precision, portable_graph=portable)
    return write_bytes_atomic(path, proto.SerializeToString())
