"""Tiny build settings and what the pipeline tests check on a build folder."""

from __future__ import annotations

import json
from pathlib import Path

from rmeeto_export.pipelines.settings import (BuildSettings, CalibrationSettings, ExportSettings, ModelSettings,
                                              ParitySettings)
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
