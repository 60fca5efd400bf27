"""Token pruning (arXiv 2409.18962): schedule, importance and the pruning step against loop oracles."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rmeeto_export.errors import UserError
from rmeeto_export.merge.prune import (
    PruneSchedule,
    PruneSettings,
    keep_important_tokens,
    prune_schedule,
    ssm_importance,
)
from rmeeto_export.models import create_model
from rmeeto_export.merge.schedule import schedule_from_ratio
from rmeeto_export.models.complexity import gflops
from rmeeto_export.models.vim import resolve_config


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("name", ["vim_t", "vim_s", "vim_b"])
def test_released_schedule_token_counts(name):
    cfg = resolve_config(name)
    schedule = prune_schedule(cfg.depth, cfg.num_tokens, cfg.cls_index, PruneSettings())
    assert schedule.tokens_per_block == (197,) * 5 + (157,) * 5 + (125,) * 5 + (101,) * 9
    # the class token starts where the model puts it and stays in the exact middle
    assert schedule.cls_index_per_block == (98,) * 5 + (78,) * 5 + (62,) * 5 + (50,) * 9
    assert schedule.effective_ratio == pytest.approx(1 - 3304 / (24 * 197))


def test_released_vim_s_gflops_near_the_paper():
    cfg = resolve_config("vim_s")
    schedule = prune_schedule(cfg.depth, cfg.num_tokens, cfg.cls_index, PruneSettings())
    assert gflops(cfg, schedule.tokens_per_block) == pytest.approx(3.60, rel=0.02)  # the paper's Vim-S figure; our FLOP convention is complexity.py's


@pytest.mark.parametrize("name", ["vim_t", "vim_s"])
def test_a_ratio_prunes_the_same_work_as_merging_at_that_ratio(name):
    cfg = resolve_config(name)
    pruned = prune_schedule(cfg.depth, cfg.num_tokens, cfg.cls_index, PruneSettings(ratio=0.31))
    merged = schedule_from_ratio(cfg.depth, cfg.num_tokens, cfg.cls_index, 0.31)
    assert abs(pruned.effective_ratio - 0.31) <= 0.005  # a keep-ratio step moves the work by under 1%
    assert abs(pruned.effective_ratio - merged.effective_ratio) <= 0.01
    assert gflops(cfg, pruned.tokens_per_block) == pytest.approx(gflops(cfg, merged.tokens_per_block), rel=0.02)


def test_ratio_zero_keeps_every_token():
    schedule = prune_schedule(24, 197, 98, PruneSettings(ratio=0.0))
    assert set(schedule.tokens_per_block) == {197} and schedule.effective_ratio == 0.0


def test_schedule_json_round_trip_and_tampering():
    schedule = prune_schedule(24, 197, 98, PruneSettings(ratio=0.31))
    assert PruneSchedule.from_json(schedule.to_json()) == schedule
    data = json.loads(schedule.to_json())
    data["tokens_per_block"][-1] -= 2
    assert "inconsistent" in one_line_error(PruneSchedule.from_json, json.dumps(data))
    one_line_error(PruneSchedule.from_json, "{")
    one_line_error(PruneSchedule.from_json, json.dumps({**json.loads(schedule.to_json()), "extra": 1}))


@pytest.mark.parametrize(
    "settings, fragment",
    [
        (PruneSettings(keep_ratio=0.0), "keep ratio must be in (0, 1]"),
        (PruneSettings(keep_ratio=1.5), "keep ratio must be in (0, 1]"),
        (PruneSettings(keep_ratio=0.01), "patch tokens in the last block"),
        (PruneSettings(ratio=1.0), "ratio must be in [0, 1)"),
        (PruneSettings(ratio=0.3, keep_ratio=0.8), "give only one of keep_ratio and ratio"),
        (PruneSettings(prune_after=(5, 24)), "cannot prune after 24 block(s)"),
        (PruneSettings(prune_after=(10, 5)), "increasing"),
        (PruneSettings(prune_after=(0,)), "cannot prune after 0"),
        (PruneSettings(importance="attention"), "unknown importance"),
    ],
)
def test_impossible_settings_are_one_line_errors(settings, fragment):
    assert fragment in one_line_error(create_model, "vim_s", prune=settings)


def test_released_blocks_do_not_fit_a_shallow_model():
    assert "depth-6" in one_line_error(create_model, "vim_t", prune=PruneSettings(), depth=6)


def oracle_keep(hidden, residual, scan_output, num_keep, cls_index):
    """One batch item at a time, in plain Python: score m = sum_d max(0, y[m, d]); the num_keep - 1
    best non-class tokens (score descending, then position ascending; NaN lowest) in spatial order,
    the class token inserted at (num_keep - 1) // 2."""
    kept_h, kept_r = [], []
    for b in range(hidden.shape[0]):
        scores = []
        for m in range(hidden.shape[1]):
            total = 0.0
            for d in range(scan_output.shape[2]):
                value = float(scan_output[b, m, d])
                total += value if value > 0 or math.isnan(value) else 0.0  # clipping keeps a NaN a NaN
            scores.append(-math.inf if math.isnan(total) else total)
        others = [m for m in range(hidden.shape[1]) if m != cls_index]
        best = sorted(others, key=lambda m: (-scores[m], m))[: num_keep - 1]
        order = sorted(best)
        order.insert((num_keep - 1) // 2, cls_index)
        kept_h.append(hidden[b, order])
        kept_r.append(residual[b, order])
    return torch.stack(kept_h), torch.stack(kept_r)


@pytest.mark.parametrize("cls_index, num_keep", [(8, 13), (0, 9), (16, 5), (8, 17)])
def test_pruning_step_matches_the_loop_oracle(cls_index, num_keep):
    generator = torch.Generator().manual_seed(cls_index + num_keep)
    hidden = torch.randn(3, 17, 6, generator=generator)
    residual = torch.randn(3, 17, 6, generator=generator)
    scan_output = torch.randn(3, 17, 5, generator=generator)
    scan_output[0, 3] = -1.0  # clipped to a zero score: ties with token 5, the lower position must win
    scan_output[0, 5] = -2.0
    scan_output[1, 2] = scan_output[1, 7]  # an exact tie between two positive scores
    scan_output[2, 4, 0] = float("nan")  # NaN scores are pruned first
    new_hidden, new_residual, new_cls = keep_important_tokens(
        hidden, residual, ssm_importance(scan_output), num_keep, cls_index
    )
    expected_hidden, expected_residual = oracle_keep(hidden, residual, scan_output, num_keep, cls_index)
    assert new_cls == (num_keep - 1) // 2
    assert torch.equal(new_hidden, expected_hidden) and torch.equal(new_residual, expected_residual)
    assert torch.equal(new_hidden[:, new_cls], hidden[:, cls_index])


def test_importance_is_per_batch_item_and_position():
    """Every batch item is pruned on its own scores (the released code masks the class token of item 0 only)."""
    scan_output = torch.zeros(2, 5, 3)
    scan_output[0, 0] = 1.0  # item 0 values token 0 ...
    scan_output[1, 4] = 1.0  # ... item 1 token 4
    hidden = torch.arange(5.0)[None, :, None].repeat(2, 1, 1)
    pruned, _, _ = keep_important_tokens(hidden, hidden.clone(), ssm_importance(scan_output), 3, 2)
    assert pruned[0, :, 0].tolist() == [0.0, 2.0, 1.0]  # kept token 0, then token 1 (tie: lower position)
    assert pruned[1, :, 0].tolist() == [0.0, 2.0, 4.0]


SMALL = dict(embed_dim=32, depth=4, img_size=32, patch_size=8, num_classes=10, d_state=4)


def test_pruned_model_matches_a_block_by_block_oracle():
    torch.manual_seed(0)
    model = create_model("vim_t", prune=PruneSettings(keep_ratio=0.6, prune_after=(1, 3)), **SMALL).eval()
    images = torch.randn(2, 3, 32, 32)
    assert model.schedule.tokens_per_block == (17, 11, 11, 7)
    with torch.no_grad():
        x = model.patch_embed(images)
        cls = model.cfg.cls_index
        x = torch.cat([x[:, :cls], model.cls_token.expand(2, -1, -1), x[:, cls:]], dim=1) + model.pos_embed
        hidden, residual = x, None
        for index, layer in enumerate(model.layers):
            hidden, residual, scan_output = layer.forward_with_scan_output(hidden, residual)
            if index + 1 in (1, 3):
                hidden, residual = oracle_keep(hidden, residual, scan_output, model.schedule.tokens_per_block[index + 1], cls)
                cls = (hidden.shape[1] - 1) // 2
        expected = model.head(model.norm_f(residual + hidden)[:, cls])
        assert torch.allclose(model(images), expected, rtol=0, atol=0)


def test_keep_ratio_one_leaves_the_model_unchanged():
    torch.manual_seed(0)
    plain = create_model("vim_t", **SMALL).eval()
    pruned = create_model("vim_t", prune=PruneSettings(keep_ratio=1.0, prune_after=(2,)), **SMALL).eval()
    pruned.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(images), pruned(images))
