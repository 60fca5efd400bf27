"""merge_tokens (and prune_tokens) against the rules written in docs/rmeeto.md.

The oracle here is a slow loop that follows the spec step by step on plain Python lists, written
independently of the vectorised implementation.
"""

import math

import pytest
import torch

from rmeeto_export.errors import UserError
from rmeeto_export.merge import merge_tokens, prune_tokens, schedule_from_r

# Oracle sums in float64, merge_tokens in float32 (x * size, a sum of at most a few terms, one
# division): each step is within half an fp32 ulp (6e-8 relative) of values of order 1-10.
FP32_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity by the spec: 0 for an all-zero token, -inf where it is NaN."""
    a, b = a.float(), b.float()
    norm_a, norm_b = a.norm().item(), b.norm().item()
    if norm_a == 0 or norm_b == 0:
        return 0.0
    score = torch.dot(a / norm_a, b / norm_b).item()
    return float("-inf") if math.isnan(score) else score


def reference_merge_one(hidden, residual, size, r, cls_index):
    """One sample (T, C): the spec, step by step."""
    num_tokens = hidden.shape[0]
    free = [position for position in range(num_tokens) if position != cls_index]
    sources, destinations = free[0::2], free[1::2]
    best = []  # (score, source order, destination) per source
    for source_order, source in enumerate(sources):
        best_score, best_destination = None, None
        for destination in destinations:
            score = cosine(hidden[source], hidden[destination])
            if best_score is None or score > best_score:  # strictly greater: lowest index wins ties
                best_score, best_destination = score, destination
        best.append((best_score, source_order, best_destination))
    ranked = sorted(best, key=lambda entry: (-entry[0], entry[1]))
    members = {position: [position] for position in free}
    for _, source_order, destination in ranked[:r]:
        members[destination].append(sources[source_order])
        del members[sources[source_order]]
    rows_hidden, rows_residual, rows_size = [], [], []
    for position in sorted(members):
        group = members[position]
        weights = [size[member, 0].double() for member in group]
        total = sum(weights)
        rows_hidden.append(sum(hidden[m].double() * w for m, w in zip(group, weights)) / total)
        rows_residual.append(sum(residual[m].double() * w for m, w in zip(group, weights)) / total)
        rows_size.append(total.reshape(1))
    new_cls = (cls_index * (num_tokens - r)) // num_tokens
    rows_hidden.insert(new_cls, hidden[cls_index].double())
    rows_residual.insert(new_cls, residual[cls_index].double())
    rows_size.insert(new_cls, size[cls_index].double())
    return torch.stack(rows_hidden), torch.stack(rows_residual), torch.stack(rows_size), new_cls


def reference_merge(hidden, residual, size, r, cls_index):
    per_sample = [reference_merge_one(h, res, s, r, cls_index) for h, res, s in zip(hidden, residual, size)]
    stacked = [torch.stack([sample[i] for sample in per_sample]) for i in range(3)]
    return (*stacked, per_sample[0][3])


def random_inputs(batch, num_tokens, channels, generator, hidden_dtype=torch.float32):
    hidden = torch.randn(batch, num_tokens, channels, generator=generator).to(hidden_dtype)
    residual = torch.randn(batch, num_tokens, channels, generator=generator)
    size = torch.randint(1, 6, (batch, num_tokens, 1), generator=generator).float()
    return hidden, residual, size


def max_r(num_tokens: int) -> int:
    return min(num_tokens // 2, num_tokens - 2)


def assert_matches_reference(hidden, residual, size, r, cls_index, hidden_tolerance):
    got = merge_tokens(hidden, residual, size, r, cls_index)
    expected = reference_merge(hidden, residual, size, r, cls_index)
    assert got[3] == expected[3]
    assert got[0].dtype == hidden.dtype
    torch.testing.assert_close(got[0].double(), expected[0], **hidden_tolerance)
    torch.testing.assert_close(got[1].double(), expected[1], **FP32_TOLERANCE)
    torch.testing.assert_close(got[2].double(), expected[2], **FP32_TOLERANCE)


CASES = [
    # (batch, num_tokens, cls_index, r): odd and even T, class token first / middle / last, small to max r
    (1, 197, 98, 11),
    (2, 197, 98, 98),
    (3, 186, 92, 11),
    (2, 13, 6, 1),
    (2, 13, 0, 6),
    (2, 12, 11, 5),
    (1, 12, 5, 3),
    (4, 3, 1, 1),
]


@pytest.mark.parametrize("batch, num_tokens, cls_index, r", CASES)
def test_agrees_with_the_loop_reference_on_random_inputs(batch, num_tokens, cls_index, r):
    generator = torch.Generator().manual_seed(num_tokens * 1000 + r)
    hidden, residual, size = random_inputs(batch, num_tokens, 24, generator)
    assert_matches_reference(hidden, residual, size, r, cls_index, FP32_TOLERANCE)


@pytest.mark.parametrize("num_tokens, cls_index, r", [(40, 20, 9), (41, 0, 20), (17, 16, 8)])
def test_agrees_with_the_loop_reference_when_scores_tie_everywhere(num_tokens, cls_index, r):
    # Tokens drawn from 3 axis-aligned directions: every cosine is exactly 0 or 1 (no rounding), so
    # both tie-breaking rules (best destination, source ranking) decide almost every choice.
    generator = torch.Generator().manual_seed(num_tokens)
    directions = torch.randint(0, 3, (2, num_tokens), generator=generator)
    hidden = torch.nn.functional.one_hot(directions, 8).float() * torch.rand(2, num_tokens, 1, generator=generator)
    _, residual, size = random_inputs(2, num_tokens, 8, generator)
    assert_matches_reference(hidden, residual, size, r, cls_index, FP32_TOLERANCE)


def test_non_finite_tokens_still_merge_exactly_r_and_agree_with_the_reference():
    generator = torch.Generator().manual_seed(5)
    hidden, residual, size = random_inputs(2, 21, 8, generator)
    hidden[0, 3] = float("nan")
    hidden[1, 4] = float("inf")
    got = merge_tokens(hidden, residual, size, 6, 10)
    expected = reference_merge(hidden, residual, size, 6, 10)
    assert got[0].shape == (2, 15, 8)
    for got_tensor, expected_tensor in zip(got[:3], expected[:3]):
        torch.testing.assert_close(got_tensor.double(), expected_tensor, equal_nan=True, **FP32_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_hidden_keeps_its_dtype_and_agrees(dtype):
    generator = torch.Generator().manual_seed(7)
    hidden, residual, size = random_inputs(2, 197, 32, generator, hidden_dtype=dtype)
    # the output is rounded once to the hidden dtype: half an ulp is 2^-11 (fp16) or 2^-8 (bf16) relative
    relative_ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    assert_matches_reference(hidden, residual, size, 11, 98, {"rtol": relative_ulp, "atol": 1e-5})


def test_shapes_and_class_index_follow_the_schedule_block_by_block():
    schedule = schedule_from_r(24, 197, 98, 11)
    generator = torch.Generator().manual_seed(0)
    hidden, residual, size = random_inputs(2, 197, 16, generator)
    cls_index = schedule.cls_index
    for block in schedule.merge_blocks:
        hidden, residual, size, cls_index = merge_tokens(hidden, residual, size, schedule.r, cls_index)
        hidden = torch.randn(hidden.shape, generator=generator)  # the next block's mixer output
        expected_tokens = schedule.tokens_per_block[block]
        assert hidden.shape == residual.shape == (2, expected_tokens, 16)
        assert size.shape == (2, expected_tokens, 1)
        assert cls_index == schedule.cls_index_per_block[block]
    assert hidden.shape[1] == schedule.tokens_per_block[-1] == 76


def test_tokens_merged_with_exact_duplicates_keep_their_values_and_sizes_add():
    # Every source is a copy of a random destination and all sources merge: the output is exactly
    # the destinations (values unchanged) with sizes 1 + number of copies.
    num_tokens, cls_index, channels = 197, 98, 64
    generator = torch.Generator().manual_seed(3)
    free = torch.randn(2, num_tokens - 1, channels, generator=generator)
    copied = torch.randint(0, (num_tokens - 1) // 2, (2, (num_tokens - 1) // 2), generator=generator)
    free[:, 0::2] = torch.stack([free[b, 1::2][copied[b]] for b in range(2)])
    cls_token = torch.randn(2, 1, channels, generator=generator)
    hidden = torch.cat([free[:, :cls_index], cls_token, free[:, cls_index:]], dim=1)
    size = torch.ones(2, num_tokens, 1)
    r = (num_tokens - 1) // 2

    new_hidden, new_residual, new_size, new_cls = merge_tokens(hidden, hidden.clone(), size, r, cls_index)

    destinations = free[:, 1::2]
    copies = torch.stack([torch.bincount(copied[b], minlength=destinations.shape[1]) for b in range(2)])
    without_cls = torch.cat([new_hidden[:, :new_cls], new_hidden[:, new_cls + 1 :]], dim=1)
    sizes_without_cls = torch.cat([new_size[:, :new_cls], new_size[:, new_cls + 1 :]], dim=1)
    torch.testing.assert_close(without_cls, destinations, **FP32_TOLERANCE)
    torch.testing.assert_close(sizes_without_cls[..., 0], 1 + copies.float(), rtol=0, atol=0)
    torch.testing.assert_close(new_residual, new_hidden, rtol=0, atol=0)


def membership(merged_tags: torch.Tensor) -> list[list[int]]:
    """Original positions merged into each output row, read off one-hot position tags."""
    return [torch.nonzero(row).flatten().tolist() for row in merged_tags]


@pytest.mark.parametrize("num_tokens, cls_index, r", [(197, 98, 11), (198, 0, 50), (25, 24, 12)])
def test_survivors_keep_spatial_order_and_every_token_lands_in_one_row(num_tokens, cls_index, r):
    # residual = one-hot tag of each token's original position: a merged row's non-zero columns
    # are exactly its members (residual and hidden share a shape, hence num_tokens channels).
    generator = torch.Generator().manual_seed(r)
    hidden = torch.randn(1, num_tokens, num_tokens, generator=generator)
    tags = torch.eye(num_tokens)[None]
    size = torch.ones(1, num_tokens, 1)
    _, merged_tags, new_size, new_cls = merge_tokens(hidden, tags, size, r, cls_index)

    groups = membership(merged_tags[0])
    assert groups[new_cls] == [cls_index]
    assert sorted(member for group in groups for member in group) == list(range(num_tokens))
    free = [position for position in range(num_tokens) if position != cls_index]
    destinations = set(free[1::2])

    def row_position(group: list[int]) -> int:
        # a merged row sits where its destination was; an unmerged token where it was
        in_destinations = [member for member in group if member in destinations]
        assert len(in_destinations) <= 1 and (len(in_destinations) == 1 or len(group) == 1)
        return in_destinations[0] if in_destinations else group[0]

    positions = [row_position(group) for group in groups]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert new_size[0, :, 0].tolist() == [float(len(group)) for group in groups]


def test_sizes_always_sum_to_the_input_total():
    schedule = schedule_from_r(24, 197, 98, 16)
    generator = torch.Generator().manual_seed(11)
    hidden, residual, size = random_inputs(3, 197, 16, generator)
    total = size.sum(dim=(1, 2))
    cls_index = schedule.cls_index
    for _ in schedule.merge_blocks:
        hidden, residual, size, cls_index = merge_tokens(hidden, residual, size, schedule.r, cls_index)
        hidden = torch.randn(hidden.shape, generator=generator)
        torch.testing.assert_close(size.sum(dim=(1, 2)), total, rtol=0, atol=0)  # small integers: exact


@pytest.mark.parametrize("cls_index", [0, 98, 196])
def test_class_token_is_untouched_and_at_the_new_index(cls_index):
    generator = torch.Generator().manual_seed(cls_index)
    hidden, residual, size = random_inputs(2, 197, 16, generator)
    new_hidden, new_residual, new_size, new_cls = merge_tokens(hidden, residual, size, 11, cls_index)
    assert new_cls == (cls_index * (197 - 11)) // 197
    assert torch.equal(new_hidden[:, new_cls], hidden[:, cls_index])
    assert torch.equal(new_residual[:, new_cls], residual[:, cls_index])
    assert torch.equal(new_size[:, new_cls], size[:, cls_index])


def test_ties_break_to_the_lowest_destination_and_lowest_sources():
    # All class-free tokens identical: every cosine is exactly 1, every source's best destination
    # is the first destination (position 1), and the r lowest-indexed sources are the ones merged.
    num_tokens, cls_index, r = 21, 10, 4
    hidden = torch.zeros(1, num_tokens, num_tokens)  # as wide as the one-hot tags in residual
    hidden[..., 0] = 1.0
    tags = torch.eye(num_tokens)[None]
    _, merged_tags, new_size, _ = merge_tokens(hidden, tags, torch.ones(1, num_tokens, 1), r, cls_index)
    free = [position for position in range(num_tokens) if position != cls_index]
    first_destination_row = next(group for group in membership(merged_tags[0]) if free[1] in group)
    assert sorted(first_destination_row) == sorted([free[1], *free[0 : 2 * r : 2]])


def test_zero_r_returns_the_inputs_unchanged():
    hidden, residual, size = random_inputs(2, 197, 8, torch.Generator().manual_seed(1))
    result = merge_tokens(hidden, residual, size, 0, 98)
    assert result[0] is hidden and result[1] is residual and result[2] is size and result[3] == 98


def test_traces_to_a_static_graph():
    # torch.export must see only static shapes: no data-dependent sizes (nonzero, boolean masks).
    class Merge(torch.nn.Module):
        def forward(self, hidden, residual, size):
            return merge_tokens(hidden, residual, size, 11, 98)[:3]

    inputs = random_inputs(1, 197, 16, torch.Generator().manual_seed(2))
    exported = torch.export.export(Merge(), inputs)
    for got, expected in zip(exported.module()(*inputs), Merge()(*inputs)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "shapes, r, cls_index",
    [
        (((2, 197), (2, 197, 8), (2, 197, 1)), 5, 98),
        (((2, 197, 8), (2, 196, 8), (2, 197, 1)), 5, 98),
        (((2, 197, 8), (2, 197, 8), (2, 197)), 5, 98),
        (((2, 197, 8), (2, 197, 8), (2, 197, 1)), 5, 197),
        (((2, 197, 8), (2, 197, 8), (2, 197, 1)), 99, 98),
        (((2, 3, 8), (2, 3, 8), (2, 3, 1)), 2, 1),
        (((2, 197, 8), (2, 197, 8), (2, 197, 1)), -1, 98),
    ],
    ids=["hidden-2d", "residual-shape", "size-shape", "cls-outside", "r-above-sources", "r-leaves-one", "r-negative"],
)
@pytest.mark.parametrize("operation", [merge_tokens, prune_tokens])
def test_bad_inputs_raise_one_line_user_error(operation, shapes, r, cls_index):
    tensors = [torch.ones(shape) for shape in shapes]
    with pytest.raises(UserError) as error:
        operation(*tensors, r, cls_index)
    assert "\n" not in str(error.value)


def reference_prune_one(hidden, residual, size, r, cls_index):
    num_tokens = hidden.shape[0]
    free = [position for position in range(num_tokens) if position != cls_index]
    by_importance = sorted(free, key=lambda position: (hidden[position].float().norm().item(), position))
    dropped = set(by_importance[:r])
    kept = [position for position in free if position not in dropped]
    new_cls = (cls_index * (num_tokens - r)) // num_tokens
    kept.insert(new_cls, cls_index)
    return hidden[kept], residual[kept], size[kept], new_cls


@pytest.mark.parametrize("num_tokens, cls_index, r", [(197, 98, 11), (12, 0, 5), (13, 12, 6)])
def test_prune_keeps_the_largest_norm_tokens_in_order(num_tokens, cls_index, r):
    generator = torch.Generator().manual_seed(num_tokens)
    hidden, residual, size = random_inputs(2, num_tokens, 16, generator)
    hidden[:, 1:4] = hidden[:, 4:5]  # equal norms: the lowest index is dropped first
    got = prune_tokens(hidden, residual, size, r, cls_index)
    for b in range(2):
        expected = reference_prune_one(hidden[b], residual[b], size[b], r, cls_index)
        assert got[3] == expected[3]
        for got_tensor, expected_tensor in zip(got[:3], expected[:3]):
            assert torch.equal(got_tensor[b], expected_tensor)


def test_prune_with_zero_r_returns_the_inputs():
    hidden, residual, size = random_inputs(1, 13, 8, torch.Generator().manual_seed(4))
    result = prune_tokens(hidden, residual, size, 0, 6)
    assert result[0] is hidden and result[1] is residual and result[2] is size and result[3] == 6


def test_prune_drops_nan_tokens_first():
    hidden, residual, size = random_inputs(1, 13, 8, torch.Generator().manual_seed(6))
    hidden[0, 9] = float("nan")
    pruned_residual = prune_tokens(hidden, residual, size, 1, 0)[1]  # class token stays at 0
    without_nan_token = torch.cat([residual[:, :9], residual[:, 10:]], dim=1)
    assert torch.equal(pruned_residual, without_nan_token)
