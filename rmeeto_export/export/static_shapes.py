"""Fold the exported graph's shape arithmetic into constants, so every tensor has a static shape.

The TorchScript trace records `x.shape[0]`-style reads as Shape/ConstantOfShape/Where chains, and the
inlined function bodies compute token counts from Shape; with static inputs all of it is constant.
onnxscript's optimizer folds it, except ConstantOfShape, which it keeps by default so as not to grow
the file: small ones (shape-sized, e.g. the cls-token expand's shape) are folded here too.
"""

from __future__ import annotations

import math
from typing import Optional

import onnx
import onnx_ir as ir
from onnxscript.optimizer import optimize_ir

# ConstantOfShape outputs up to this many elements are shape arithmetic, not activations.
SMALL_CONSTANT_ELEMENTS = 64
OPTIMIZER_ITERATIONS = 4


def _fold_small_constant_of_shape(node: ir.Node) -> Optional[bool]:
    if node.domain != "" or node.op_type != "ConstantOfShape":
        return None  # the optimizer's default rules
    shape = node.inputs[0].const_value
    return shape is not None and math.prod(shape.numpy().tolist()) <= SMALL_CONSTANT_ELEMENTS


def _drop_foreign_value_info(model: onnx.ModelProto) -> None:
    """Keep value_info only for tensors of the main graph (the optimizer also lists function-body values)."""
    produced = {name for node in model.graph.node for name in node.output}
    kept = [info for info in model.graph.value_info if info.name in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def fold_static_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold shape computations (and constant subgraphs) of a static-shape model; functions are kept."""
    ir_model = ir.serde.deserialize_model(model)
    optimize_ir(ir_model, num_iterations=OPTIMIZER_ITERATIONS, should_fold=_fold_small_constant_of_shape, inline=False)
    folded = ir.serde.serialize_model(ir_model)
    _drop_foreign_value_info(folded)
    return folded
