"""The frozen merge schedule: closed forms, ratio <-> r, JSON round trip and one-line errors."""

import dataclasses
import json

import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.merge import SCHEMA_VERSION, MergeSchedule, schedule_from_r, schedule_from_ratio

VIM_DEPTH, VIM_TOKENS, VIM_CLS = 24, 197, 98


def simulate_schedule(depth: int, num_tokens: int, cls_index: int, r: int) -> tuple[list[int], list[int]]:
    """Token count and class index per block, stepping through the blocks one merge at a time."""
    tokens, cls, tokens_per_block, cls_per_block = num_tokens, cls_index, [], []
    for block in range(depth):
        if block > 0 and block % 2 == 0 and r > 0:
            cls = (cls * (tokens - r)) // tokens
            tokens -= r
        tokens_per_block.append(tokens)
        cls_per_block.append(cls)
    return tokens_per_block, cls_per_block


def one_line_error(call, *args) -> str:
    with pytest.raises(UserError) as error:
        call(*args)
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    "depth, num_tokens, cls_index, r",
    [(24, 197, 98, 11), (24, 197, 98, 5), (24, 197, 0, 7), (24, 197, 196, 3), (12, 50, 25, 4), (5, 10, 9, 2)],
)
def test_tokens_and_class_index_follow_the_closed_form(depth, num_tokens, cls_index, r):
    schedule = schedule_from_r(depth, num_tokens, cls_index, r)
    expected_tokens, expected_cls = simulate_schedule(depth, num_tokens, cls_index, r)
    assert list(schedule.tokens_per_block) == expected_tokens
    assert list(schedule.tokens_per_block) == [num_tokens - r * (block // 2) for block in range(depth)]
    assert list(schedule.cls_index_per_block) == expected_cls
    assert schedule.merge_blocks == tuple(range(2, depth, 2))
    assert all(0 <= cls < tokens for cls, tokens in zip(schedule.cls_index_per_block, schedule.tokens_per_block))


def test_vim_at_r11_merges_in_blocks_2_to_22_and_ends_with_76_tokens():
    schedule = schedule_from_r(VIM_DEPTH, VIM_TOKENS, VIM_CLS, 11)
    assert schedule.merge_blocks == (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22)
    assert schedule.tokens_per_block[:2] == (197, 197)
    assert schedule.tokens_per_block[-1] == 76


@pytest.mark.parametrize("ratio, expected_r", [(0.14, 5), (0.31, 11)])
def test_paper_ratios_give_paper_r(ratio, expected_r):
    schedule = schedule_from_ratio(VIM_DEPTH, VIM_TOKENS, VIM_CLS, ratio)
    assert schedule.r == expected_r
    assert schedule.ratio_requested == ratio
    assert schedule.effective_ratio == pytest.approx(expected_r * 132 / (24 * 197))


@pytest.mark.parametrize("ratio", [0.05, 0.14, 0.2, 0.31, 0.4, 0.447])
def test_effective_ratio_is_the_token_layers_removed_and_nearest_to_request(ratio):
    schedule = schedule_from_ratio(VIM_DEPTH, VIM_TOKENS, VIM_CLS, ratio)
    total_work = VIM_DEPTH * VIM_TOKENS
    assert schedule.effective_ratio == pytest.approx((total_work - sum(schedule.tokens_per_block)) / total_work)
    one_r_step = 132 / total_work
    assert abs(schedule.effective_ratio - ratio) <= one_r_step / 2 + 1e-12


@pytest.mark.parametrize("build", [lambda: schedule_from_ratio(24, 197, 98, 0.0), lambda: schedule_from_r(24, 197, 98, 0)])
def test_zero_means_no_merging(build):
    schedule = build()
    assert schedule.r == 0
    assert schedule.merge_blocks == ()
    assert set(schedule.tokens_per_block) == {197}
    assert set(schedule.cls_index_per_block) == {98}
    assert schedule.effective_ratio == 0


@pytest.mark.parametrize(
    "schedule",
    [schedule_from_ratio(24, 197, 98, 0.31), schedule_from_r(24, 197, 98, 5), schedule_from_r(6, 20, 3, 0)],
    ids=["from-ratio", "from-r", "no-merge"],
)
def test_json_round_trip(schedule):
    text = schedule.to_json()
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert MergeSchedule.from_json(text) == schedule


def edited_json(**changes) -> str:
    data = json.loads(schedule_from_ratio(24, 197, 98, 0.31).to_json())
    data.update(changes)
    return json.dumps({key: value for key, value in data.items() if value != "<drop>"})


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        edited_json(schema_version=2),
        edited_json(schema_version="<drop>"),
        edited_json(r="<drop>"),
        edited_json(surprise=1),
        edited_json(r=11.0),
        edited_json(r=12),
        edited_json(tokens_per_block=[197] * 24),
        edited_json(cls_index_per_block="98"),
        edited_json(effective_ratio="0.3"),
        edited_json(ratio_requested=0.5),
    ],
    ids=[
        "not-json",
        "not-object",
        "wrong-version",
        "no-version",
        "missing-field",
        "extra-field",
        "float-r",
        "r-not-matching-ratio",
        "inconsistent-tokens",
        "string-list",
        "string-ratio",
        "ratio-not-matching-r",
    ],
)
def test_from_json_rejects_bad_content_with_one_line(text):
    one_line_error(MergeSchedule.from_json, text)


