"""Fixtures of the export tests: the small merged test model, its exports and test images."""

from __future__ import annotations

import pytest
import torch
from export_test_models import EXPORT_BATCH, IMAGES, SMALL, small_model

from rmeeto_export.export import export_onnx
from rmeeto_export.models.vim import Vim


@pytest.fixture(scope="session")
def merged_model() -> Vim:
    return small_model()


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(IMAGES, 3, SMALL["img_size"], SMALL["img_size"], generator=generator)


@pytest.fixture(scope="session")
def exported(merged_model, tmp_path_factory):
    """{(precision, portable): path} of the merged test model exported at batch EXPORT_BATCH."""
    folder = tmp_path_factory.mktemp("exported")
    return {
        (precision, portable): export_onnx(
            merged_model, folder / f"{precision}_{portable}.onnx", batch=EXPORT_BATCH, precision=precision, portable=portable
        )
        for precision in ("fp32", "fp16")
        for portable in (False, True)
    }
