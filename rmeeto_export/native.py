"""The native CPU ops (plugins_trt/cpu): a ctypes binding on CPU torch tensors, and where the ONNX
Runtime custom-op library is.

Both libraries are built (CMake, no CUDA) by `make native` in a source checkout, into build/native/,
and by `rmeeto-export native build` (native_build) for an installed package, into the per-user cache
entry of these sources, $XDG_CACHE_HOME/rmeeto-export/native/<machine>_src<digest>/. They are looked up
in $RMEETO_NATIVE_DIR (alone, when set), build/native/ of the working directory and of the source
checkout, then that cache entry. Without them everything still runs: the torch ops use the PyTorch
references and ONNX Runtime the graphs' function bodies.

The scan is compiled once per instruction set (SCAN_VARIANTS) and runs the widest this CPU has;
$RMEETO_CPU_SCAN_VARIANT, read once per process, or use_scan_variant forces one.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from rmeeto_export.cmake_build import plugin_sources, sources_digest
from rmeeto_export.contracts import SELECTIVE_SCAN
from rmeeto_export.errors import UserError
from rmeeto_export.kernel_operands import KERNEL_DTYPES, merge_operands, pointer, scan_operands

DIR_ENV_VAR = "RMEETO_NATIVE_DIR"
CPU_KERNELS_LIBRARY = "librmeeto_cpu_kernels.so"
ORT_OPS_LIBRARY = "librmeeto_ort_ops.so"
BUILD_SUBDIR = Path("build") / "native"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent
SCAN_VARIANT_ENV_VAR = "RMEETO_CPU_SCAN_VARIANT"
SCAN_VARIANTS = ("avx512", "avx2", "baseline")  # rmeeto_cpu_kernels.h's names, widest first
# What plugins_trt/cpu compiles: its own files and the shared kernel headers (rmeeto_types.h, rmeeto_kernels.h).
SOURCE_PATTERNS = ("cpu/**/*", "kernels/*.h")
BUILD_HINT = "`rmeeto-export native build`, or `make native` in a source checkout"
ABSENT_NOTE = f"native ops not built ({BUILD_HINT}; or set {DIR_ENV_VAR}): using the function bodies"

# Values of rmeeto_status_t in plugins_trt/kernels/rmeeto_types.h.
_STATUS_INVALID_ARGUMENT, _STATUS_UNSUPPORTED = 1, 2


class _Threads(ctypes.Structure):
    """rmeeto_cpu_threads_t with parallel_for NULL: num_threads std::threads."""

    _fields_ = [("num_threads", ctypes.c_int32), ("parallel_for", ctypes.c_void_p), ("pool", ctypes.c_void_p)]


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rmeeto-export" / "native"


@functools.cache
def _sources_digest() -> str:
    return sources_digest(plugin_sources(), SOURCE_PATTERNS)


def cache_entry() -> Path:
    """The cache folder of a build of these sources on this machine: a library built from other sources
    (an older rmeeto-export) is never loaded with this version's argument lists."""
    return user_cache_dir() / f"{platform.machine()}_src{_sources_digest()[:12]}"


def library_dirs() -> list[Path]:
    """Folders searched, in order."""
    explicit = os.environ.get(DIR_ENV_VAR)
    if explicit:
        return [Path(explicit)]
    return list(dict.fromkeys([Path.cwd() / BUILD_SUBDIR, _SOURCE_ROOT / BUILD_SUBDIR, cache_entry()]))


def find_library(name: str) -> Optional[Path]:
    return next((d / name for d in library_dirs() if (d / name).is_file()), None)


def ort_ops_library() -> Optional[Path]:
    """librmeeto_ort_ops.so for SessionOptions.register_custom_ops_library, or None when not built."""
    return find_library(ORT_OPS_LIBRARY)


@functools.cache
def _load() -> Optional[ctypes.CDLL]:
    path = find_library(CPU_KERNELS_LIBRARY)
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise UserError(f"cannot load {path}: {error}; rebuild it with {BUILD_HINT}") from error
    i32, ptr = ctypes.c_int32, ctypes.c_void_p
    threads = ctypes.POINTER(_Threads)
    lib.rmeeto_cpu_selective_scan_fwd.argtypes = [i32] * 5 + [ptr] * 8 + [i32, i32, ptr, threads]
    lib.rmeeto_cpu_token_merge.argtypes = [i32] * 6 + [ptr] * 6 + [threads]
    lib.rmeeto_cpu_scan_variant.argtypes, lib.rmeeto_cpu_scan_variant.restype = [], ctypes.c_char_p
    lib.rmeeto_cpu_use_scan_variant.argtypes = [ctypes.c_char_p]
    lib.rmeeto_cpu_selective_scan_fwd.restype = lib.rmeeto_cpu_token_merge.restype = i32
    lib.rmeeto_cpu_use_scan_variant.restype = i32
    return lib


