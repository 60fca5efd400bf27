"""Build folders for the pipeline tests, each built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rmeeto_export.pipelines.build import build
from rmeeto_export.pipelines.settings import BuildSettings
from tests.support.builds import CALIBRATION_IMAGES, int8_settings
from tests.support.images import write_noise_images


@pytest.fixture(scope="session")
def calibration_images(tmp_path_factory) -> Path:
    return write_noise_images(tmp_path_factory.mktemp("calibration-images"), CALIBRATION_IMAGES, seed=0)


@pytest.fixture(scope="session")
def int8_build(tmp_path_factory, calibration_images) -> tuple[Path, BuildSettings, list[str]]:
    """A complete tiny INT8 build folder (every stage but re-training); copy it before changing it."""
    out = tmp_path_factory.mktemp("int8-build") / "out"
    settings = int8_settings(calibration_images)
    lines: list[str] = []
    build(settings, out, log=lines.append)
    return out, settings, lines


@pytest.fixture
def int8_copy(int8_build, tmp_path) -> Path:
    copy = tmp_path / "build"
    shutil.copytree(int8_build[0], copy)
    return copy
