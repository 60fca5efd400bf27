"""Session fixtures: the tiny merged Vim's ONNX exports, calibration images, a calibration cache and
the INT8 graphs, each made once and only when a test asks for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rmeeto_export.models.vim import Vim
from tests.support.images import write_noise_images
from tests.support.models import TINY_VIM, tiny_vim

CALIBRATION_IMAGES = 12


class TinyExports:
    """(precision, portable) -> ONNX file of one model at batch 1, exported on first use."""

    def __init__(self, model: Vim, folder: Path) -> None:
        self.model, self.folder, self._paths = model, folder, {}

    def __getitem__(self, key: tuple[str, bool]) -> Path:
        from rmeeto_export.export import export_onnx

        if key not in self._paths:
            precision, portable = key
            folder = self.folder / precision  # the build folder's names: model.onnx, model.portable.onnx
            folder.mkdir(exist_ok=True)
            path = folder / ("model.portable.onnx" if portable else "model.onnx")
            self._paths[key] = export_onnx(self.model, path, precision=precision, portable=portable)
        return self._paths[key]


@pytest.fixture(scope="session")
def tiny_model() -> Vim:
    return tiny_vim()


@pytest.fixture(scope="session")
def tiny_exports(tiny_model, tmp_path_factory) -> TinyExports:
    return TinyExports(tiny_model, tmp_path_factory.mktemp("tiny-exports"))


@pytest.fixture(scope="session")
def fp32_graphs(tiny_exports) -> dict[str, Path]:
    """{"plugin": custom nodes + function bodies, "portable": functions inlined}, fp32, batch 1."""
    return {"plugin": tiny_exports["fp32", False], "portable": tiny_exports["fp32", True]}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_noise_images(tmp_path_factory.mktemp("calibration-images"), CALIBRATION_IMAGES, seed=1)


@pytest.fixture(scope="session")
def image_batch(image_folder) -> torch.Tensor:
    """The calibration images, preprocessed, as one (N, 3, 32, 32) batch."""
    from rmeeto_export.calibration.images import list_images, load_image

    return torch.from_numpy(np.stack([load_image(path, TINY_VIM["img_size"]) for path in list_images(str(image_folder))]))


@pytest.fixture(scope="session")
def cache_path(fp32_graphs, image_folder, tmp_path_factory) -> Path:
    from rmeeto_export.calibration import calibrate

    path = tmp_path_factory.mktemp("cache") / "calibration.json"
    calibrate(fp32_graphs["plugin"], path, str(image_folder), CALIBRATION_IMAGES, "percentile")
    return path


@pytest.fixture(scope="session")
def int8_graphs(fp32_graphs, cache_path, tmp_path_factory) -> dict[str, Path]:
    from rmeeto_export.calibration import quantize

    folder = tmp_path_factory.mktemp("int8")
    return {kind: quantize(path, cache_path, folder / f"{kind}.int8.onnx") for kind, path in fp32_graphs.items()}
