"""The batch of a graph and engine: one fixed size ("8") or a serving range ("MIN:OPT:MAX", e.g. "1:8:64").

A range exports the graphs with a symbolic batch dimension and builds one TensorRT optimisation
profile (min, opt, max); every token count inside stays static. min == max is a fixed batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from rmeeto_export.errors import UserError

# The trace runs at this batch when the range allows it: batch 1 can let a trace treat the batch axis
# as a broadcastable 1, and a large batch only costs time (vim_b at 64 is minutes on a CPU).
TRACE_BATCH = 2


@dataclass(frozen=True)
class BatchRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        sizes = (self.min, self.opt, self.max)
        if any(isinstance(size, bool) or not isinstance(size, int) for size in sizes):
            raise UserError(f"batch sizes must be whole numbers, got {self}")
        if self.min < 1:
            raise UserError(f"batch sizes must be at least 1, got {self}")
        if not self.min <= self.opt <= self.max:
            raise UserError(f"batch range {self} needs MIN <= OPT <= MAX")

    @classmethod
    def fixed(cls, size: int) -> "BatchRange":
        return cls(size, size, size)

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    @property
    def trace_size(self) -> int:
        """The batch the exporter traces at; the graph's batch axis is symbolic when the range is dynamic."""
        return min(max(TRACE_BATCH, self.min), self.max)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}" if self.dynamic else str(self.min)


BatchSpec = Union[int, str, BatchRange, tuple, list, None]


def parse_batch(spec: BatchSpec) -> BatchRange:
    """BatchRange from N, "N", "MIN:OPT:MAX", (min, opt, max) or a BatchRange; None is batch 1.

    UserError with one line for anything else (0, negative, non-numbers, min > opt, two parts).
    """
    if spec is None:
        return BatchRange.fixed(1)
    if isinstance(spec, BatchRange):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        return BatchRange.fixed(spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 3:
        return BatchRange(*spec)
    parts = str(spec).strip().split(":")
    if len(parts) not in (1, 3) or not all(part.strip().isdigit() for part in parts):
        raise UserError(f"batch must be N or MIN:OPT:MAX with whole numbers (e.g. 8 or 1:8:64), got {spec!r}")
    sizes = [int(part) for part in parts]
    return BatchRange.fixed(sizes[0]) if len(sizes) == 1 else BatchRange(*sizes)


def parity_batch_sizes(batch: BatchRange, cap: int) -> tuple[int, ...]:
    """The batch sizes parity runs a graph at: MIN, OPT and MAX, each capped at `cap` (never below MIN).

    The cap keeps a CPU parity run short (vim_b at batch 64 is minutes in ONNX Runtime on a CPU); the
    sizes actually run are recorded in parity.json.
    """
    return tuple(sorted({max(batch.min, min(size, cap)) for size in (batch.min, batch.opt, batch.max)}))
