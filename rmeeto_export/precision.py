"""The precisions a build can target, written once: the CLI, the exporter and the engine builder read them."""

from __future__ import annotations

from rmeeto_export.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")
# INT8 graphs are the fp32 export with Q/DQ pairs inserted around the linear layers by calibration.
EXPORTED_PRECISIONS = ("fp32", "fp16")


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> None:
    if precision not in allowed:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(allowed)}")


def exported_precision(precision: str) -> str:
    """The precision the exporter writes for a build of ``precision``."""
    return "fp32" if precision == "int8" else precision
