"""The frozen R-MeeTo merge schedule: which blocks merge, how many tokens and where the class token is.

R-MeeTo merges r tokens at the start of every second block except block 0 (blocks 2, 4, ..., 22 for
depth 24). Everything downstream of the ratio is integer arithmetic on shapes, so the whole schedule
is known before any image is seen; that is what lets the merge export with static shapes.

Difference from the official R-MeeTo code, on purpose: its last merge (block depth - 2) forces the
sequence to 197 - 11 * 11 = 76 tokens whatever r is, i.e. it merges a different number of tokens in
that one block (and only gives the paper's token count when r = 11). Here every merge step removes the
same r tokens, so token counts follow the closed form num_tokens - r * floor(l / 2) in every block l.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from rmeeto_export.errors import UserError

SCHEMA_VERSION = 1
MERGE_INTERVAL = 2


def merge_blocks(depth: int, r: int) -> tuple[int, ...]:
    """Blocks that merge at their start; none when r == 0 (no merging)."""
    if r == 0:
        return ()
    return tuple(block for block in range(MERGE_INTERVAL, depth, MERGE_INTERVAL))


def merges_before(block: int) -> int:
    """Merge steps done up to and including the start of `block` (floor(block / 2))."""
    return block // MERGE_INTERVAL


def tokens_per_block(depth: int, num_tokens: int, r: int) -> tuple[int, ...]:
    """Tokens each block's mixer sees (after the merge at its start, if any), class token included."""
    return tuple(num_tokens - r * merges_before(block) for block in range(depth))


def merged_cls_index(cls_index: int, num_tokens: int, r: int) -> int:
    """Where the class token goes when a sequence of `num_tokens` (class token included) loses r tokens."""
    return (cls_index * (num_tokens - r)) // num_tokens


def cls_index_per_block(depth: int, num_tokens: int, cls_index: int, r: int) -> tuple[int, ...]:
    """Class-token index in every block, applying merged_cls_index at each merge block."""
    tokens = tokens_per_block(depth, num_tokens, r)
    blocks_that_merge = set(merge_blocks(depth, r))
    indices = [cls_index]
    for block in range(1, depth):
        previous = indices[-1]
        indices.append(merged_cls_index(previous, tokens[block - 1], r) if block in blocks_that_merge else previous)
    return tuple(indices)


def token_layers_per_r(depth: int) -> int:
    """sum_l floor(l / 2): token-layers one unit of r removes over the whole network (132 for depth 24)."""
    return sum(merges_before(block) for block in range(depth))


def effective_ratio(depth: int, num_tokens: int, r: int) -> float:
    """Fraction of token-layer work removed: r * sum_l floor(l / 2) / (depth * num_tokens)."""
    return r * token_layers_per_r(depth) / (depth * num_tokens)


def r_from_ratio(depth: int, num_tokens: int, ratio: float) -> int:
    """Per-step r whose effective ratio is nearest to `ratio` (halves round up); 0 when ratio is 0."""
    if ratio == 0:
        return 0
    return math.floor(ratio * depth * num_tokens / token_layers_per_r(depth) + 0.5)


def sources_per_step(num_tokens: int) -> int:
    """Sources of one bipartite step: the even positions of the class-free sequence, ceil((t - 1) / 2)."""
    return num_tokens // 2


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_shape_arguments(depth: int, num_tokens: int, cls_index: int) -> None:
    if not _is_int(depth) or depth < 1:
        raise UserError(f"depth must be a positive integer, got {depth!r}")
    if not _is_int(num_tokens) or num_tokens < 2:
        raise UserError(f"num_tokens must be an integer >= 2 (class token included), got {num_tokens!r}")
    if not _is_int(cls_index) or not 0 <= cls_index < num_tokens:
        raise UserError(f"cls_index must be an integer in [0, {num_tokens}), got {cls_index!r}")


def _check_r(depth: int, num_tokens: int, r: int) -> None:
    """r must be merge-able at every step, the last (shortest) one included."""
    if not _is_int(r) or r < 0:
        raise UserError(f"r must be a non-negative integer (tokens merged per step), got {r!r}")
    steps = len(merge_blocks(depth, r))
    if r > 0 and steps == 0:
        raise UserError(f"depth {depth} has no merge block (merging starts at block {MERGE_INTERVAL}); r must be 0")
    if r == 0:
        return
    tokens_left = num_tokens - r * steps
    if tokens_left < 2:
        raise UserError(
            f"r={r} over {steps} merge steps would leave {tokens_left} of {num_tokens} tokens; at least 2 must remain"
        )
    tokens_at_last_step = num_tokens - r * (steps - 1)
    sources = sources_per_step(tokens_at_last_step)
    if r > sources:
        raise UserError(
            f"r={r} is more than one bipartite step can merge at the last merge step "
            f"({tokens_at_last_step} tokens, {sources} sources)"
        )


def check_one_way(given: dict[str, Any]) -> None:
    """UserError when more than one way of choosing the schedule is given (a value other than None).

    `given` maps each way to its value under the caller's name for it: --ratio and --r on the command
    line, merge_ratio, merge_r and schedule in Python.
    """
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) > 1:
        names = list(given)
        raise UserError(f"give only one of {', '.join(names[:-1])} and {names[-1]} (got {' and '.join(chosen)})")


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise UserError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if ratio < 0:
        raise UserError(f"ratio must not be negative, got {ratio}")
    if ratio >= 1:
        raise UserError(f"ratio must be below 1 (the fraction of token-layer work removed), got {ratio}")


