"""Torch tensors as the operands of our C kernels, for both bindings: rmeeto_export.kernels (CUDA and the
emulated device) and rmeeto_export.native (CPU). Their C APIs take the same argument lists in the same
order (plugins_trt/kernels/rmeeto_kernels.h, plugins_trt/cpu/rmeeto_cpu_kernels.h)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

# Values of rmeeto_dtype_t in plugins_trt/kernels/rmeeto_types.h.
KERNEL_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def pointer(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


@dataclass(frozen=True)
class ScanOperands:
    dtype: int  # rmeeto_dtype_t of the activations
    inputs: tuple[Optional[Tensor], ...]  # u, delta, A, B, C, D, z, delta_bias, contiguous; None where absent
    out: Tensor  # y in the activations' dtype: `.to(u.dtype)` gives the op's result

    def input_pointers(self) -> list[Optional[int]]:
        return [pointer(tensor) for tensor in self.inputs]


def scan_operands(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  z: Optional[Tensor], delta_bias: Optional[Tensor]) -> ScanOperands:
    """Activations of mixed dtypes run in fp32 (the reference's math dtype); A, D and delta_bias are fp32."""
    activations = [u, delta, B, C] + ([z] if z is not None else [])
    act_dtype = u.dtype if all(t.dtype == u.dtype for t in activations) else torch.float32
    act = lambda t: None if t is None else t.to(act_dtype).contiguous()  # noqa: E731
    fp32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    u_c = act(u)
    inputs = (u_c, act(delta), fp32(A), act(B), act(C), fp32(D), act(z), fp32(delta_bias))
    return ScanOperands(KERNEL_DTYPES[act_dtype], inputs, torch.empty_like(u_c))


def merge_operands(hidden: Tensor, residual: Tensor, size: Tensor, r: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """((hidden, residual, size) contiguous, residual and size fp32; the three outputs, tokens - r long)."""
    batch, tokens, channels = hidden.shape
    inputs = (hidden.contiguous(), residual.float().contiguous(), size.float().contiguous())
    outputs = (
        hidden.new_empty(batch, tokens - r, channels),
        inputs[1].new_empty(batch, tokens - r, channels),
        inputs[2].new_empty(batch, tokens - r, 1),
    )
    return inputs, outputs
