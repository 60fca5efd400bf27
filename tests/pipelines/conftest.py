"""Tiny build settings and build folders for the pipeline tests, each built once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rmeeto_export.pipelines.build import build
from rmeeto_export.pipelines.settings import (BuildSettings, CalibrationSettings, ExportSettings, ModelSettings,
                                              ParitySettings)
from tests.support.images import write_noise_images
from tests.support.models import TINY_MERGE_R, TINY_VIM

CALIBRATION_IMAGES = 8
TINY_FLAGS = ["--model", "vim_t", "--r", str(TINY_MERGE_R), "--parity-samples", "4",
              *(flag for key, value in TINY_VIM.items() for flag in ("--override", f"{key}={value}"))]


def tiny_settings(**groups) -> BuildSettings:
    """The tiny merged Vim, random weights, 4 parity inputs; `groups` replace whole settings groups."""
    return BuildSettings(model=ModelSettings(name="vim_t", r=TINY_MERGE_R, overrides=TINY_VIM),
                         parity=ParitySettings(samples=4)).replace(**groups)


def int8_settings(images: Path) -> BuildSettings:
    return tiny_settings(export=ExportSettings(precision="int8"),
                         calibration=CalibrationSettings(data=str(images), num=CALIBRATION_IMAGES))


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (manifest and report included)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_manifest_matches_files(folder: Path) -> dict:
    """manifest.json lists exactly the artifacts present, with their sizes and sha256; returns it."""
    from rmeeto_export.files import file_sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    present = set(files_of(folder)) - {"manifest.json", "report.md"}
    assert set(manifest["artifacts"]) == present
    for name, artifact in manifest["artifacts"].items():
        assert artifact == {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}, name
    return manifest


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