@dataclass(frozen=True)
class MergeSchedule:
    """A complete, self-consistent merge schedule; construction rejects any inconsistent field.

    Build it with schedule_from_ratio / schedule_from_r (or from_json); the derived fields are stored
    so that schedule.json says everything the model, the exporter and the report need.
    """

    depth: int
    num_tokens: int
    cls_index: int
    r: int
    ratio_requested: float | None
    effective_ratio: float
    merge_blocks: tuple[int, ...]
    tokens_per_block: tuple[int, ...]
    cls_index_per_block: tuple[int, ...]

    method = "merge"  # a class attribute, not a field: the JSON format stays as it is

    def __post_init__(self) -> None:
        _check_shape_arguments(self.depth, self.num_tokens, self.cls_index)
        _check_r(self.depth, self.num_tokens, self.r)
        if self.ratio_requested is not None:
            _check_ratio(self.ratio_requested)
            expected_r = r_from_ratio(self.depth, self.num_tokens, self.ratio_requested)
            if expected_r != self.r:
                raise UserError(f"r={self.r} does not match ratio {self.ratio_requested} (which gives r={expected_r})")
        expected = _derived_fields(self.depth, self.num_tokens, self.cls_index, self.r)
        for name, value in expected.items():
            if getattr(self, name) != value:
                raise UserError(f"merge schedule field {name} is {getattr(self, name)!r}, expected {value!r}")

    @property
    def reduces(self) -> bool:
        return self.r > 0

    def summary(self) -> str:
        """One line for logs and reports."""
        if not self.r:
            return "no merging"
        return f"merge r={self.r} at blocks {', '.join(map(str, self.merge_blocks))}"

    def to_json(self) -> str:
        """Serialise to a JSON string carrying schema_version."""
        return json.dumps({"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> MergeSchedule:
        """Parse to_json's output; any wrong version, missing, extra or inconsistent field is a UserError."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as error:
            raise UserError(f"merge schedule is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise UserError("merge schedule JSON must be an object")
        version = data.pop("schema_version", None)
        if version != SCHEMA_VERSION:
            raise UserError(f"merge schedule schema_version is {version!r}, this tool reads {SCHEMA_VERSION}")
        return cls(**_decode_fields(data))


def _derived_fields(depth: int, num_tokens: int, cls_index: int, r: int) -> dict[str, Any]:
    return {
        "effective_ratio": effective_ratio(depth, num_tokens, r),
        "merge_blocks": merge_blocks(depth, r),
        "tokens_per_block": tokens_per_block(depth, num_tokens, r),
        "cls_index_per_block": cls_index_per_block(depth, num_tokens, cls_index, r),
    }


_INT_FIELDS = ("depth", "num_tokens", "cls_index", "r")
_INT_TUPLE_FIELDS = ("merge_blocks", "tokens_per_block", "cls_index_per_block")


def _decode_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Type-check the JSON object field by field and turn lists into the dataclass's tuples."""
    expected = {field.name for field in dataclasses.fields(MergeSchedule)}
    missing, extra = sorted(expected - data.keys()), sorted(data.keys() - expected)
    if missing or extra:
        raise UserError(f"merge schedule fields wrong: missing {missing}, unexpected {extra}")
    for name in _INT_FIELDS:
        if not _is_int(data[name]):
            raise UserError(f"merge schedule field {name} must be an integer, got {data[name]!r}")
    for name in _INT_TUPLE_FIELDS:
        if not isinstance(data[name], list) or not all(_is_int(item) for item in data[name]):
            raise UserError(f"merge schedule field {name} must be a list of integers, got {data[name]!r}")
    for name, allow_null in (("ratio_requested", True), ("effective_ratio", False)):
        value = data[name]
        if not (value is None and allow_null) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"merge schedule field {name} must be a number, got {value!r}")
    return {**data, **{name: tuple(data[name]) for name in _INT_TUPLE_FIELDS}}


def schedule_from_r(depth: int, num_tokens: int, cls_index: int, r: int) -> MergeSchedule:
    """Schedule merging r tokens at every merge block; r == 0 is the valid no-merge schedule."""
    _check_shape_arguments(depth, num_tokens, cls_index)
    _check_r(depth, num_tokens, r)
    return MergeSchedule(
        depth=depth,
        num_tokens=num_tokens,
        cls_index=cls_index,
        r=r,
        ratio_requested=None,
        **_derived_fields(depth, num_tokens, cls_index, r),
    )


def schedule_from_ratio(depth: int, num_tokens: int, cls_index: int, ratio: float) -> MergeSchedule:
    """Schedule for the paper's ratio (fraction of token-layer work removed): 0.14 -> r=5, 0.31 -> r=11."""
    _check_shape_arguments(depth, num_tokens, cls_index)
    _check_ratio(ratio)
    if ratio > 0 and token_layers_per_r(depth) == 0:
        raise UserError(f"depth {depth} has no merge block (merging starts at block {MERGE_INTERVAL}); ratio must be 0")
    r = r_from_ratio(depth, num_tokens, ratio)
    if ratio > 0 and r == 0:
        smallest = effective_ratio(depth, num_tokens, 1) / 2
        raise UserError(f"ratio {ratio} rounds to r=0 (no merging); use ratio 0, or at least {smallest:.4f} to merge")
    try:
        schedule = schedule_from_r(depth, num_tokens, cls_index, r)
    except UserError as error:
        raise UserError(f"ratio {ratio} needs r={r} tokens per merge step, which is impossible: {error}") from None
    return dataclasses.replace(schedule, ratio_requested=float(ratio))
