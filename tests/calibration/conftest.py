"""Shared fixtures: the tiny merged Vim (17 tokens, r=2 at block 2), its two fp32 exports, a folder of
random calibration images, a calibration cache and the INT8 graphs. Built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # calibration_helpers.py sits next to the tests

from calibration_helpers import NUM_IMAGES, TINY, write_random_images  # noqa: E402

from rmeeto_export.calibration import calibrate, quantize  # noqa: E402
from rmeeto_export.calibration.images import list_images, load_image  # noqa: E402
from rmeeto_export.export import export_onnx  # noqa: E402
from rmeeto_export.models import create_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return create_model("vim_t", **TINY).eval()


@pytest.fixture(scope="session")
def fp32_graphs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """{"plugin": custom nodes + function bodies, "portable": functions inlined}, fp32, batch 1."""
    folder = tmp_path_factory.mktemp("fp32")
    return {
        "plugin": export_onnx(tiny_model, folder / "model.onnx"),
        "portable": export_onnx(tiny_model, folder / "model.portable.onnx", portable=True),
    }


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_random_images(tmp_path_factory.mktemp("calibration-images"), NUM_IMAGES, seed=1)


@pytest.fixture(scope="session")
def image_batch(image_folder) -> torch.Tensor:
    """The calibration images, preprocessed, as one (N, 3, 32, 32) batch."""
    return torch.from_numpy(np.stack([load_image(path, TINY["img_size"]) for path in list_images(str(image_folder))]))


@pytest.fixture(scope="session")
def cache_path(fp32_graphs, image_folder, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "calibration.json"
    calibrate(fp32_graphs["plugin"], path, str(image_folder), NUM_IMAGES, "percentile")
    return path


@pytest.fixture(scope="session")
def int8_graphs(fp32_graphs, cache_path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("int8")
    return {kind: quantize(path, cache_path, folder / f"{kind}.int8.onnx") for kind, path in fp32_graphs.items()}
