"""Every bad input is found before the first stage: one `error:` line, exit 1, and no folder left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rmeeto_export.cli import main
from tests.support.builds import TINY_FLAGS
from tests.support.backends import HAS_RTX, RTX_MISSING
from tests.support.images import write_class_folders, write_noise_images
from tests.support.models import TRAINABLE_CLASSES, TRAINABLE_VIM

TRAINABLE_FLAGS = ["--model", "vim_t", "--r", "1", "--batch-size", "2", "--workers", "0",
                   *(flag for key, value in TRAINABLE_VIM.items() for flag in ("--override", f"{key}={value}"))]


def assert_one_line_error(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.output
    assert expected in lines[-1] and "Traceback" not in result.output


def calibration_folder(root: Path, kind: str) -> Path:
    folder = root / "calib"
    if kind == "empty":
        folder.mkdir()
    else:
        write_noise_images(folder, 4, seed=0)
        if kind == "unreadable":
            (folder / "3.png").write_bytes(b"\x89PNG not really")
    return folder


@pytest.fixture(scope="module")
def vim_s_weights(tmp_path_factory) -> Path:
    with torch.device("meta"):
        from rmeeto_export.models import create_model

        shapes = {k: v.shape for k, v in create_model("vim_s").state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vim_s.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in shapes.items()}}, path)
    return path


@pytest.fixture(scope="module")
def trainable_weights(tmp_path_factory) -> Path:
    from rmeeto_export.models import create_model

    path = tmp_path_factory.mktemp("weights") / "trainable.pth"
    torch.save({"model": create_model("vim_t", num_classes=TRAINABLE_CLASSES, **TRAINABLE_VIM).state_dict()}, path)
    return path


def training_folder(root: Path, kind: str) -> Path:
    data = write_class_folders(root / "data", TRAINABLE_CLASSES, {"train": 2, "val": 1})
    if kind == "empty class":
        (data / "train" / "class3").mkdir()
        (data / "val" / "class3").mkdir()
    else:
        (data / "val" / "class1" / "0.png").write_bytes(b"\x89PNG broken")
    return data


BUILD_CASES = {  # id: (arguments after `build`, given tmp_path; expected message)
    "unknown model": (lambda tmp, w: ["--model", "vim_q"], "unknown model 'vim_q'"),
    "bad ratio": (lambda tmp, w: ["--model", "vim_t", "--ratio", "1.2"], "ratio"),
    "ratio and r": (lambda tmp, w: ["--model", "vim_t", "--ratio", "0.1", "--r", "1"], "give only one of --ratio and --r"),
    "missing weights": (lambda tmp, w: ["--model", "vim_t", "--weights", str(tmp / "nope.pth")], "weights file not found"),
    "weights of another model": (lambda tmp, w: ["--model", "vim_t", "--weights", str(w)], "does not fit this model"),
    "unreadable weights": (lambda tmp, w: ["--model", "vim_t", "--weights", str(tmp / "file")],
                           "not a weights-only PyTorch checkpoint"),
    "int8 without images": (lambda tmp, w: [*TINY_FLAGS, "--precision", "int8"], "needs calibration images"),
    "empty calibration folder": (lambda tmp, w: [*TINY_FLAGS, "--precision", "int8", "--calib-data",
                                                 str(calibration_folder(tmp, "empty"))], "no images in"),
    "unreadable calibration image": (lambda tmp, w: [*TINY_FLAGS, "--precision", "int8", "--calib-data",
                                                     str(calibration_folder(tmp, "unreadable"))],
                                     "unreadable calibration image"),
    "fewer calibration images than the batch": (lambda tmp, w: [*TINY_FLAGS, "--precision", "int8", "--batch", "8",
                                                                "--calib-data", str(calibration_folder(tmp, "good"))],
                                                "fewer than the graph's batch of 8"),
    "calibration method out of range": (lambda tmp, w: [*TINY_FLAGS, "--calib-smoothing-alpha", "3"],
                                        "smoothing alpha must be in [0, 1]"),
    "target not understood": (lambda tmp, w: [*TINY_FLAGS, "--target-cc", "ampere"], "not understood"),
    "out under /proc": (lambda tmp, w: [*TINY_FLAGS, "--out", "/proc/rmeeto-export-test/out"],
                        "cannot create output folder /proc/rmeeto-export-test/out"),
    "out under a file": (lambda tmp, w: [*TINY_FLAGS, "--out", str(tmp / "file" / "out")],
                         "cannot create output folder"),
    "out is a folder of other things": (lambda tmp, w: [*TINY_FLAGS, "--out", str(tmp / "other")],
                                        "is not empty and not a build folder"),
}


@pytest.mark.parametrize(("arguments", "expected"), list(BUILD_CASES.values()), ids=list(BUILD_CASES))
def test_bad_build_input_is_one_line_and_leaves_no_folder(tmp_path, vim_s_weights, arguments, expected):
    (tmp_path / "file").write_text("")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    args = arguments(tmp_path, vim_s_weights)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, ["build", *args, *out])
    assert_one_line_error(result, expected)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    assert not Path("/proc/rmeeto-export-test").exists()


@pytest.mark.parametrize(("kind", "expected"), [("empty class", "has no images"),
                                                ("unreadable", "unreadable val image")])
def test_bad_training_folder_fails_before_any_stage(tmp_path, trainable_weights, kind, expected):
    data = training_folder(tmp_path, kind)
    result = CliRunner().invoke(main, ["build", *TRAINABLE_FLAGS, "--weights", str(trainable_weights),
                                       "--data", str(data), "--out", str(tmp_path / "out")])
    assert_one_line_error(result, expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_RTX, reason=RTX_MISSING)
def test_target_the_installed_builder_lacks_fails_before_any_stage(tmp_path):
    result = CliRunner().invoke(main, ["build", *TINY_FLAGS, "--trt", "tensorrt-rtx", "--target-cc", "sm90",
                                       "--out", str(tmp_path / "out")])
    assert_one_line_error(result, "cannot build for sm90")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_RTX, reason=RTX_MISSING)
def test_plugins_on_without_the_library_fails_before_any_stage(tmp_path, no_plugin_library):
    result = CliRunner().invoke(main, ["build", *TINY_FLAGS, "--trt", "tensorrt-rtx", "--plugins", "on",
                                       "--out", str(tmp_path / "out")])
    assert_one_line_error(result, "--plugins on: no C++ plugin library for tensorrt-rtx")
    assert not (tmp_path / "out").exists()


def test_tensorrt_that_does_not_import_is_reported_as_such_not_as_missing(tmp_path, monkeypatch):
    """--trt auto skips the engine only when no TensorRT is installed; a broken one is an error saying so."""
    import importlib
    import importlib.util

    from rmeeto_export.trt import backend as backend_module

    real_find_spec, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(backend_module.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt" else (
                            None if name == "tensorrt_rtx" else real_find_spec(name, *a)))

    def import_module(name, *args):
        if name == "tensorrt":
            raise ImportError("libnvinfer.so.10: cannot open shared object file")
        return real_import(name, *args)

    monkeypatch.setattr(backend_module.importlib, "import_module", import_module)
    result = CliRunner().invoke(main, ["build", *TINY_FLAGS, "--out", str(tmp_path / "out")])
    assert_one_line_error(result, "tensorrt is installed but does not import (libnvinfer.so.10: cannot open")
    assert not (tmp_path / "out").exists()


def test_a_killed_runs_staging_folder_does_not_block_the_next_build(tmp_path):
    from rmeeto_export.errors import UserError
    from rmeeto_export.pipelines.checks import check_out_folder

    out = tmp_path / "out"
    (out / ".staging-load").mkdir(parents=True)  # what a kill -9 during the first stage leaves
    check_out_folder(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and not a build folder"):
        check_out_folder(out)


def test_large_image_folders_are_checked_on_a_seeded_sample_that_is_said(tmp_path):
    from rmeeto_export.pipelines.checks import SAMPLED_IMAGES, check_decodable

    folder = write_noise_images(tmp_path / "many", SAMPLED_IMAGES + 8, seed=0, size=(4, 4))
    paths = sorted(str(p) for p in folder.iterdir())
    assert check_decodable(paths, "calibration image") == \
        f"a seeded sample of {SAMPLED_IMAGES} of the {SAMPLED_IMAGES + 8} calibration images"
    assert check_decodable(paths[:3], "calibration image") == "all 3 calibration images"
