"""Mixup / CutMix with label-smoothed soft targets, the DeiT recipe's batch mode.

Per batch: with probability `prob` mix at all; then CutMix with probability `switch_prob` (when both
are enabled), else Mixup. The batch is mixed with itself reversed, lam ~ Beta(alpha, alpha); for
CutMix lam is corrected to the exact pasted area after the box is clipped to the image. Targets are
lam * smooth(y) + (1 - lam) * smooth(y reversed), smooth putting 1 - smoothing + smoothing / C on
the label and smoothing / C elsewhere. With mixing disabled the targets are the smoothed labels,
i.e. plain label-smoothing cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class MixSettings:
    """Defaults are the official recipe's (DeiT's) values."""

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def smoothed_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about (1 - lam) of the image, centred anywhere, clipped."""
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * cut), int(width * cut)
    centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(centre_y - box_h // 2, 0), min(centre_y + box_h // 2, height)
    left, right = max(centre_x - box_w // 2, 0), min(centre_x + box_w // 2, width)
    return top, bottom, left, right


def mix_batch(images: Tensor, labels: Tensor, num_classes: int, settings: MixSettings,
              rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Returns (mixed images, soft targets (B, num_classes)); `images` is not modified."""
    targets = smoothed_one_hot(labels, num_classes, settings.smoothing)
    if not settings.enabled or rng.uniform() >= settings.prob:
        return images, targets
    use_cutmix = settings.cutmix_alpha > 0 and (settings.mixup_alpha <= 0 or rng.uniform() < settings.switch_prob)
    alpha = settings.cutmix_alpha if use_cutmix else settings.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        mixed = images * lam + partner * (1.0 - lam)
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam)
