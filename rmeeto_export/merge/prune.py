"""Token pruning for Vision Mamba (Zhan et al., NeurIPS 2024, arXiv 2409.18962): the frozen schedule,
the importance score and the pruning step, a second token reducer beside R-MeeTo merging.

- schedule: after `prune_after` blocks (5, 10 and 15 in the released code) the sequence keeps
  ceil(keep_ratio * class-free tokens) tokens, made odd (the class token included), so that the class
  token sits exactly in the middle: Vim-S 197 -> 157 -> 125 -> 101 at keep ratio 0.8;
- importance of a token ("ssm"): the sum over channels of the block's SSM output clipped at zero, where
  the SSM output is what the mixer feeds its out_proj (both scan directions, gated, averaged), in each
  token's own position, per batch item; "l2": the L2 norm of the block's output, the naive baseline;
- pruning: the class token and the most important others survive in their spatial order (ties: the
  lower position survives, NaN scores are dropped first); hidden and residual lose the same tokens.

How this differs from the released code, and the paper's scan alignment: docs/pruning.md.

Everything is static-shape integer arithmetic plus comparisons, TopK and Gather, so a pruned model
exports as standard ONNX (no custom op for the pruning itself).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from rmeeto_export.errors import UserError
from rmeeto_export.merge.schedule import check_one_way
from rmeeto_export.merge.tokens import gather_tokens, kept_positions_in_order, top_r_mask, with_token, without_token

SCHEMA_VERSION = 1
METHOD = "prune"
IMPORTANCES = ("ssm", "l2")
RELEASED_KEEP_RATIO = 0.8
RELEASED_PRUNE_AFTER = (5, 10, 15)
KEEP_RATIO_STEP = 1000  # a --ratio resolves to a keep ratio in steps of 1 / KEEP_RATIO_STEP
_CEIL_SLACK = 1e-9  # 0.7 * 10 is 7.000000000000001 in floating point; ceil must still give 7


@dataclass(frozen=True)
class PruneSettings:
    """What a user chooses: a keep ratio or a ratio (fraction of token-layer work removed), where to
    prune, and the importance score. Neither ratio given: the released keep ratio 0.8."""

    keep_ratio: Optional[float] = None
    ratio: Optional[float] = None
    prune_after: tuple[int, ...] = RELEASED_PRUNE_AFTER
    importance: str = "ssm"


def kept_tokens(num_tokens: int, keep_ratio: float) -> int:
    """Tokens left (class token included) after one step on `num_tokens`: ceil(keep_ratio * (num_tokens - 1))
    class-free tokens, the class token making the count odd (one more class-free token when it is even)."""
    keep = math.ceil(keep_ratio * (num_tokens - 1) - _CEIL_SLACK)
    return keep + 1 if keep % 2 == 0 else keep


def tokens_per_block(depth: int, num_tokens: int, keep_ratio: float, prune_after: tuple[int, ...]) -> tuple[int, ...]:
    """Tokens each block sees; a prune after k blocks shortens the sequence from block k (0-based) on."""
    tokens, current = [], num_tokens
    for block in range(depth):
        if block in prune_after:
            current = kept_tokens(current, keep_ratio)
        tokens.append(current)
    return tuple(tokens)


def middle_index(num_tokens: int) -> int:
    """Where the class token sits in a pruned sequence: the middle, (num_tokens - 1) // 2."""
    return (num_tokens - 1) // 2


def cls_index_per_block(cls_index: int, tokens: tuple[int, ...]) -> tuple[int, ...]:
    """Class-token index in every block: where the model put it until the first prune, the middle after."""
    indices = [cls_index]
    for previous, current in zip(tokens, tokens[1:]):
        indices.append(indices[-1] if current == previous else middle_index(current))
    return tuple(indices)


def work_removed(tokens: tuple[int, ...], num_tokens: int) -> float:
    """Fraction of token-layer work removed: 1 - sum of tokens per block / (depth * num_tokens)."""
    return 1.0 - sum(tokens) / (len(tokens) * num_tokens)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fraction(name: str, value: Any, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a number, got {value!r}")
    if not (0 < value <= 1 if low_open else 0 <= value < 1):
        raise UserError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1)'}, got {value}")


