"""Image transforms in Pillow + NumPy: a reduced DeiT training augmentation and the standard eval crop.

Training (what the official recipe uses, and what of it is here):
- RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3, bicubic) and horizontal flip p=0.5: implemented;
- random erasing (p=0.25, "pixel" mode: a rectangle of 2%-33% of the area, aspect 0.3-3.3, filled
  with per-pixel N(0, 1) noise in normalised space): implemented;
- RandAugment (rand-m9-mstd0.5-inc1) and the repeated-augmentation sampler: NOT implemented. A short
  re-training from a converged model is little affected by them; mixup/cutmix live in mixup.py.
Eval: resize the shorter side to size * 256 / 224 (bicubic), then a centre crop of size x size.

Every random choice draws from the numpy Generator passed in, so a sample's augmentation depends
only on that generator's seed, never on the worker or process that decodes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
from PIL import Image, UnidentifiedImageError

from rmeeto_export.errors import UserError, first_line

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EVAL_CROP_FRACTION = 224 / 256
_CROP_ATTEMPTS = 10
_ERASE_ATTEMPTS = 10
_ERASE_AREA = (0.02, 1 / 3)
_ERASE_ASPECT = (0.3, 1 / 0.3)

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation; the defaults are DeiT's (the R-MeeTo recipe's) values."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    erase_prob: float = 0.25


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _central_box(width: int, height: int, ratio: tuple[float, float]) -> Box:
    """The largest centred box whose aspect ratio is clamped into `ratio` (the crop fallback)."""
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: np.random.Generator) -> Box:
    """A box covering a random fraction `scale` of the area with a log-uniform aspect ratio in `ratio`."""
    area = width * height
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * rng.uniform(*scale)
        aspect = _log_uniform(rng, *ratio)
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return _central_box(width, height, ratio)


class UnreadableImage(UserError):
    """An image file Pillow cannot decode."""


def read_rgb(path: str, role: str = "image") -> Image.Image:
    """The decoded image in RGB; UnreadableImage "unreadable <role> <path>: <reason>" otherwise."""
    try:
        with Image.open(path) as file:
            return file.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UnreadableImage(f"unreadable {role} {path}: {first_line(err)}") from None


def normalize(image: Image.Image) -> np.ndarray:
    """RGB image -> float32 (3, H, W) with ImageNet mean/std."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def random_erase(chw: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """With probability `prob`, fill one random rectangle with N(0, 1) noise (in place; returns chw)."""
    if prob <= 0 or rng.uniform() >= prob:
        return chw
    channels, height, width = chw.shape
    for _ in range(_ERASE_ATTEMPTS):
        target_area = height * width * rng.uniform(*_ERASE_AREA)
        aspect = _log_uniform(rng, *_ERASE_ASPECT)
        h = round(math.sqrt(target_area * aspect))
        w = round(math.sqrt(target_area / aspect))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            chw[:, top : top + h, left : left + w] = rng.standard_normal((channels, h, w), dtype=np.float32)
            return chw
    return chw


def train_transform(image: Image.Image, size: int, settings: AugmentSettings, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop to size x size, random flip, normalise, random erasing."""
    box = random_resized_box(image.width, image.height, settings.crop_scale, settings.crop_ratio, rng)
    crop = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if rng.uniform() < settings.hflip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return random_erase(normalize(crop), settings.erase_prob, rng)


def eval_transform(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to size / 0.875, centre-crop size x size, normalise."""
    shorter = int(size / EVAL_CROP_FRACTION)
    scale = shorter / min(image.width, image.height)
    resized = image.resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.Resampling.BICUBIC
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return normalize(resized.crop((left, top, left + size, top + size)))
