"""R-MeeTo token merging for Vision Mamba with static shapes, plus a pruning baseline with the same interface.

This is the reference (oracle) for the rmeeto::token_merge custom op, its ONNX function body and the
TensorRT plugin, so every decision is spelled out and deterministic:

- metric: hidden without the class token, in fp32, L2-normalised over channels (F.normalize, so an
  all-zero token scores 0 instead of NaN);
- bipartite split of the class-free sequence: even positions are sources, odd are destinations;
- score = cosine similarity, NaN (from inf/NaN features) counted as -inf so that ranks stay a total
  order; each source picks its best destination (ties: lowest destination index);
- sources are ranked by best score, descending, ties by lowest source index; the top r merge;
- merge = size-weighted average: x * size is summed into the destination (hidden and residual, the
  same matching, the OLD sizes), sizes add, then every token is divided by its new size;
- the merged token keeps its destination's position, survivors stay in spatial order, and the class
  token (untouched) is re-inserted at (cls_index * (T - r)) // T.

Output shapes depend only on (T, r), never on data, so the merge traces and exports. Sorting is
avoided (torch.sort/argsort do not export to ONNX): ranks come from pairwise comparisons and the
survivors' order from topk on unique integer keys.

Numerics: the similarity is an fp32 matmul, so implementations that sum in another order (or a GPU
with TF32 matmul enabled) can flip a decision between near-equal scores; exact ties break as above
everywhere. The weighted sums run in the promoted dtype of hidden and residual (fp32 in the model,
fp64 in gradient checks); on CUDA index_add_ adds with atomics, so the order of the few terms per
destination, hence the last bit, can vary between runs. Tokens no merge touched come out as
(x * size) / size, i.e. x up to one rounding; the class token is copied, bit-exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmeeto_export.errors import UserError
from rmeeto_export.merge.schedule import merged_cls_index, sources_per_step
from rmeeto_export.merge.tokens import (
    flat_rows,
    gather_tokens,
    kept_positions_in_order,
    top_r_mask,
    with_token,
    without_token,
)

MergeResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]


def _check_inputs(hidden: torch.Tensor, residual: torch.Tensor, size: torch.Tensor, r: int, cls_index: int) -> None:
    if hidden.dim() != 3:
        raise UserError(f"hidden must be (batch, tokens, channels), got shape {tuple(hidden.shape)}")
    batch, num_tokens, _ = hidden.shape
    if residual.shape != hidden.shape:
        raise UserError(f"residual shape {tuple(residual.shape)} differs from hidden shape {tuple(hidden.shape)}")
    if size.shape != (batch, num_tokens, 1):
        raise UserError(f"size must have shape {(batch, num_tokens, 1)}, got {tuple(size.shape)}")
    if not 0 <= cls_index < num_tokens:
        raise UserError(f"cls_index {cls_index} is outside the {num_tokens} tokens")
    max_r = min(sources_per_step(num_tokens), num_tokens - 2)
    if not 0 <= r <= max_r:
        raise UserError(f"r={r} is impossible for {num_tokens} tokens: one step can remove 0 to {max_r}")


def _sum_tokens_into(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """out[b, target[b, i]] += x[b, i]: every token's row summed into its target position."""
    batch, num_tokens, channels = x.shape
    rows = x.reshape(batch * num_tokens, channels)
    summed = torch.zeros_like(rows).index_add_(0, flat_rows(target, num_tokens), rows)
    return summed.reshape(batch, num_tokens, channels)


