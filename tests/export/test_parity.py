"""Parity report: metrics that catch wrong logits, and check_parity end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.export.parity import TOLERANCES, check_parity, compare_logits
from tests.support.models import tiny_vim


def logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, size=(16, 10))


def test_identical_logits_pass_with_zero_error():
    expected = logits()
    report = compare_logits(expected.copy(), expected, "fp32", "CPUExecutionProvider")
    assert report.passed and report.max_abs == 0.0 and report.top1_agreement == 1.0
    assert report.min_cosine == pytest.approx(1.0)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_error_above_the_tolerance_fails(precision):
    expected = logits()
    scale = np.abs(expected).max()
    actual = expected.copy()
    actual[3, 4] += 2 * TOLERANCES[precision].max_rel * scale
    report = compare_logits(actual, expected, precision, "CPUExecutionProvider")
    assert not report.passed and report.max_rel == pytest.approx(2 * TOLERANCES[precision].max_rel)


def test_decisive_top1_flip_fails_but_a_near_tie_flip_does_not_count():
    expected = logits()
    expected[0, :2] = [10.0, 9.0]  # wide margin
    expected[1, :2] = [10.0, 10.0 - 1e-9]  # near-tie
    for row in (0, 1):
        expected[row, 2:] = 0.0
    tie_flipped = expected.copy()
    tie_flipped[1, :2] = [10.0 - 1e-9, 10.0]
    report = compare_logits(tie_flipped, expected, "fp32", "CPUExecutionProvider")
    assert report.top1_agreement == pytest.approx(15 / 16) and report.decisive_top1_mismatches == 0
    decisive = expected.copy()
    decisive[0, :2] = [9.0, 10.0]
    report = compare_logits(decisive, expected, "fp16", "CPUExecutionProvider")
    assert report.decisive_top1_mismatches == 1 and not report.passed


def test_check_parity_passes_for_the_export_and_is_json_ready(exported, merged_model, images):
    for (precision, portable), path in exported.items():
        report = check_parity(merged_model, path, images, precision)
        assert report.passed, (precision, portable, report)
        assert report.images == len(images) and report.provider.endswith("ExecutionProvider")
        assert json.loads(json.dumps(report.to_dict()))["tolerance"]["max_rel"] == TOLERANCES[precision].max_rel


def test_check_parity_fails_against_another_model(exported, images):
    other = tiny_vim(seed=1, spread_logits=True)
    assert not check_parity(other, exported[("fp32", False)], images, "fp32").passed


def test_check_parity_bad_inputs_are_user_errors(exported, merged_model, images, tmp_path):
    path = exported[("fp32", False)]
    with pytest.raises(UserError, match="do not split into batches"):
        check_parity(merged_model, path, images[:5], "fp32")
    with pytest.raises(UserError, match="not found"):
        check_parity(merged_model, tmp_path / "missing.onnx", images, "fp32")
    with pytest.raises(UserError, match="unknown precision"):
        check_parity(merged_model, path, images, "bf8")
    with pytest.raises(UserError, match="fp32 PyTorch model"):
        check_parity(tiny_vim(spread_logits=True).half(), path, images, "fp32")
