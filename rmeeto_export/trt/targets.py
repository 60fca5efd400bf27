"""GPU targets: compute capability names and which precisions each can run."""

from __future__ import annotations

import re
from typing import Optional

from rmeeto_export.errors import UserError
from rmeeto_export.precision import check_precision

ComputeCapability = tuple[int, int]

# Oldest architecture with tensor-core support for each of precision.PRECISIONS (Volta fp16,
# Turing int8). nvcc 13 and TensorRT-RTX start at Turing anyway.
_MIN_CC_FOR_PRECISION: dict[str, ComputeCapability] = {
    "fp32": (0, 0),
    "fp16": (7, 0),
    "int8": (7, 5),
}
# TensorRT-RTX builds ahead of time, also without a GPU (docs/tensorrt.md#tensorrt-rtx).
DEFAULT_RTX_TARGET: ComputeCapability = (8, 9)

_CC_PATTERN = re.compile(r"^(?:sm_?)?(\d+)(?:\.(\d))?$", re.IGNORECASE)


def parse_compute_capability(text: str) -> ComputeCapability:
    """Accepts "sm89", "SM89", "sm_89", "8.9", "89", "sm120", "12.0"."""
    match = _CC_PATTERN.match(text.strip())
    if match is None:
        raise UserError(f"target compute capability {text!r} not understood; write it as sm89, sm86, sm120 or 8.9")
    digits, minor = match.groups()
    if minor is not None:
        return int(digits), int(minor)
    if len(digits) < 2:
        raise UserError(f"target compute capability {text!r} not understood; write it as sm89, sm86, sm120 or 8.9")
    return int(digits[:-1]), int(digits[-1])


def sm_name(cc: ComputeCapability) -> str:
    return f"sm{cc[0]}{cc[1]}"


def check_precision_supported(precision: str, cc: ComputeCapability) -> None:
    """UserError when ``precision`` is unknown or the target architecture cannot run it."""
    check_precision(precision)
    needed = _MIN_CC_FOR_PRECISION[precision]
    if cc < needed:
        raise UserError(
            f"precision {precision} needs compute capability {needed[0]}.{needed[1]} or newer; "
            f"the target is {sm_name(cc)}: pick another precision or target"
        )


def rtx_compute_capability_enum(trt, cc: ComputeCapability):
    """TensorRT-RTX's ComputeCapability member for ``cc``, by name (values differ across releases)."""
    member = getattr(trt.ComputeCapability, f"SM{cc[0]}{cc[1]}", None)
    if member is None:
        available = sorted(
            name.lower() for name in trt.ComputeCapability.__members__ if name.startswith("SM")
        )
        raise UserError(
            f"TensorRT-RTX {trt.__version__} cannot build for {sm_name(cc)}; it builds for {', '.join(available)}"
        )
    return member


def current_gpu() -> Optional[tuple[str, ComputeCapability]]:
    """(name, compute capability) of the current CUDA device, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))
