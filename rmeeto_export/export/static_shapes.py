"""Fold the exported graph's shape arithmetic into constants, so every tensor has a static shape.

The TorchScript trace records `x.shape[0]`-style reads as Shape/ConstantOfShape/Where chains, and the
inlined function bodies compute token counts from Shape; with static inputs all of it is constant.
onnxscript's constant folder folds it, except ConstantOfShape, which it keeps by default so as not to
grow the file: small ones (shape-sized, e.g. the cls-token expand's shape) are folded here too. Only
folding runs, not onnxscript's pattern rewriter, which costs minutes on a 24-block inlined graph.
"""

from __future__ import annotations

import math
from typing import Optional

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import fold_constants

# ConstantOfShape outputs up to this many elements are shape arithmetic, not activations.
SMALL_CONSTANT_ELEMENTS = 64
# Each round folds what the previous round's constants made foldable (Shape -> Gather -> Range -> ...).
MAX_FOLD_ROUNDS = 8


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
    for _ in range(MAX_FOLD_ROUNDS):
        if not fold_constants(ir_model, onnx_shape_inference=True, should_fold=_fold_small_constant_of_shape).modified:
            break
    common_passes.RemoveUnusedNodesPass()(ir_model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir_model)
    common_passes.DeduplicateInitializersPass()(ir_model)
    folded = ir.serde.serialize_model(ir_model)
    _drop_foreign_value_info(folded)
    return folded
