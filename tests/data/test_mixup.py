"""Mixup/CutMix soft targets: label smoothing, mixing weights that match the pixels."""

import numpy as np
import pytest
import torch

from rmeeto_export.data import MixSettings, mix_batch, smoothed_one_hot


def test_smoothed_one_hot_values():
    targets = smoothed_one_hot(torch.tensor([2, 0]), 4, 0.1)
    torch.testing.assert_close(targets[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    torch.testing.assert_close(targets.sum(-1), torch.ones(2))


def test_disabled_mixing_returns_the_images_and_smoothed_labels():
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = mix_batch(images, labels, 5, MixSettings(mixup_alpha=0, cutmix_alpha=0), np.random.default_rng(0))
    assert mixed is images
    torch.testing.assert_close(targets, smoothed_one_hot(labels, 5, 0.1))


def test_mixup_weight_is_the_same_in_pixels_and_targets():
    images = torch.stack([torch.full((3, 4, 4), 1.0), torch.zeros(3, 4, 4)])
    labels = torch.tensor([0, 1])
    mixed, targets = mix_batch(images, labels, 2, MixSettings(cutmix_alpha=0, smoothing=0), np.random.default_rng(3))
    lam = mixed[0, 0, 0, 0].item()  # image 0 is ones mixed with image 1 (zeros)
    assert 0 < lam < 1
    torch.testing.assert_close(mixed[0], torch.full((3, 4, 4), lam))
    torch.testing.assert_close(targets[0], torch.tensor([lam, 1 - lam]))


@pytest.mark.parametrize("seed", range(10))
def test_cutmix_target_weight_is_the_exact_pasted_area(seed):
    images = torch.stack([torch.ones(3, 10, 10), torch.zeros(3, 10, 10)])
    mixed, targets = mix_batch(images, torch.tensor([0, 1]), 2, MixSettings(mixup_alpha=0, smoothing=0),
                               np.random.default_rng(seed))
    kept_fraction = mixed[0, 0].mean().item()  # share of image 0 still showing
    torch.testing.assert_close(targets[0], torch.tensor([kept_fraction, 1 - kept_fraction]))
    assert set(mixed.unique().tolist()) <= {0.0, 1.0}
