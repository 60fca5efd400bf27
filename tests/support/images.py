"""Folders of small PNG images: plain folders of noise, ImageFolder trees, or a given layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="PNG")


def write_noise_images(folder: Path, count: int, seed: int, size: tuple[int, int] = (40, 40)) -> Path:
    """`count` uniform-noise RGB images 0.png, 1.png, ... (height, width = size) in one plain folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        _write_png(folder / f"{index}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return folder


def write_class_folders(root: Path, classes: int, per_split: dict[str, int], seed: int = 0) -> Path:
    """root/<split>/class<k>/<i>.png; class k is brighter than class k-1, so there is something to learn."""
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for label in range(classes):
            for index in range(count):
                _write_png(root / split / f"class{label}" / f"{index}.png", rng.random((20, 24, 3)) * 80 + label * 80)
    return root


def write_layout(root: Path, layout: dict[str, dict[str, list[str]]]) -> Path:
    """layout: split -> class -> file names; every file is a small valid PNG whatever its suffix."""
    for split, classes in layout.items():
        for name, files in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)  # also for an empty class
            for file in files:
                _write_png(root / split / name / file, np.full((4, 4, 3), 128))
    return root
