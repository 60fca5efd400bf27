"""The rmeeto function bodies alone, run by ONNX Runtime, against the PyTorch reference ops."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rmeeto_export.contracts import DOMAIN, SELECTIVE_SCAN, TOKEN_MERGE
from rmeeto_export.errors import UserError
from rmeeto_export.export.functions import custom_functions, selective_scan_function, token_merge_function
from rmeeto_export.export.onnx_export import export_module, inline_custom_ops
from rmeeto_export.export.static_shapes import fold_static_shapes
from rmeeto_export.merge.rmeeto import merge_tokens
from rmeeto_export.models import ops

BATCH, CHANNELS, STATES, LENGTH = 2, 6, 4, 11


class ScanOnly(nn.Module):
    def __init__(self, A: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], softplus: bool, reverse: bool):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("D", D)
        self.register_buffer("delta_bias", delta_bias)
        self.softplus, self.reverse = softplus, reverse

    def forward(self, u, delta, B, C, z):
        return ops.selective_scan(
            u, delta, self.A, B, C, self.D, z, self.delta_bias, self.softplus, self.reverse, backend="reference"
        )


class MergeOnly(nn.Module):
    def __init__(self, r: int, cls_index: int):
        super().__init__()
        self.r, self.cls_index = r, cls_index

    def forward(self, hidden, residual, size):
        return ops.token_merge(hidden, residual, size, self.r, self.cls_index)


def run(model: onnx.ModelProto, names: list[str], tensors: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in zip(names, tensors)})


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == DOMAIN]


def scan_inputs(dtype: torch.dtype, softplus: bool, seed: int = 0, length: int = LENGTH):
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    # Without softplus the raw delta is the step size: keep it positive, as softplus would.
    delta = randn(BATCH, CHANNELS, length) if softplus else torch.rand(BATCH, CHANNELS, length, generator=generator)
    activations = (randn(BATCH, CHANNELS, length), delta, randn(BATCH, STATES, length), randn(BATCH, STATES, length), randn(BATCH, CHANNELS, length))
    if softplus and length >= 4:
        # Both sides of torch's linear threshold (20), a vanishing step, and one whose exp overflows fp32.
        delta[0, 0, :4] = torch.tensor([25.0, 19.5, -30.0, 100.0])
    A = -torch.rand(CHANNELS, STATES, generator=generator) * 2
    D, delta_bias = randn(CHANNELS), torch.rand(CHANNELS, generator=generator) * 0.5
    return tuple(t.to(dtype) for t in activations), A, D, delta_bias


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw-delta"])
@pytest.mark.parametrize("with_skip_and_bias", [True, False], ids=["D+bias", "no-D-no-bias"])
def test_selective_scan_body_matches_reference(reverse, softplus, with_skip_and_bias):
    (u, delta, B, C, z), A, D, delta_bias = scan_inputs(torch.float32, softplus)
    D, delta_bias = (D, delta_bias) if with_skip_and_bias else (None, None)
    module = ScanOnly(A, D, delta_bias, softplus, reverse)
    names = ["u", "delta", "B", "C", "z"]
    model = export_module(module, (u, delta, B, C, z), names, ["y"])
    (node,) = custom_nodes(model)
    assert (node.op_type, len(node.input)) == (SELECTIVE_SCAN.name, 8)  # an absent D / delta_bias becomes zeros
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes == {
        "delta_softplus": int(softplus), "reverse": int(reverse), "plugin_namespace": b"rmeeto", "plugin_version": b"1"
    }
    (actual,) = run(model, names, (u, delta, B, C, z))
    expected = ops.selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, softplus, reverse).numpy()
    # Same recurrence order as the reference; only exp/softplus/sigmoid implementations and the sum
    # over the 4 states differ, a few fp32 ulps on values of order 1-10.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 17, 76, 186, 197])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_selective_scan_body_matches_reference_at_every_token_count(length, reverse):
    """Token counts Vim's schedules produce (197 unmerged, 186 and 76 with r = 11, 17 in the test model)
    and the edge cases 1 and 2, in both directions: the time flip must put every step back in place."""
    (u, delta, B, C, z), A, D, delta_bias = scan_inputs(torch.float32, softplus=True, seed=length, length=length)
    names = ["u", "delta", "B", "C", "z"]
    model = export_module(ScanOnly(A, D, delta_bias, True, reverse), (u, delta, B, C, z), names, ["y"])
    (actual,) = run(model, names, (u, delta, B, C, z))
    expected = ops.selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, True, reverse).numpy()
    assert actual.shape == expected.shape == (BATCH, CHANNELS, length)
    # As above; the states sum up to a few hundred steps, each rounding at most a few ulps.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_selective_scan_body_fp16_activations_keep_fp32_math():
    (u, delta, B, C, z), A, D, delta_bias = scan_inputs(torch.float16, softplus=True)
    names = ["u", "delta", "B", "C", "z"]
    model = export_module(ScanOnly(A, D, delta_bias, True, True), (u, delta, B, C, z), names, ["y"])
    (actual,) = run(model, names, (u, delta, B, C, z))
    assert actual.dtype == np.float16
    expected = ops.selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, True, True)
    # Both compute in fp32 from the same fp16 inputs and round the result to fp16 once: at most one
    # fp16 ulp apart (relative 2**-10) where the fp32 results straddle a rounding boundary.
    np.testing.assert_allclose(actual.astype(np.float32), expected.float().numpy(), rtol=2**-10, atol=1e-3)


def test_selective_scan_without_gate_is_a_clear_error():
    (u, delta, B, C, _), A, D, delta_bias = scan_inputs(torch.float32, softplus=True)

    class NoGate(ScanOnly):
        def forward(self, u, delta, B, C):
            return ops.selective_scan(u, delta, self.A, B, C, self.D, None, self.delta_bias, True, False, backend="reference")

    with pytest.raises(UserError, match="needs the gate z"):
        export_module(NoGate(A, D, delta_bias, True, False), (u, delta, B, C), ["u", "delta", "B", "C"], ["y"])


def merge_case(hidden: torch.Tensor, r: int, cls_index: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    residual = torch.randn(hidden.shape, generator=generator)
    size = torch.randint(1, 4, (*hidden.shape[:2], 1), generator=generator).float()
    module = MergeOnly(r, cls_index)
    names = ["hidden", "residual", "size"]
    model = export_module(module, (hidden, residual, size), names, ["hidden_out", "residual_out", "size_out"])
    (node,) = custom_nodes(model)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, attributes["r"], attributes["cls_index"]) == (TOKEN_MERGE.name, r, cls_index)
    actual = run(model, names, (hidden, residual, size))
    expected = merge_tokens(hidden, residual, size, r, cls_index)[:3]
    return actual, [t.numpy() for t in expected]


# The matching is decided by comparisons of the same fp32 scores in both implementations (exact);
# the weighted sums differ only in summation order over at most a few terms: a few fp32 ulps.
MERGE_TOLERANCE = dict(rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tokens,r,cls_index", [(17, 2, 8), (17, 8, 0), (17, 5, 16), (12, 3, 5), (197, 11, 98)])
def test_token_merge_body_matches_reference(tokens, r, cls_index):
    hidden = torch.randn(2, tokens, 8, generator=torch.Generator().manual_seed(tokens + r))
    actual, expected = merge_case(hidden, r, cls_index)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape == (2, tokens - r, a.shape[-1])
        np.testing.assert_allclose(a, e, **MERGE_TOLERANCE)


@pytest.mark.parametrize("distinct", [1, 2, 3], ids=["all-identical", "two-kinds", "three-kinds"])
def test_token_merge_ties_break_towards_the_lowest_index(distinct):
    """Tokens are repeated basis vectors: scores are exactly 0 or 1, so both the best destination of a
    source and the ranking of sources tie massively; the lowest index must win everywhere."""
    tokens, channels, r = 17, 4, 5
    kinds = torch.eye(channels)[torch.arange(tokens) % distinct]
    hidden = kinds[None].repeat(2, 1, 1) * torch.tensor([1.0, 3.0])[:, None, None]
    actual, expected = merge_case(hidden, r, cls_index=8)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, **MERGE_TOLERANCE)


def test_token_merge_fp16_hidden_keeps_its_dtype():
    hidden = torch.randn(2, 17, 8, generator=torch.Generator().manual_seed(3)).half()
    actual, expected = merge_case(hidden, 3, 8)
    assert actual[0].dtype == np.float16 and actual[1].dtype == np.float32
    # Reference and body both average in fp32 and round hidden to fp16 once.
    np.testing.assert_allclose(actual[0].astype(np.float32), expected[0].astype(np.float32), rtol=2**-10, atol=1e-3)


def test_scan_function_is_a_small_scan_not_an_unrolled_loop():
    function = selective_scan_function()
    ops_used = [node.op_type for node in function.node]
    assert ops_used.count("Scan") == 1 and "Loop" not in ops_used
    assert len(function.node) < 80  # whatever L is: an unrolled scan grows with L (1612 nodes at L=197)
    (scan,) = [node for node in function.node if node.op_type == "Scan"]
    body = onnx.helper.get_attribute_value(next(a for a in scan.attribute if a.name == "body"))
    assert [node.op_type for node in body.node] == ["Mul", "Add", "MatMul"]  # h_t = dA_t * h + dBu_t; y_t = C_t . h_t
    assert all(value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for value in [*body.input, *body.output])
    assert list(function.attribute) == ["delta_softplus", "reverse"]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_inlined_scan_has_the_same_few_nodes_at_every_length(reverse):
    """Inlined and folded as in the portable graph, one scan is a few dozen nodes plus a 3-node Scan
    body, at 11 tokens as at 197; an unrolled scan would grow with the length (1612 nodes at 197)."""
    sizes = []
    for length in (LENGTH, 197):
        (u, delta, B, C, z), A, D, delta_bias = scan_inputs(torch.float32, softplus=True, length=length)
        names = ["u", "delta", "B", "C", "z"]
        model = fold_static_shapes(inline_custom_ops(export_module(ScanOnly(A, D, delta_bias, True, reverse), (u, delta, B, C, z), names, ["y"])))
        (scan,) = [node for node in model.graph.node if node.op_type == "Scan"]
        body = onnx.helper.get_attribute_value(next(a for a in scan.attribute if a.name == "body"))
        sizes.append((len(model.graph.node), len(body.node)))
    assert sizes[0] == sizes[1] and sizes[0][0] <= 40 and sizes[0][1] == 3


def test_merge_function_avoids_ops_tensorrt_rtx_rejects():
    function = token_merge_function()
    ops_used = {node.op_type for node in function.node}
    assert not ops_used & {"ScatterElements", "ScatterND", "Loop", "Scan", "NonZero"}
    assert {"TopK", "MatMul", "Equal"} <= ops_used
    assert list(function.attribute) == ["r", "cls_index"]
    assert len(function.node) < 150  # about a third is token-count arithmetic that folds to constants once inlined


def test_function_bodies_are_deterministic():
    assert [f.SerializeToString() for f in custom_functions()] == [f.SerializeToString() for f in custom_functions()]
