"""ctypes binding of librmeeto_kernels.so: the project's CUDA kernels on CUDA torch tensors.

The same kernels run inside the TensorRT plugins (plugins_trt/), so testing them here against the
PyTorch references tests the plugins' numerics too. Launches go on the tensors' current CUDA stream
and never synchronise with the host; scratch memory comes from PyTorch's caching allocator.

A library built for the emulated device (``make kernels-emulated``; ``emulated()`` says which one is
loaded) runs the same kernels on the CPU: it takes CPU tensors, and each call returns when done.

``register_cuda_kernels()`` makes these the CUDA implementations of the ``rmeeto::selective_scan``
and ``rmeeto::token_merge`` ops, so the model runs on a GPU with them (the "kernels" backend).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from rmeeto_export.contracts import SELECTIVE_SCAN, TOKEN_MERGE
from rmeeto_export.errors import UserError
from rmeeto_export.kernel_operands import KERNEL_DTYPES, merge_operands, pointer, scan_operands
from rmeeto_export.libraries import library_candidates as _candidates

LIBRARY_ENV_VAR = "RMEETO_KERNELS_LIB"
LIBRARY_NAME = "librmeeto_kernels.so"


def library_candidates() -> list[Path]:
    """Where the library is looked for, in order: $RMEETO_KERNELS_LIB, else build/plugins_trt/."""
    return _candidates(LIBRARY_NAME, LIBRARY_ENV_VAR)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i32, ptr, size_t = ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t
    signatures = {
        "rmeeto_status_string": ([i32], ctypes.c_char_p),
        "rmeeto_kernels_emulated": ([], ctypes.c_int),
        "rmeeto_selective_scan_supports_dstate": ([i32], ctypes.c_int),
        "rmeeto_selective_scan_fwd": ([i32] * 5 + [ptr] * 8 + [i32, i32, ptr, ptr], i32),
        "rmeeto_token_merge_max_r": ([i32], i32),
        "rmeeto_token_merge_workspace_size": ([i32, i32, i32], size_t),
        "rmeeto_token_merge": ([i32] * 6 + [ptr] * 7 + [size_t, ptr], i32),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


@functools.cache
def load_library() -> ctypes.CDLL:
    """The loaded kernels library; UserError naming the paths tried when there is none."""
    candidates = library_candidates()
    for path in candidates:
        if path.is_file():
            try:
                return _declare(ctypes.CDLL(str(path)))
            except (OSError, AttributeError) as error:
                raise UserError(f"cannot load {path}: {error}; rebuild it with `make plugins`") from error
    tried = ", ".join(str(path) for path in candidates)
    raise UserError(
        f"{LIBRARY_NAME} not found (tried {tried}); build it with `make plugins` "
        f"or point {LIBRARY_ENV_VAR} at the file"
    )


def _check_status(status: int, what: str) -> None:
    if status != 0:
        message = load_library().rmeeto_status_string(status).decode()
        raise RuntimeError(f"{what} failed: {message}")


def emulated() -> bool:
    """Whether the loaded library is built for the emulated device (CPU tensors) instead of CUDA."""
    return bool(load_library().rmeeto_kernels_emulated())


def _stream(device: torch.device) -> Optional[int]:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _require_device(device: torch.device, tensors: dict[str, Optional[Tensor]]) -> None:
    """All tensors on `device`, which must be what the library runs on: CUDA, or the CPU when emulated."""
    if emulated():
        if device.type != "cpu":
            raise UserError(f"the emulated CUDA kernels need CPU tensors, got {device}")
    elif device.type != "cuda":
        raise UserError(f"the CUDA kernels need CUDA tensors, got {device}")
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != device:
            raise UserError(f"{name} is on {tensor.device}, expected {device} like the other inputs")


def _require_shape(name: str, tensor: Optional[Tensor], shape: tuple[int, ...]) -> None:
    if tensor is not None and tuple(tensor.shape) != shape:
        raise UserError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def selective_scan_supported(u: Tensor, B: Tensor) -> bool:
    """Whether the compiled kernels cover these inputs (dtype and d_state)."""
    return (
        u.dim() == 3
        and B.dim() == 3
        and u.dtype in KERNEL_DTYPES
        and bool(load_library().rmeeto_selective_scan_supports_dstate(B.shape[1]))
    )


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
) -> Tensor:
    """Selective scan forward on the GPU (or the emulated device); same semantics as models.ops.selective_scan_reference.

    u, delta, z (b, d, l); B, C (b, n, l); A (d, n); D, delta_bias (d,). Activations of mixed dtypes
    run in fp32 (the reference's math dtype); the result has u's dtype.
    """
    if u.dim() != 3 or B.dim() != 3:
        raise UserError(f"u and B must be 3-D (batch, channels|states, length), got {tuple(u.shape)}, {tuple(B.shape)}")
    batch, dim, length = u.shape
    dstate = B.shape[1]
    for name, tensor, shape in (
        ("delta", delta, (batch, dim, length)),
        ("z", z, (batch, dim, length)),
        ("B", B, (batch, dstate, length)),
        ("C", C, (batch, dstate, length)),
        ("A", A, (dim, dstate)),
        ("D", D, (dim,)),
        ("delta_bias", delta_bias, (dim,)),
    ):
        _require_shape(name, tensor, shape)
    _require_device(u.device, {"delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    if u.dtype not in KERNEL_DTYPES:
        raise UserError(f"selective_scan kernel supports float32/float16/bfloat16 activations, got {u.dtype}")
    lib = load_library()
    if not lib.rmeeto_selective_scan_supports_dstate(dstate):
        raise UserError(f"selective_scan kernel is compiled for d_state 8, 16, 32, 64, got {dstate}")
    if u.numel() == 0:
        return torch.empty_like(u)

    operands = scan_operands(u, delta, A, B, C, D, z, delta_bias)
    with _on(u.device):
        status = lib.rmeeto_selective_scan_fwd(
            operands.dtype, batch, dim, dstate, length, *operands.input_pointers(),
            int(delta_softplus), int(reverse), pointer(operands.out), _stream(u.device),
        )  # fmt: skip
    _check_status(status, "rmeeto_selective_scan_fwd")
    return operands.out.to(u.dtype)


def token_merge(hidden: Tensor, residual: Tensor, size: Tensor, r: int, cls_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """One R-MeeTo merge step on the GPU (or the emulated device); same semantics as merge.rmeeto.merge_tokens (without new_cls)."""
    if hidden.dim() != 3:
        raise UserError(f"hidden must be (batch, tokens, channels), got shape {tuple(hidden.shape)}")
    batch, tokens, channels = hidden.shape
    _require_shape("residual", residual, (batch, tokens, channels))
    _require_shape("size", size, (batch, tokens, 1))
    _require_device(hidden.device, {"residual": residual, "size": size})
    if hidden.dtype not in KERNEL_DTYPES:
        raise UserError(f"token_merge kernel supports float32/float16/bfloat16 hidden, got {hidden.dtype}")
    if not 0 <= cls_index < tokens:
        raise UserError(f"cls_index {cls_index} is outside the {tokens} tokens")
    lib = load_library()
    max_r = lib.rmeeto_token_merge_max_r(tokens)
    if not 0 <= r <= max_r:
        raise UserError(f"r={r} is impossible for {tokens} tokens: one step can remove 0 to {max_r}")
    if r == 0 or hidden.numel() == 0:  # the op's contract for r == 0: fresh copies, bit-identical
        return hidden.clone(), residual.clone(), size.clone()

    inputs, outputs = merge_operands(hidden, residual, size, r)
    workspace_bytes = lib.rmeeto_token_merge_workspace_size(batch, tokens, r)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=hidden.device)
    with _on(hidden.device):
        status = lib.rmeeto_token_merge(
            KERNEL_DTYPES[hidden.dtype], batch, tokens, channels, r, cls_index,
            *(pointer(t) for t in (*inputs, *outputs)), pointer(workspace), workspace_bytes, _stream(hidden.device),
        )  # fmt: skip
    _check_status(status, "rmeeto_token_merge")
    return outputs


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    if not selective_scan_supported(u, B):  # e.g. fp64 or an uncompiled d_state: keep the op total
        from rmeeto_export.models.ops import selective_scan_reference

        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def _token_merge_cuda(hidden, residual, size, r, cls_index):
    if hidden.dtype in KERNEL_DTYPES:
        return token_merge(hidden, residual, size, r, cls_index)
    from rmeeto_export.merge.rmeeto import merge_tokens

    # An op's outputs must never alias its inputs, which merge_tokens returns as-is for r == 0.
    return tuple(t.clone() for t in merge_tokens(hidden, residual, size, r, cls_index)[:3])


@functools.cache
def register_cuda_kernels() -> None:
    """Make the CUDA kernels the "cuda" implementations of rmeeto::selective_scan and rmeeto::token_merge.

    Idempotent. Raises UserError when the library is missing, so a requested GPU backend never
    falls back to the slow reference silently.
    """
    import rmeeto_export.models.ops  # noqa: F401 - defines the ops being extended

    load_library()
    torch.library.register_kernel(SELECTIVE_SCAN.torch_op, "cuda", _selective_scan_cuda)
    torch.library.register_kernel(TOKEN_MERGE.torch_op, "cuda", _token_merge_cuda)
