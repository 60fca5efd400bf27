"""Calibration images: a plain folder of images or an ImageFolder tree, preprocessed like evaluation.

From an ImageFolder tree (DIR/train/<class>/..., DIR/val/<class>/...) only train/ is used, so that
calibration never sees the images accuracy is measured on. The `num` images are a seeded random
pick over the sorted file list (every class is represented, the choice is reproducible), decoded and
cropped with the same eval transform the re-training pipeline evaluates with.

The INT8 parity check takes its images from the same place, but ones calibration did not use: the
val/ of a tree, or the rest of a plain folder after the calibration pick (topped up with calibration
images where the folder has too few others).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rmeeto_export.data.folder import IMAGE_SUFFIXES, scan_image_folder
from rmeeto_export.data.transforms import eval_transform, read_rgb
from rmeeto_export.errors import UserError

PICK_SEED = 0


def _is_split_tree(path: Path) -> bool:
    """An ImageFolder root with train/ and val/ splits, rather than a plain folder of images."""
    return (path / "train").is_dir() and (path / "val").is_dir()


def list_images(root: str) -> list[str]:
    """Image files under `root` (train/ of an ImageFolder tree), sorted."""
    path = Path(root)
    if not path.is_dir():
        raise UserError(f"calibration data folder not found: {root}")
    if _is_split_tree(path):
        return sorted(image for image, _ in scan_image_folder(root).train)
    images = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _pick_order(count: int) -> np.ndarray:
    return np.random.default_rng(PICK_SEED).permutation(count)


def pick(images: list[str], num: int) -> list[str]:
    """`num` of `images` (all of them if there are fewer), seeded, in a fixed order."""
    if num < 1:
        raise UserError(f"the number of calibration images must be positive, got {num}")
    return [images[i] for i in sorted(_pick_order(len(images))[:num])]


def held_out_images(root: str, num: int, calibration_num: int) -> list[str]:
    """`num` images under `root` for checking an INT8 graph calibrated on `pick(list_images(root), calibration_num)`,
    those it did not see first."""
    if _is_split_tree(Path(root)):
        return pick(sorted(image for image, _ in scan_image_folder(root).val), num)
    images = list_images(root)
    order = _pick_order(len(images))
    unseen_first = np.concatenate([order[calibration_num:], order[:calibration_num]])
    return [images[i] for i in unseen_first[:num]]


def load_image(path: str, size: int) -> np.ndarray:
    """One preprocessed image, float32 (3, size, size)."""
    return eval_transform(read_rgb(path, role="calibration image"), size)
