"""`rmeeto-export calibrate --out DIR --data IMAGES`: writes the cache and both INT8 graphs; errors are one line."""

import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from rmeeto_export.calibration import load_cache
from rmeeto_export.cli import main
from rmeeto_export.pipelines.build import build
from tests.support.builds import assert_manifest_matches_files, files_of, tiny_settings

BUILT = ["manifest.json", "model.onnx", "model.portable.onnx", "parity.json", "report.md", "schedule.json"]


@pytest.fixture(scope="module")
def fp32_build(tmp_path_factory):
    """A tiny fp32 build folder, made once and copied for each test."""
    out = tmp_path_factory.mktemp("fp32-build") / "out"
    build(tiny_settings(), out, log=lambda _: None)
    return out


@pytest.fixture
def build_dir(fp32_build, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(fp32_build, copy)
    return copy


def test_calibrate_writes_cache_and_int8_twins(build_dir, image_folder):
    result = CliRunner().invoke(main, ["calibrate", "--out", str(build_dir), "--data", str(image_folder), "--num", "4",
                                       "--method", "max"])
    assert result.exit_code == 0, result.output
    written = {"calibration.json", "model.int8.onnx", "model.portable.int8.onnx"}
    assert written <= set(assert_manifest_matches_files(build_dir)["artifacts"])
    for name in ("model.int8.onnx", "model.portable.int8.onnx"):
        ops = {node.op_type for node in onnx.load(str(build_dir / name)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("extra, alpha", [([], 0.5), (["--smoothing-alpha", "0.8"], 0.8), (["--no-smoothing"], None)])
def test_smoothing_options_reach_the_cache(build_dir, image_folder, extra, alpha):
    result = CliRunner().invoke(main, ["calibrate", "--out", str(build_dir), "--data", str(image_folder), "--num", "2",
                                       "--method", "max", *extra])
    assert result.exit_code == 0, result.output
    cache = load_cache(build_dir / "calibration.json")
    assert cache.settings.smoothing_alpha == alpha and bool(cache.smoothing) == (alpha is not None)


@pytest.mark.parametrize(
    "data, extra, message",
    [
        ("empty", [], "error: no images in"),
        ("images", ["--smoothing-alpha", "2"], "error: smoothing alpha must be in [0, 1]"),
        ("images", ["--percentile", "20"], "error: percentile must be in (50, 100]"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(build_dir, image_folder, tmp_path_factory, data, extra, message):
    folder = tmp_path_factory.mktemp("empty") if data == "empty" else image_folder
    before = files_of(build_dir)
    result = CliRunner().invoke(main, ["calibrate", "--out", str(build_dir), "--data", str(folder), *extra])
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1
    assert files_of(build_dir) == before


@pytest.mark.parametrize("extra, message", [(["--method", "kl"], "Invalid value for '--method'"),
                                            (["--num", "0"], "Invalid value for '--num'")])
def test_options_out_of_range_are_usage_errors(build_dir, image_folder, extra, message):
    result = CliRunner().invoke(main, ["calibrate", "--out", str(build_dir), "--data", str(image_folder), *extra])
    assert result.exit_code == 2 and message in result.output


def test_folder_without_a_build_is_explained(tmp_path, image_folder):
    result = CliRunner().invoke(main, ["calibrate", "--out", str(tmp_path), "--data", str(image_folder)])
    assert result.exit_code == 1 and "run `rmeeto-export build" in result.output



def test_onnxruntime_helper_files_stay_out_of_the_build_folder(build_dir, image_folder, monkeypatch):
    """ONNX Runtime writes a shape-inferred copy beside the model it calibrates: it must not be the build's."""
    written = []
    original = onnx.shape_inference.infer_shapes_path

    def spy(model_path, output_path="", *args, **kwargs):
        written.append(Path(output_path or model_path).parent)
        return original(model_path, output_path, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", spy)
    result = CliRunner().invoke(main, ["calibrate", "--out", str(build_dir), "--data", str(image_folder), "--num", "2",
                                       "--method", "max", "--recalibrate"])
    assert result.exit_code == 0, result.output
    assert written and build_dir not in written
