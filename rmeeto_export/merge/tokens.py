"""Static-shape operations on token sequences (batch, tokens, channels) shared by merging and pruning.

Output sizes depend only on shapes and integer arguments, never on data, so everything here traces
and exports to ONNX; sorting is avoided (torch.sort/argsort do not export), ranks come from pairwise
comparisons and ordered positions from topk on unique integer keys.
"""

from __future__ import annotations

import torch



def without_token(x: torch.Tensor, index: int) -> torch.Tensor:
    return torch.cat([x[:, :index], x[:, index + 1 :]], dim=1)


def with_token(x: torch.Tensor, token: torch.Tensor, index: int) -> torch.Tensor:
    return torch.cat([x[:, :index], token, x[:, index:]], dim=1)


def top_r_mask(score: torch.Tensor, r: int) -> torch.Tensor:
    """(B, n) bool: the r entries ranked highest by (score descending, index ascending).

    A pairwise rank instead of topk/argsort, whose order among equal scores is unspecified: an
    entry's rank is the number of entries with a higher score plus the lower-indexed equal ones.
    """
    n = score.shape[-1]
    lower_index = torch.ones(n, n, dtype=torch.bool, device=score.device).tril(diagonal=-1)
    other, this = score[:, None, :], score[:, :, None]
    ahead = (other > this) | ((other == this) & lower_index)
    return ahead.sum(dim=-1) < r


def kept_positions_in_order(keep: torch.Tensor, num_kept: int) -> torch.Tensor:
    """(B, num_kept) ascending positions where `keep` is True; num_kept must equal each row's count.

    topk of unique integer keys (kept positions first, in order) replaces nonzero, whose output
    size is data-dependent, and sort, which does not export.
    """
    n = keep.shape[-1]
    positions = torch.arange(n, device=keep.device)
    order_key = torch.where(keep, positions, positions + n)
    return order_key.topk(num_kept, dim=-1, largest=False, sorted=True).indices


def flat_rows(positions: torch.Tensor, tokens_per_row: int) -> torch.Tensor:
    """(B, k) per-sample token positions -> (B * k,) row indices into x.reshape(B * tokens_per_row, C).

    Whole-row index_select / index_add on the flattened batch are several times faster on CPU than
    gather / scatter_add with an index expanded over channels.
    """
    batch_offsets = torch.arange(positions.shape[0], device=positions.device)[:, None] * tokens_per_row
    return (positions + batch_offsets).reshape(-1)


def gather_tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    batch, num_tokens, channels = x.shape
    rows = x.reshape(batch * num_tokens, channels).index_select(0, flat_rows(positions, num_tokens))
    return rows.reshape(batch, -1, channels)
