"""`build --batch MIN:OPT:MAX` end to end on the tiny model, then `package --triton` of its engine."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from rmeeto_export.cli import main
from tests.support.models import TINY_CLI_OPTIONS
from tests.support.backends import HAS_RTX, RTX_MISSING


@pytest.mark.parametrize("batch, message", [
    ("8:4:64", "batch range 8:4:64 needs MIN <= OPT <= MAX"),
    ("0", "batch sizes must be at least 1, got 0"),
    ("1:x:8", "batch must be N or MIN:OPT:MAX with whole numbers (e.g. 8 or 1:8:64), got '1:x:8'"),
    ("1:8", "batch must be N or MIN:OPT:MAX with whole numbers (e.g. 8 or 1:8:64), got '1:8'"),
])
def test_bad_batch_is_one_line_error_before_any_stage(tmp_path, batch, message):
    result = CliRunner().invoke(main, ["build", *TINY_CLI_OPTIONS, "--batch", batch, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith(("error:", "["))] == [f"error: {message}"]
    assert not (tmp_path / "out").exists()


def test_batch_range_with_int8_calibration_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["build", *TINY_CLI_OPTIONS, "--batch", "1:4:16", "--precision", "int8",
                                       "--calib-data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "INT8 calibration runs graphs of a fixed batch" in result.output


@pytest.mark.trt
@pytest.mark.skipif(not HAS_RTX, reason=RTX_MISSING)
def test_parity_runs_every_graph_at_min_opt_and_max(range_build):
    parity = json.loads((range_build / "parity.json").read_text())
    assert parity["passed"] and parity["batch_sizes"] == [1, 4, 16]
    graphs = ("model.onnx", "model.portable.onnx")
    assert set(parity["results"]) == {f"onnxruntime:{g}@batch{b}" for g in graphs for b in (1, 4, 16)}
    assert parity["results"]["onnxruntime:model.onnx@batch16"]["images"] == 16


@pytest.mark.trt
@pytest.mark.skipif(not HAS_RTX, reason=RTX_MISSING)
def test_package_writes_a_triton_model(range_build, tmp_path):
    result = CliRunner().invoke(main, ["package", "--out", str(range_build), "--triton", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    assert f"tritonserver --model-repository={(tmp_path / 'models').resolve()}" in result.output
    config = text_format.Parse((tmp_path / "models" / "vim_tiny" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.name == "vim_tiny" and config.max_batch_size == 16
    assert (tmp_path / "models" / "vim_tiny" / "1" / "model.plan").read_bytes() == (range_build / "model.engine").read_bytes()


@pytest.mark.skipif(not HAS_RTX, reason=RTX_MISSING)
def test_report_builds_the_engines_graph_with_its_batch_profile(range_build):
    engine = json.loads((range_build / "manifest.json").read_text())["engine"]
    _, channels, height, width = engine["inputs"][0]["shape"]
    shape = lambda size: f"'images:[{size},{channels},{height},{width}]'"  # noqa: E731
    report = (range_build / "report.md").read_text()
    build = next(line for line in report.splitlines() if "polygraphy run model.portable.onnx --trt" in line)
    assert f"--trt-min-shapes {shape(1)} --trt-opt-shapes {shape(4)} --trt-max-shapes {shape(16)}" in build