def test_schedule_is_frozen():
    schedule = schedule_from_r(24, 197, 98, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.r = 6  # type: ignore[misc]


def test_constructing_an_inconsistent_schedule_directly_fails():
    fields = dataclasses.asdict(schedule_from_r(24, 197, 98, 5))
    one_line_error(lambda: MergeSchedule(**{**fields, "merge_blocks": (2, 4)}))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.3", True])
def test_bad_ratio_is_rejected(ratio):
    one_line_error(schedule_from_ratio, 24, 197, 98, ratio)


@pytest.mark.parametrize("r", [-1, 2.0, True])
def test_bad_r_is_rejected(r):
    one_line_error(schedule_from_r, 24, 197, 98, r)


def test_r_above_the_sources_of_the_last_step_is_rejected():
    # depth 4 merges once (block 2); 11 tokens leave 10 class-free ones, 5 of them sources.
    assert schedule_from_r(4, 11, 5, 5).tokens_per_block[-1] == 6
    assert "bipartite" in one_line_error(schedule_from_r, 4, 11, 5, 6)


def test_vim_r_is_limited_by_the_sources_of_the_last_step():
    # at r=16 the last merge sees 197 - 16 * 10 = 37 tokens (18 sources); at r=17, 27 tokens (13 sources)
    assert schedule_from_r(24, 197, 98, 16).tokens_per_block[-1] == 197 - 16 * 11
    assert "bipartite" in one_line_error(schedule_from_r, 24, 197, 98, 17)


@pytest.mark.parametrize("depth, num_tokens, r", [(24, 197, 18), (4, 2, 1)])
def test_r_leaving_fewer_than_two_tokens_is_rejected(depth, num_tokens, r):
    assert "at least 2" in one_line_error(schedule_from_r, depth, num_tokens, 0, r)


def test_ratio_rounding_to_an_impossible_r_names_the_ratio():
    message = one_line_error(schedule_from_ratio, 24, 197, 98, 0.9)
    assert "0.9" in message and "r=32" in message


def test_positive_ratio_rounding_to_no_merging_is_rejected():
    assert "r=0" in one_line_error(schedule_from_ratio, 24, 197, 98, 0.01)


@pytest.mark.parametrize("depth", [1, 2])
def test_depth_without_merge_blocks_only_allows_zero(depth):
    assert schedule_from_r(depth, 197, 98, 0).merge_blocks == ()
    one_line_error(schedule_from_r, depth, 197, 98, 1)
    one_line_error(schedule_from_ratio, depth, 197, 98, 0.1)


@pytest.mark.parametrize("depth, num_tokens, cls_index", [(0, 197, 98), (24, 1, 0), (24, 197, 197), (24, 197, -1)])
def test_bad_shape_arguments_are_rejected(depth, num_tokens, cls_index):
    one_line_error(schedule_from_r, depth, num_tokens, cls_index, 1)
