"""The selective-scan op against an independent, element-by-element fp64 evaluation of the formulas."""

import math

import pytest
import torch

from rmeeto_export.errors import UserError
from rmeeto_export.models.ops import selective_scan, selective_scan_reference


def scan_by_the_formulas(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    """The definition in docs/ops.md#selectivescan written out one scalar at a time in Python floats (fp64)."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    out = torch.zeros(batch, dim, length, dtype=torch.float64)
    order = range(length - 1, -1, -1) if reverse else range(length)
    for b in range(batch):
        for d in range(dim):
            h = [0.0] * n_state
            for t in order:
                dt = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = math.log1p(math.exp(dt))
                y = 0.0
                for n in range(n_state):
                    h[n] = math.exp(dt * float(A[d, n])) * h[n] + dt * float(B[b, n, t]) * float(u[b, d, t])
                    y += h[n] * float(C[b, n, t])
                if D is not None:
                    y += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zt = float(z[b, d, t])
                    y *= zt / (1.0 + math.exp(-zt))
                out[b, d, t] = y
    return out


def random_scan_inputs(batch, dim, n_state, length, *, dtype=torch.float32, with_D=True, with_z=True,
                       with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(
        u=rand(batch, dim, length).to(dtype),
        delta=(0.5 * rand(batch, dim, length)).to(dtype),
        A=-torch.exp(0.5 * rand(dim, n_state)),  # A < 0: decaying state, as -exp(A_log) in the model
        B=rand(batch, n_state, length).to(dtype),
        C=rand(batch, n_state, length).to(dtype),
        D=rand(dim) if with_D else None,
        z=rand(batch, dim, length).to(dtype) if with_z else None,
        delta_bias=(0.3 * rand(dim)) if with_bias else None,
    )


CASES = [
    # batch, dim, n_state, length, with_D, with_z, with_bias, softplus
    (1, 3, 4, 1, True, True, True, True),
    (2, 5, 16, 9, True, True, True, True),
    (3, 4, 8, 12, False, True, True, True),
    (2, 6, 4, 7, True, False, True, True),
    (1, 7, 5, 10, True, True, False, True),
    (2, 3, 2, 6, False, False, False, False),
]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch,dim,n_state,length,with_D,with_z,with_bias,softplus", CASES)
def test_scan_matches_the_formulas(batch, dim, n_state, length, with_D, with_z, with_bias, softplus, reverse):
    x = random_scan_inputs(batch, dim, n_state, length, dtype=torch.float64, with_D=with_D, with_z=with_z,
                           with_bias=with_bias, seed=batch * 100 + length)
    expected = scan_by_the_formulas(**x, delta_softplus=softplus, reverse=reverse)
    got = selective_scan(**x, delta_softplus=softplus, reverse=reverse)
    # Both sides are fp64: only summation order differs, so agreement is near machine precision.
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_fp32_inputs_compute_in_fp32_and_keep_dtype():
    x = random_scan_inputs(2, 8, 16, 33, dtype=torch.float32)
    expected = scan_by_the_formulas(**x, delta_softplus=True, reverse=True)
    got = selective_scan(**x, delta_softplus=True, reverse=True)
    assert got.dtype == torch.float32
    # fp32 accumulation over 33 steps of O(1) terms: a few ulps of the output scale.
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_half_inputs_return_half_from_fp32_math():
    x = random_scan_inputs(1, 4, 16, 20, dtype=torch.bfloat16)
    got = selective_scan(**x)
    assert got.dtype == torch.bfloat16
    as_fp32 = {k: (v.float() if v is not None and v.dtype == torch.bfloat16 else v) for k, v in x.items()}
    # Same bf16 inputs computed in fp32 then rounded once: differs by at most one bf16 rounding (2^-8 rel).
    torch.testing.assert_close(got.float(), selective_scan(**as_fp32), rtol=2**-8, atol=1e-2)


def test_reverse_equals_flipping_every_sequence():
    x = random_scan_inputs(2, 5, 8, 11, dtype=torch.float64)
    flip = lambda t: t.flip(-1)  # noqa: E731
    flipped = dict(x, u=flip(x["u"]), delta=flip(x["delta"]), B=flip(x["B"]), C=flip(x["C"]), z=flip(x["z"]))
    torch.testing.assert_close(selective_scan(**x, reverse=True), flip(selective_scan(**flipped)))


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_gradients(reverse):
    x = random_scan_inputs(2, 3, 4, 5, dtype=torch.float64, seed=7)
    for value in x.values():
        value.requires_grad_(True)
    args = tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    assert torch.autograd.gradcheck(lambda *a: torch.ops.rmeeto.selective_scan(*a, True, reverse), args)


def test_scan_op_registration_is_consistent():
    """Schema, fake (meta) implementation and autograd registration agree with the real kernel."""
    x = random_scan_inputs(2, 4, 4, 6, dtype=torch.float64)
    x["u"].requires_grad_(True)
    args = tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")) + (True, False)
    torch.library.opcheck(torch.ops.rmeeto.selective_scan.default, args)


def test_fake_scan_gives_static_shapes():
    with torch.device("meta"):
        x = random_scan_inputs(3, 10, 16, 197)
    assert torch.ops.rmeeto.selective_scan(*x.values(), True, True).shape == (3, 10, 197)


def test_unknown_backend_is_rejected():
    x = random_scan_inputs(1, 2, 2, 3)
    with pytest.raises(UserError, match="unknown scan backend"):
        selective_scan(**x, backend="cuda-magic")


def test_reference_is_the_op_implementation():
    x = random_scan_inputs(1, 4, 4, 8)
    torch.testing.assert_close(selective_scan(**x), selective_scan_reference(**x), rtol=0, atol=0)


def test_token_merge_op_gradients_and_registration():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    residual = torch.randn(2, 9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    size = torch.ones(2, 9, 1, dtype=torch.float64)
    out = torch.ops.rmeeto.token_merge(hidden, residual, size, 2, 4)
    assert [t.shape for t in out] == [(2, 7, 5), (2, 7, 5), (2, 7, 1)]
    # Merge decisions are piecewise constant in the inputs; gradcheck's 1e-6 steps do not flip them.
    assert torch.autograd.gradcheck(lambda h, r: torch.ops.rmeeto.token_merge(h, r, size, 2, 4)[:2], (hidden, residual))
    torch.library.opcheck(torch.ops.rmeeto.token_merge.default, (hidden, residual, size, 2, 4))
