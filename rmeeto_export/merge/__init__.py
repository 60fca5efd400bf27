"""R-MeeTo token merging: the frozen schedule (ratio <-> r, static token counts) and the merge itself."""

from rmeeto_export.merge.rmeeto import merge_tokens, prune_tokens
from rmeeto_export.merge.schedule import (
    SCHEMA_VERSION,
    MergeSchedule,
    effective_ratio,
    r_from_ratio,
    schedule_from_r,
    schedule_from_ratio,
)

__all__ = [
    "SCHEMA_VERSION",
    "MergeSchedule",
    "effective_ratio",
    "merge_tokens",
    "prune_tokens",
    "r_from_ratio",
    "schedule_from_r",
    "schedule_from_ratio",
]
