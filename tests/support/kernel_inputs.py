"""Inputs for the custom ops' kernels and how their outputs are judged against the PyTorch references,
shared by the kernel tests and the plugin tests (the plugins run the same kernels)."""

from __future__ import annotations

import torch

# Largest |error| allowed, as a fraction of the output's largest |value|. fp32: both sides do the same
# fp32 math in another order (the kernel uses exp2 with a pre-scaled A), about 1e-6 over 197 steps.
# fp16 / bf16: both compute in fp32 and round the output once, so up to one output ulp (2^-11, 2^-8)
# plus a rounding flip on either side: two ulps.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def scan_inputs(batch, dim, dstate, length, optional, dtype, seed, device, softplus=True):
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    # Without softplus, delta itself is the step: keep it positive, or exp(dt * A) > 1 and the states explode.
    delta = 0.5 * randn(batch, dim, length) if softplus else 0.1 + 0.4 * randn(batch, dim, length).sigmoid()
    inputs = dict(
        u=randn(batch, dim, length).to(dtype),
        delta=delta.to(dtype),
        A=-torch.exp(0.5 * randn(dim, dstate)),  # Vim's A = -exp(A_log): decaying states
        B=randn(batch, dstate, length).to(dtype),
        C=randn(batch, dstate, length).to(dtype),
    )
    if optional:
        inputs.update(D=randn(dim), z=randn(batch, dim, length).to(dtype), delta_bias=0.1 * randn(dim))
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def assert_close_to_scale(actual, expected, tolerance):
    scale = expected.float().abs().max().clamp_min(1e-6)
    error = (actual.float() - expected.float()).abs().max()
    assert error <= tolerance * scale, f"max |error| {error:.3g} > {tolerance:.2g} x output scale {scale:.3g}"


def merge_inputs(batch, tokens, channels, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, tokens, channels, generator=g).to(dtype)
    residual = torch.randn(batch, tokens, channels, generator=g)
    # Not integers: sums of sizes then round, and agree bit for bit only when added in the same order.
    size = 0.5 + 3 * torch.rand(batch, tokens, 1, generator=g)
    return hidden, residual, size


def decision_margin(hidden, cls_index, r):
    """Smallest gap, in float64, that decides the reference's matching: best vs second-best destination
    of every source, and the r-th vs (r+1)-th ranked source. Tie-free inputs have a clear margin."""
    free = torch.cat([hidden[:, :cls_index], hidden[:, cls_index + 1 :]], 1).double()
    metric = torch.nn.functional.normalize(free, dim=-1)
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)
    margin = float("inf")
    if scores.shape[-1] > 1:
        top2 = scores.topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min().item()
    best = scores.max(-1).values.sort(dim=-1, descending=True).values
    if 0 < r < best.shape[-1]:
        margin = min(margin, (best[:, r - 1] - best[:, r]).min().item())
    return margin


def tie_free_merge_inputs(batch, tokens, channels, dtype, r, cls_index):
    """merge_inputs of the first seed whose matching is decided by a clear margin (1e-5, about 100x the
    fp32 rounding of a cosine summed in another order), so kernel and reference cannot differ by a tie."""
    for seed in range(200):
        inputs = merge_inputs(batch, tokens, channels, dtype, seed)
        if decision_margin(inputs[0], cls_index, r) > 1e-5:
            return inputs
    raise AssertionError(f"no tie-free merge input among 200 seeds for {batch}x{tokens}x{channels}, r={r}")
