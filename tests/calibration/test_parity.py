"""INT8 parity criteria on constructed logits, and the images the build checks INT8 graphs on."""

import numpy as np
import pytest

from rmeeto_export.calibration.images import held_out_images, list_images, pick
from rmeeto_export.calibration.parity import compare_int8_logits
from tests.support.images import write_noise_images


def logits(count: int, seed: int) -> np.ndarray:
    """Confident logits: one class well ahead, so that small errors cannot swap top-1."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1, (count, 10))
    values[np.arange(count), rng.integers(0, 10, count)] += 8
    return values


def test_a_few_images_far_off_pass_when_the_typical_image_is_close():
    """What a merged model does under INT8: 2 of 64 images take another merge path and land far off."""
    expected = logits(64, seed=0)
    actual = expected + np.random.default_rng(1).normal(0, 0.02, expected.shape)
    actual[:2] = np.random.default_rng(2).normal(0, 3, (2, 10))
    parity = compare_int8_logits(actual, expected, "cpu")
    assert parity.mean_cosine < 0.99 < parity.median_cosine  # the mean alone would fail it
    assert parity.top1_agreement >= 0.95 and parity.passed


def test_a_distortion_of_every_image_fails():
    """What clipped ranges do: every image moves by a tenth of its logit vector."""
    expected = logits(64, seed=0)
    actual = expected + np.random.default_rng(1).normal(0, 0.35, expected.shape) * np.abs(expected).max()
    parity = compare_int8_logits(actual, expected, "cpu")
    assert parity.median_cosine < 0.99 and not parity.passed


def test_too_many_swapped_images_fail_even_if_close():
    expected = logits(64, seed=0)
    actual = expected.copy()
    swapped = np.arange(8)
    top = expected[swapped].argmax(axis=1)
    actual[swapped, top] = expected[swapped].max(axis=1) - 0.5  # top-1 drops to second place
    actual[swapped, (top + 1) % 10] = expected[swapped].max(axis=1)
    parity = compare_int8_logits(actual, expected, "cpu")
    assert parity.top1_agreement == 56 / 64 and not parity.passed


def test_held_out_images_of_a_tree_are_its_val_split(tmp_path):
    for split in ("train", "val"):
        for label in ("a", "b"):
            write_noise_images(tmp_path / split / label, 3, seed=0)
    chosen = held_out_images(str(tmp_path), 4, calibration_num=6)
    assert len(chosen) == 4 and all("/val/" in path for path in chosen)


@pytest.mark.parametrize("calibration_num, num", [(4, 6), (4, 12), (12, 5)])
def test_held_out_images_of_a_folder_come_unseen_first(tmp_path, calibration_num, num):
    folder = write_noise_images(tmp_path, 12, seed=0)
    calibration = set(pick(list_images(str(folder)), calibration_num))
    chosen = held_out_images(str(folder), num, calibration_num)
    unseen = [path for path in chosen if path not in calibration]
    assert len(chosen) == len(set(chosen)) == num
    assert chosen[: len(unseen)] == unseen and len(unseen) == min(num, 12 - calibration_num)