def available() -> bool:
    """Whether the CPU kernels library is built and loads."""
    return _load() is not None


def _library() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        tried = ", ".join(str(d) for d in library_dirs())
        raise UserError(f"{CPU_KERNELS_LIBRARY} not found (tried {tried}); build it with {BUILD_HINT}")
    return lib


def _use_scan_variant(lib: ctypes.CDLL, name: Optional[str], source: str) -> None:
    status = lib.rmeeto_cpu_use_scan_variant(None if name is None else name.encode())
    if status == _STATUS_INVALID_ARGUMENT:
        raise UserError(f"{source}: unknown CPU scan variant; the variants are {', '.join(SCAN_VARIANTS)}")
    if status == _STATUS_UNSUPPORTED:
        raise UserError(f"{source}: this CPU (or this build of {CPU_KERNELS_LIBRARY}) lacks that scan variant")
    _check(status, "rmeeto_cpu_use_scan_variant")


def scan_variant() -> str:
    """The instruction-set variant native scans run: $RMEETO_CPU_SCAN_VARIANT's, else the widest this CPU has."""
    lib = _library()
    name = lib.rmeeto_cpu_scan_variant()
    if name is None:  # the library refused the variable's variant: trying it again says why
        requested = os.environ.get(SCAN_VARIANT_ENV_VAR, "")
        _use_scan_variant(lib, requested, f"{SCAN_VARIANT_ENV_VAR}={requested}")
        name = lib.rmeeto_cpu_scan_variant()
    return name.decode()


def use_scan_variant(name: Optional[str]) -> None:
    """Runs later native scans of this process on variant `name` (one of SCAN_VARIANTS; None: the widest
    this CPU has). UserError when the name is unknown or this CPU lacks the variant."""
    _use_scan_variant(_library(), name, f"scan variant {name!r}")


def _threads(num_threads: Optional[int]) -> _Threads:
    return _Threads(num_threads if num_threads is not None else torch.get_num_threads(), None, None)



def _check(status: int, what: str) -> None:
    if status != 0:  # inputs are validated before the call: a status here is a bug
        raise RuntimeError(f"{what} returned status {status} (plugins_trt/kernels/rmeeto_types.h)")


def supports(*tensors: Optional[Tensor]) -> bool:
    """Whether the native kernels take these tensors: CPU, fp32/fp16/bf16, library built."""
    return available() and all(t is None or (t.device.type == "cpu" and t.dtype in KERNEL_DTYPES) for t in tensors)


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
    num_threads: Optional[int] = None,
) -> Tensor:
    """models.ops.selective_scan_reference on CPU tensors, natively; torch's thread count by default.

    Shapes are the reference's (checked by the caller, models.ops); mixed activation dtypes run in fp32.
    """
    lib = _library()
    batch, dim, length = u.shape
    operands = scan_operands(u, delta, A, B, C, D, z, delta_bias)
    if operands.out.numel():
        status = lib.rmeeto_cpu_selective_scan_fwd(
            operands.dtype, batch, dim, B.shape[1], length, *operands.input_pointers(),
            int(delta_softplus), int(reverse), pointer(operands.out), ctypes.byref(_threads(num_threads)),
        )  # fmt: skip
        if status != 0:
            scan_variant()  # a wrong $RMEETO_CPU_SCAN_VARIANT is the user's error, said as such
        _check(status, "rmeeto_cpu_selective_scan_fwd")
    return operands.out.to(u.dtype)


def token_merge(
    hidden: Tensor, residual: Tensor, size: Tensor, r: int, cls_index: int, num_threads: Optional[int] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """merge.rmeeto.merge_tokens (without new_cls) on CPU tensors, natively; r == 0 returns copies."""
    from rmeeto_export.merge.rmeeto import _check_inputs  # the reference's own checks and messages

    _check_inputs(hidden, residual, size, r, cls_index)
    lib = _library()
    batch, tokens, channels = hidden.shape
    inputs, outputs = merge_operands(hidden, residual, size, r)
    if hidden.numel():
        status = lib.rmeeto_cpu_token_merge(
            KERNEL_DTYPES[hidden.dtype], batch, tokens, channels, r, cls_index,
            *(pointer(t) for t in (*inputs, *outputs)), ctypes.byref(_threads(num_threads)),
        )  # fmt: skip
        _check(status, "rmeeto_cpu_token_merge")
    return outputs
