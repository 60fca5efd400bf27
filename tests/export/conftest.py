"""Fixtures of the export tests: the tiny merged model with a spread head, test images, and its exports
at batch EXPORT_BATCH."""

from __future__ import annotations

import pytest
import torch

from rmeeto_export.export import export_onnx
from rmeeto_export.models.vim import Vim
from tests.support.models import TINY_VIM, tiny_vim

EXPORT_BATCH = 8  # a static batch above 1, so that a graph mixing up samples shows
IMAGES = 32


@pytest.fixture(scope="session")
def merged_model() -> Vim:
    return tiny_vim(spread_logits=True)


@pytest.fixture(scope="session")
def export_batch() -> int:
    return EXPORT_BATCH


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(IMAGES, 3, TINY_VIM["img_size"], TINY_VIM["img_size"], generator=generator)


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