def _merge_targets(hidden_free: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite matching on the class-free tokens.

    Returns target (B, n): the position every token's weighted value is summed into (its
    destination for a merged source, itself otherwise), and keep (B, n): tokens that survive.
    """
    metric = F.normalize(hidden_free.float(), dim=-1)
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)
    scores = scores.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN: a total order
    best_score, best_destination = scores.max(dim=-1)  # max returns the first maximal index
    merged = top_r_mask(best_score, r)
    batch, n = hidden_free.shape[:2]
    source_positions = torch.arange(0, n, 2, device=hidden_free.device)
    target = torch.arange(n, device=hidden_free.device).repeat(batch, 1)
    target[:, 0::2] = torch.where(merged, 2 * best_destination + 1, source_positions)
    keep = torch.ones(batch, n, dtype=torch.bool, device=hidden_free.device)
    keep[:, 0::2] = ~merged
    return target, keep


def _to_full_sequence(free_positions: torch.Tensor, cls_index: int, cls_slot: int) -> torch.Tensor:
    """Class-free positions -> positions in the full sequence, with the class token's own position
    inserted at column cls_slot."""
    full_positions = free_positions + (free_positions >= cls_index).to(free_positions.dtype)
    cls_column = torch.full_like(full_positions[:, :1], cls_index)
    return with_token(full_positions, cls_column, cls_slot)


def merge_tokens(
    hidden: torch.Tensor, residual: torch.Tensor, size: torch.Tensor, r: int, cls_index: int
) -> MergeResult:
    """Merge r tokens (R-MeeTo); returns (hidden, residual, size, new_cls_index) with T - r tokens.

    hidden (B, T, C) any float dtype (kept), residual (B, T, C) fp32, size (B, T, 1) fp32 tokens
    represented per token. r == 0 returns the inputs themselves.
    """
    _check_inputs(hidden, residual, size, r, cls_index)
    if r == 0:
        return hidden, residual, size, cls_index
    num_tokens, channels = hidden.shape[1:]
    new_cls = merged_cls_index(cls_index, num_tokens, r)
    target_free, keep_free = _merge_targets(without_token(hidden, cls_index), r)
    # Matching and survivor order are decided class-free, then mapped onto the full sequence: the
    # class token sums into itself and is read back at new_cls, so no feature tensor is re-cut.
    target = _to_full_sequence(target_free, cls_index, cls_index)
    output_positions = _to_full_sequence(
        kept_positions_in_order(keep_free, num_tokens - 1 - r), cls_index, new_cls
    )

    # hidden, residual and a ones column side by side, weighted by the OLD sizes: one scatter merges
    # all three with the same matching, and the ones column becomes the new sizes.
    compute = torch.promote_types(hidden.dtype, residual.dtype)  # fp32, or fp64 for gradient checks
    features = torch.cat([hidden.to(compute), residual.to(compute), torch.ones_like(size, dtype=compute)], -1)
    merged = gather_tokens(_sum_tokens_into(features * size, target), output_positions)
    new_size = merged[..., 2 * channels :]
    new_hidden = (merged[..., :channels] / new_size).to(hidden.dtype)
    new_residual = (merged[..., channels : 2 * channels] / new_size).to(residual.dtype)
    # (x * size) / size can be one rounding off x: copy the class token so it stays bit-exact.
    new_hidden[:, new_cls] = hidden[:, cls_index]
    new_residual[:, new_cls] = residual[:, cls_index]
    return new_hidden, new_residual, new_size.to(size.dtype).contiguous(), new_cls


def prune_tokens(
    hidden: torch.Tensor, residual: torch.Tensor, size: torch.Tensor, r: int, cls_index: int
) -> MergeResult:
    """Drop the r least important tokens instead of merging them: the baseline to compare merging with.

    Importance is the L2 norm of the token's hidden state (ties: the lowest index is dropped first).
    The SSM-specific importance of arXiv 2409.18962 needs the scan's internal state, which a drop-in
    replacement for merge_tokens does not see; the norm needs only the same inputs. Survivors keep
    their values and sizes (the dropped sizes are lost) in spatial order; the class token is never
    dropped and moves to the same index as with merge_tokens, so one schedule serves both.
    """
    _check_inputs(hidden, residual, size, r, cls_index)
    if r == 0:
        return hidden, residual, size, cls_index
    num_tokens = hidden.shape[1]
    importance = without_token(hidden, cls_index).float().norm(dim=-1)
    keep = ~top_r_mask(-importance.nan_to_num(nan=float("-inf")), r)  # NaN tokens are dropped first
    kept = kept_positions_in_order(keep, num_tokens - 1 - r)
    new_cls = merged_cls_index(cls_index, num_tokens, r)

    def pruned(x: torch.Tensor) -> torch.Tensor:
        survivors = gather_tokens(without_token(x, cls_index), kept)
        return with_token(survivors, x[:, cls_index : cls_index + 1], new_cls)

    return pruned(hidden), pruned(residual), pruned(size), new_cls