def _check_prune_after(depth: int, prune_after: Any) -> None:
    if not isinstance(prune_after, tuple) or not all(_is_int(k) for k in prune_after):
        raise UserError(f"prune_after must be block counts (integers), got {prune_after!r}")
    if list(prune_after) != sorted(set(prune_after)):
        raise UserError(f"prune_after must be increasing without repeats, got {list(prune_after)}")
    outside = [k for k in prune_after if not 1 <= k < depth]
    if outside:
        raise UserError(
            f"cannot prune after {', '.join(map(str, outside))} block(s) of a depth-{depth} model: "
            f"a prune goes after 1 to {depth - 1} blocks"
        )


def _check_keeps_patches(tokens: tuple[int, ...], keep_ratio: float) -> None:
    if tokens[-1] < 3:
        raise UserError(f"keep ratio {keep_ratio} leaves {tokens[-1] - 1} patch tokens in the last block; at least 2 must remain")


def keep_ratio_for(depth: int, num_tokens: int, prune_after: tuple[int, ...], ratio: float) -> float:
    """The keep ratio (in steps of 1/KEEP_RATIO_STEP) whose schedule removes the fraction of token-layer work
    nearest to `ratio`, so that pruning and merging at the same --ratio cost the same (ties: keep more)."""
    best = None
    for step in range(KEEP_RATIO_STEP, 0, -1):
        keep_ratio = step / KEEP_RATIO_STEP
        tokens = tokens_per_block(depth, num_tokens, keep_ratio, prune_after)
        if tokens[-1] < 3:
            break
        distance = abs(work_removed(tokens, num_tokens) - ratio)
        if best is None or distance < best[0] - 1e-12:
            best = (distance, keep_ratio)
    if best is None:
        raise UserError(f"no keep ratio can prune {num_tokens} tokens at {list(prune_after)}")
    return best[1]


