"""SmoothQuant folded into the graph's own constants: outlier channels moved from activations to weights.

A linear layer's activation is quantised per tensor, so one channel ten times larger than the rest
spends most of the 255 levels on itself. With a factor s_j per input channel,
X @ W = (X / s) @ (s W): dividing channel j of X by s_j and multiplying row j of W by s_j changes
nothing in real arithmetic but evens out the per-channel ranges the int8 grid must cover
(SmoothQuant, arXiv 2211.10438):

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

At alpha 0.5 every channel's largest |x / s| equals its largest |s w|.

The division needs no new node where the activation is made by a Mul or Div with a constant that is
a scalar or one value per channel: 1 / s goes into that constant. In an exported Vim these are
in_proj (its input is RMSNorm's output times the norm weight) and out_proj (the sum of the two scan
directions divided by 2). x_proj (after SiLU), dt_proj (after a Split) and the head (after the class
token Gather) have no such constant and are left as they are. Only an activation and a weight that
nothing else reads are rewritten; the folded constant is a new initializer (the exporter shares one
scalar 2 among all blocks), so no other node sees a changed value.

What it gains, and why alpha defaults to 0.5: docs/measurements.md#smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from rmeeto_export.calibration.layers import LinearLayer
from rmeeto_export.errors import UserError

DEFAULT_ALPHA = 0.5
_FLOOR = 1e-5  # a channel that never fires (or all-zero weights) must not give s = 0 or inf


@dataclass(frozen=True)
class FoldSite:
    """Where 1 / s can be folded for `layer`: input `constant_input` of node `producer` (a Mul or Div)."""

    layer: LinearLayer
    producer: int  # index in graph.node
    constant_input: int


def _uses(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs (or graph outputs) read each tensor, counting reads from inside subgraphs
    (a Scan body may use an outer tensor by name)."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                for name, count in _uses(attribute.g).items():
                    uses[name] = uses.get(name, 0) + count
    for value in graph.output:
        uses[value.name] = uses.get(value.name, 0) + 1
    return uses


def fold_sites(model: onnx.ModelProto, layers: list[LinearLayer]) -> dict[str, FoldSite]:
    """{activation: FoldSite} for the layers whose smoothing folds into an existing constant."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {output: index for index, node in enumerate(graph.node) for output in node.output}
    uses = _uses(graph)
    sites = {}
    for layer in layers:
        index = producers.get(layer.activation)
        if index is None or uses[layer.activation] != 1 or uses[layer.weight] != 1:
            continue
        node = graph.node[index]
        channels = initializers[layer.weight].dims[1 - layer.channel_axis]
        candidates = [1] if node.op_type == "Div" else [0, 1] if node.op_type == "Mul" else []
        for position in candidates:
            constant = initializers.get(node.input[position])
            if constant is not None and list(constant.dims) in ([], [1], [channels]):
                sites[layer.activation] = FoldSite(layer, index, position)
                break
    return sites


def smoothing_factors(activation_amax: np.ndarray, weight_amax: np.ndarray, alpha: float) -> np.ndarray:
    """s per input channel from the activation's and the weight's largest |value| in that channel."""
    factors = np.maximum(activation_amax, _FLOOR) ** alpha / np.maximum(weight_amax, _FLOOR) ** (1 - alpha)
    return factors.astype(np.float32)


def factors_for(model: onnx.ModelProto, sites: Mapping[str, FoldSite], activation_amax: Mapping[str, np.ndarray],
                alpha: float) -> dict[str, np.ndarray]:
    """{activation: s} for every fold site, from the calibrated per-channel activation maxima."""
    initializers = {init.name: init for init in model.graph.initializer}
    factors = {}
    for name, site in sites.items():
        weight = numpy_helper.to_array(initializers[site.layer.weight])
        factors[name] = smoothing_factors(activation_amax[name], np.abs(weight).max(axis=site.layer.channel_axis), alpha)
    return factors


def smooth(model: onnx.ModelProto, layers: list[LinearLayer], factors: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with each activation in `factors` divided by its s (in the producer's constant)
    and the matching weight rows multiplied by it; the fp32 outputs are unchanged up to rounding."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    sites = fold_sites(smoothed, layers)
    unknown = sorted(set(factors) - set(sites))
    if unknown:
        raise UserError(f"the calibration cache smooths {unknown[0]}, which this graph cannot fold; calibrate again")
    initializers = {init.name: init for init in smoothed.graph.initializer}
    for activation, scale in factors.items():
        site = sites[activation]
        node = smoothed.graph.node[site.producer]
        value = numpy_helper.to_array(initializers[node.input[site.constant_input]]).reshape(-1)  # broadcasts on the last axis
        value = value * scale if node.op_type == "Div" else value / scale
        node.input[site.constant_input] = f"{activation}.smoothing"
        smoothed.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.input[site.constant_input]))
        weight = initializers[site.layer.weight]
        rows = scale.reshape((1, -1) if site.layer.channel_axis == 0 else (-1, 1))  # along the input-channel axis
        weight.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(weight) * rows).astype(np.float32), weight.name))
    used = _uses(smoothed.graph)
    unused = [init for init in smoothed.graph.initializer if init.name not in used]
    for init in unused:
        smoothed.graph.initializer.remove(init)
    return smoothed
