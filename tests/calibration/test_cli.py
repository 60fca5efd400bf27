"""`rmeeto-export calibrate --out DIR --data IMAGES`: writes the cache and both INT8 graphs; errors are one line."""

import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from rmeeto_export.calibration import load_cache
from rmeeto_export.calibration.cli import calibrate_command
from rmeeto_export.cli import main

if "calibrate" not in main.commands:  # until the lead registers it in rmeeto_export/cli.py
    main.add_command(calibrate_command)


@pytest.fixture
def build_dir(fp32_graphs, tmp_path):
    for graph in fp32_graphs.values():
        shutil.copy(graph, tmp_path / graph.name)
    return tmp_path


def test_calibrate_writes_cache_and_int8_twins(build_dir, image_folder):
    result = CliRunner().invoke(main, ["calibrate", "--out", str(build_dir), "--data", str(image_folder), "--num", "4",
                                       "--method", "max"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in build_dir.iterdir()) == [
        "calibration.json", "model.int8.onnx", "model.onnx", "model.portable.int8.onnx", "model.portable.onnx"]
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
        ("images", ["--method", "kl"], "error: unknown calibration method 'kl'"),
        ("images", ["--num", "0"], "error: the number of calibration images must be positive"),
        ("images", ["--smoothing-alpha", "2"], "error: smoothing alpha must be in [0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(build_dir, image_folder, tmp_path_factory, data, extra, message):
    folder = tmp_path_factory.mktemp("empty") if data == "empty" else image_folder
    result = CliRunner().invoke(main, ["calibrate", "--out", str(build_dir), "--data", str(folder), *extra])
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1


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
