"""Helpers shared by the calibration tests (a uniquely named module: tests/ has no __init__.py and
several folders have a conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from PIL import Image

TINY = dict(embed_dim=32, depth=4, img_size=32, patch_size=8, num_classes=10, merge_r=2)
NUM_IMAGES = 12


def write_random_images(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))
