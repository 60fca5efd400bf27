"""The project's custom ops as torch.library ops in the ``rmeeto`` namespace.

Each op has one PyTorch reference implementation that is the oracle for the ONNX function
bodies and the CUDA kernels (docs/ops.md; each op's contract: rmeeto_export.contracts). Fake implementations give static shapes
for export; autograd is the vector-Jacobian product of the same reference, recomputed in
backward, so re-training works on any device without a hand-written backward.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rmeeto_export import native
from rmeeto_export.contracts import SELECTIVE_SCAN, TOKEN_MERGE
from rmeeto_export.errors import UserError

try:  # mamba-ssm's fused CUDA kernels (forward and backward), only on CUDA machines.
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan
except Exception:  # noqa: BLE001 - its import fails in many ways without CUDA extensions
    _mamba_selective_scan = None

# "native": the CPU kernels of plugins_trt/cpu (rmeeto_export.native) for CPU tensors in eager
# inference, for the scan and the merge; traced/exported models and autograd still go through the ops.
# "auto" takes them when they are built and the reference ops otherwise.
SCAN_BACKENDS = ("auto", "reference", "mamba_ssm", "native")


# Set by native_values_while_tracing (export's trace); read by the scan op's CPU implementation.
_native_scan_values = contextvars.ContextVar("rmeeto_native_scan_values", default=False)


@contextlib.contextmanager
def native_values_while_tracing() -> Iterator[None]:
    """Within it the scan op computes its outputs on the native CPU kernels, where they are built.

    For export only: a trace records the op call, not how its output was computed, so the graph is
    the same byte for byte; and the reference scan, step by step, is what tracing a model spends most on.
    """
    token = _native_scan_values.set(True)
    try:
        yield
    finally:
        _native_scan_values.reset(token)


SCAN_CHUNK = 16  # steps whose (l, b, d, n) intermediates are built at once: they stay in cache


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = SELECTIVE_SCAN.defaults["delta_softplus"],
    reverse: bool = SELECTIVE_SCAN.defaults["reverse"],
) -> Tensor:
    """Selective scan, channel-major: u, delta, z (b, d, l); B, C (b, n, l); A (d, n).

    Vectorised over batch, channels and state; the only loop is the recurrence
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t over time, walked in chunks of SCAN_CHUNK
    steps so that the discretised tensors of a chunk fit in cache. Math is fp32, or fp64 for
    fp64 inputs; the result has u's dtype.
    """
    compute = torch.promote_types(u.dtype, torch.float32)
    u_c = u.to(compute)
    dt = delta.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A_c, C_c = A.to(compute), C.to(compute)
    # Time-major, so that each step is one contiguous (b, d, n) slice.
    dt_by_step = dt.permute(2, 0, 1).unsqueeze(-1)  # (l, b, d, 1)
    dtu_by_step = (dt * u_c).permute(2, 0, 1).unsqueeze(-1)  # (l, b, d, 1)
    B_by_step = B.to(compute).permute(2, 0, 1).unsqueeze(2)  # (l, b, 1, n)

    length = u.shape[-1]
    chunk_starts = list(range(0, length, SCAN_CHUNK))
    h = u_c.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    y_chunks: list[Tensor] = [u_c] * len(chunk_starts)
    for index in reversed(range(len(chunk_starts))) if reverse else range(len(chunk_starts)):
        steps = slice(chunk_starts[index], min(chunk_starts[index] + SCAN_CHUNK, length))
        dA = torch.exp(dt_by_step[steps] * A_c).unbind(0)
        dBu = (dtu_by_step[steps] * B_by_step[steps]).unbind(0)
        order = range(len(dA) - 1, -1, -1) if reverse else range(len(dA))
        states = [h] * len(dA)
        for t in order:
            h = torch.addcmul(dBu[t], dA[t], h)
            states[t] = h
        y_chunks[index] = torch.einsum("lbdn,bnl->bdl", torch.stack(states), C_c[:, :, steps])
    y = torch.cat(y_chunks, dim=-1)
    if D is not None:
        y = y + D.to(compute)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(u.dtype).contiguous()


def _token_merge_reference(hidden: Tensor, residual: Tensor, size: Tensor, r: int, cls_index: int):
    from rmeeto_export.merge.rmeeto import merge_tokens  # merge imports nothing from models

    merged_hidden, merged_residual, merged_size, _ = merge_tokens(hidden, residual, size, r, cls_index)
    return merged_hidden, merged_residual, merged_size


@torch.library.custom_op(SELECTIVE_SCAN.torch_op, mutates_args=())
def _selective_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    z: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    reverse: bool,
) -> Tensor:
    if _native_scan_values.get() and native.supports(u, delta, A, B, C, D, z, delta_bias):
        return native.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    return u.new_empty(u.shape)


@torch.library.custom_op(TOKEN_MERGE.torch_op, mutates_args=())
def _token_merge_op(hidden: Tensor, residual: Tensor, size: Tensor, r: int, cls_index: int) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(t.clone() if r == 0 else t for t in _token_merge_reference(hidden, residual, size, r, cls_index))


@_token_merge_op.register_fake
def _(hidden, residual, size, r, cls_index):
    batch, tokens, _ = hidden.shape
    kept = tokens - r
    return (
        hidden.new_empty(batch, kept, hidden.shape[-1]),
        residual.new_empty(batch, kept, residual.shape[-1]),
        size.new_empty(batch, kept, 1),
    )


def _register_autograd_by_recompute(op, reference: Callable, num_tensor_args: int) -> None:
    """Backward = the VJP of ``reference``, re-run under autograd on the saved inputs."""

    def setup_context(ctx, inputs, output):
        ctx.tensor_inputs = inputs[:num_tensor_args]
        ctx.other_inputs = inputs[num_tensor_args:]

    def backward(ctx, *grad_outputs):
        with torch.enable_grad():
            leaves = [
                t.detach().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t
                for t in ctx.tensor_inputs
            ]
            outputs = reference(*leaves, *ctx.other_inputs)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            wanted = [t for t in leaves if isinstance(t, Tensor) and t.requires_grad]
            pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
            grads = torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
            ) if wanted and pairs else [None] * len(wanted)
        grads_by_leaf = iter(grads)
        tensor_grads = [
            next(grads_by_leaf) if isinstance(t, Tensor) and t.requires_grad else None for t in leaves
        ]
        return (*tensor_grads, *([None] * len(ctx.other_inputs)))

    op.register_autograd(backward, setup_context=setup_context)


_register_autograd_by_recompute(_selective_scan_op, selective_scan_reference, num_tensor_args=len(SELECTIVE_SCAN.inputs))
_register_autograd_by_recompute(_token_merge_op, _token_merge_reference, num_tensor_args=len(TOKEN_MERGE.inputs))


def _mamba_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    if not reverse:
        return _mamba_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    flip = lambda t: None if t is None else t.flip(-1)  # noqa: E731
    return _mamba_selective_scan(
        flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias, delta_softplus
    ).flip(-1)


def check_scan_backend(backend: str) -> None:
    if backend not in SCAN_BACKENDS:
        raise UserError(f"unknown scan backend {backend!r}; choose one of {', '.join(SCAN_BACKENDS)}")


def _use_native(backend: str, *tensors: Optional[Tensor]) -> bool:
    """Whether `backend` ("auto" or "native") runs these tensors on the native kernels: eager CPU
    inference only, since a trace must record the op (export) and autograd needs the op's VJP.
    "native" without the library is a UserError; "auto" then takes the reference."""
    if backend not in ("auto", "native") or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if any(t.device.type != "cpu" for t in tensors if t is not None):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    if backend == "native" and not native.available():
        raise UserError(f"backend 'native' needs {native.CPU_KERNELS_LIBRARY}: build it with {native.BUILD_HINT}")
    return native.supports(*tensors)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = SELECTIVE_SCAN.defaults["delta_softplus"],
    reverse: bool = SELECTIVE_SCAN.defaults["reverse"],
    backend: str = "auto",
) -> Tensor:
    """y = selective scan (docs/ops.md#selectivescan); ``reverse`` scans from the last step to the first.

    backend "auto" uses mamba-ssm's fused kernels for CUDA tensors when they are installed and
    the ``rmeeto::selective_scan`` op otherwise (the reference, or whatever CUDA kernel is
    registered for the op, see rmeeto_export.kernels), except that for CPU tensors it takes the
    native CPU kernels when they are built. "reference" always uses the op; "native" the native
    kernels where _use_native allows.
    """
    check_scan_backend(backend)
    use_mamba = backend == "mamba_ssm" or (backend == "auto" and u.is_cuda and _mamba_selective_scan is not None)
    if use_mamba:
        if _mamba_selective_scan is None:
            raise RuntimeError("scan backend 'mamba_ssm' requested but mamba_ssm's CUDA kernels are not importable")
        return _mamba_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    if _use_native(backend, u, delta, A, B, C, D, z, delta_bias):
        return native.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return torch.ops.rmeeto.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def token_merge(
    hidden: Tensor, residual: Tensor, size: Tensor, r: int, cls_index: int, backend: str = "auto"
) -> tuple[Tensor, Tensor, Tensor]:
    """One R-MeeTo merge step as the ``rmeeto::token_merge`` op: T tokens in, T - r out; backends
    "auto" and "native" run the native CPU kernel where _use_native allows."""
    if _use_native(backend, hidden, residual, size):
        return native.token_merge(hidden, residual, size, r, cls_index)
    return torch.ops.rmeeto.token_merge(hidden, residual, size, r, cls_index)