@dataclass(frozen=True)
class PruneSchedule:
    """A complete, self-consistent pruning schedule (what schedule.json holds); build it with
    prune_schedule(). Same derived fields as MergeSchedule: tokens and class index per block."""

    depth: int
    num_tokens: int
    cls_index: int
    keep_ratio: float
    prune_after: tuple[int, ...]
    importance: str
    ratio_requested: Optional[float]
    effective_ratio: float
    tokens_per_block: tuple[int, ...]
    cls_index_per_block: tuple[int, ...]

    method = METHOD

    @property
    def reduces(self) -> bool:
        return self.tokens_per_block[-1] < self.num_tokens

    def summary(self) -> str:
        """One line for logs and reports."""
        after = ", ".join(map(str, self.prune_after))
        return f"prune to {self.keep_ratio:g} of the tokens after {after} blocks ({self.importance} importance)"

    def to_json(self) -> str:
        """Serialise to a JSON string carrying schema_version and method."""
        fields = dataclasses.asdict(self)
        return json.dumps({"schema_version": SCHEMA_VERSION, "method": METHOD, **fields}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PruneSchedule:
        """Parse to_json's output: the chosen fields are rebuilt with prune_schedule(), which must give
        back every derived field; anything else is a one-line UserError."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as error:
            raise UserError(f"prune schedule is not valid JSON: {error}") from None
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION or data.get("method") != METHOD:
            raise UserError(f"not a prune schedule of schema_version {SCHEMA_VERSION}")
        expected = {field.name for field in dataclasses.fields(cls)} | {"schema_version", "method"}
        if set(data) != expected:
            raise UserError(f"prune schedule fields wrong: missing {sorted(expected - set(data))}, "
                            f"unexpected {sorted(set(data) - expected)}")
        if not isinstance(data["prune_after"], list):
            raise UserError(f"prune schedule field prune_after must be a list, got {data['prune_after']!r}")
        rebuilt = prune_schedule(
            data["depth"], data["num_tokens"], data["cls_index"],
            PruneSettings(keep_ratio=data["keep_ratio"], prune_after=tuple(data["prune_after"]),
                          importance=data["importance"]),
        )
        rebuilt = dataclasses.replace(rebuilt, ratio_requested=data["ratio_requested"])
        if json.loads(rebuilt.to_json()) != data:
            raise UserError("prune schedule is inconsistent: its token counts do not follow from its settings")
        return rebuilt


def prune_schedule(depth: int, num_tokens: int, cls_index: int, settings: PruneSettings) -> PruneSchedule:
    """The frozen schedule for a model of `depth` blocks and `num_tokens` tokens (class token at cls_index)."""
    if not _is_int(depth) or depth < 2:
        raise UserError(f"pruning needs a model of at least 2 blocks, got depth {depth!r}")
    if not _is_int(num_tokens) or num_tokens < 4:
        raise UserError(f"pruning needs at least 4 tokens (class token included), got {num_tokens!r}")
    if not _is_int(cls_index) or not 0 <= cls_index < num_tokens:
        raise UserError(f"cls_index must be an integer in [0, {num_tokens}), got {cls_index!r}")
    if settings.importance not in IMPORTANCES:
        raise UserError(f"unknown importance {settings.importance!r}; choose one of {', '.join(IMPORTANCES)}")
    _check_prune_after(depth, settings.prune_after)
    check_one_way({"keep_ratio": settings.keep_ratio, "ratio": settings.ratio})
    if settings.ratio is not None:
        _check_fraction("ratio", settings.ratio, low_open=False)
        keep_ratio = 1.0 if settings.ratio == 0 else keep_ratio_for(depth, num_tokens, settings.prune_after, settings.ratio)
    else:
        keep_ratio = RELEASED_KEEP_RATIO if settings.keep_ratio is None else settings.keep_ratio
        _check_fraction("keep ratio", keep_ratio, low_open=True)
    tokens = tokens_per_block(depth, num_tokens, keep_ratio, settings.prune_after)
    _check_keeps_patches(tokens, keep_ratio)
    return PruneSchedule(
        depth=depth,
        num_tokens=num_tokens,
        cls_index=cls_index,
        keep_ratio=float(keep_ratio),
        prune_after=settings.prune_after,
        importance=settings.importance,
        ratio_requested=None if settings.ratio is None else float(settings.ratio),
        effective_ratio=work_removed(tokens, num_tokens),
        tokens_per_block=tokens,
        cls_index_per_block=cls_index_per_block(cls_index, tokens),
    )


def ssm_importance(scan_output: torch.Tensor) -> torch.Tensor:
    """(B, T, C) SSM output -> (B, T) fp32: sum over channels of the output clipped at zero (the paper's score)."""
    return scan_output.float().clamp(min=0).sum(dim=-1)


def l2_importance(hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, C) block output -> (B, T) fp32 L2 norm per token: the baseline score."""
    return hidden.float().norm(dim=-1)


def keep_important_tokens(
    hidden: torch.Tensor, residual: torch.Tensor, importance: torch.Tensor, num_keep: int, cls_index: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Keep the class token and the num_keep - 1 most important other tokens, in their spatial order.

    hidden, residual (B, T, C); importance (B, T) (the class token's own score is ignored). The class
    token goes to the middle, (num_keep - 1) // 2; returns (hidden, residual, new class index).
    """
    if hidden.dim() != 3 or residual.shape != hidden.shape or importance.shape != hidden.shape[:2]:
        raise UserError(f"hidden and residual must be (batch, tokens, channels) and importance (batch, tokens); got "
                        f"{tuple(hidden.shape)}, {tuple(residual.shape)}, {tuple(importance.shape)}")
    num_tokens = hidden.shape[1]
    if not 0 <= cls_index < num_tokens:
        raise UserError(f"cls_index {cls_index} is outside the {num_tokens} tokens")
    if not _is_int(num_keep) or not 1 <= num_keep <= num_tokens:
        raise UserError(f"cannot keep {num_keep!r} of {num_tokens} tokens")
    score = without_token(importance[..., None], cls_index)[..., 0].nan_to_num(nan=float("-inf"))
    kept = kept_positions_in_order(top_r_mask(score, num_keep - 1), num_keep - 1)
    new_cls = middle_index(num_keep)

    def pruned(x: torch.Tensor) -> torch.Tensor:
        survivors = gather_tokens(without_token(x, cls_index), kept)
        return with_token(survivors, x[:, cls_index : cls_index + 1], new_cls)

    return pruned(hidden), pruned(residual), new_cls
