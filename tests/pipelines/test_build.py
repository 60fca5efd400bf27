"""The build job end to end on a tiny model, re-running stages, and every bad input's one-line error."""

import importlib.util
import json

import onnx
import pytest
import torch
from click.testing import CliRunner

from rmeeto_export.cli import main
from rmeeto_export.errors import UserError
from rmeeto_export.files import file_sha256
from rmeeto_export.pipelines.build import build, rerun_verify
from rmeeto_export.pipelines.folder import BuildFolder
from rmeeto_export.pipelines.settings import (BuildSettings, CalibrationSettings, ExportSettings, ModelSettings,
                                              ParitySettings, RetrainSettings)
from rmeeto_export.pipelines.stages import StageFailed

TINY = dict(embed_dim=32, depth=4, img_size=32, patch_size=8, num_classes=10)
HAS_TRT = any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx"))


def tiny_config(**groups):
    return BuildSettings(model=ModelSettings(name="vim_t", r=2, overrides=TINY), parity=ParitySettings(samples=4)).replace(**groups)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "out"
    lines = []
    folder = build(tiny_config(), out, log=lines.append)
    return out, folder.manifest, lines


def test_build_writes_every_artifact_with_its_digest(built):
    out, manifest, lines = built
    engine = {"model.engine", "model.engine.json"} if HAS_TRT else set()
    assert set(manifest["artifacts"]) == {"schedule.json", "model.onnx", "model.portable.onnx", "parity.json"} | engine
    for name, artifact in manifest["artifacts"].items():
        assert file_sha256(out / name) == artifact["sha256"]
    assert (out / "report.md").is_file() and (out / "manifest.json").is_file()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".staging")]
    assert json.loads((out / "manifest.json").read_text())["stages"].keys() == {"load", "schedule", "export", "parity", "engine"}


def test_build_says_loudly_that_weights_are_random(built):
    out, manifest, lines = built
    assert manifest["random_weights"] is True
    assert any("RANDOM weights" in line for line in lines)
    assert "Random weights" in (out / "report.md").read_text()
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == [f"[{i}/5" for i in range(1, 6)]


def test_parity_of_both_graphs_in_fp32(built):
    out, _, _ = built
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and set(parity["results"]) == {"onnxruntime:model.onnx", "onnxruntime:model.portable.onnx"}
    for result in parity["results"].values():
        assert result["top1_agreement"] == 1.0 and result["max_abs"] <= 1e-4


def test_engine_stage_builds_or_says_why_not(built):
    _, manifest, lines = built
    engine = manifest["stages"]["engine"]
    if HAS_TRT:
        assert engine["status"] == "ok" and manifest["engine"]["engine_bytes"] > 0
    else:
        assert engine["status"] == "skipped" and "no TensorRT" in engine["note"]


def test_verify_fails_after_writing_the_report_when_the_graph_is_wrong(built, tmp_path):
    source, _, _ = built
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("manifest.json", "model.onnx", "model.portable.onnx", "schedule.json"):
        (out / name).write_bytes((source / name).read_bytes())
    graph = onnx.load(str(out / "model.portable.onnx"))
    producer = next(n for n in graph.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_before"
    shift = onnx.numpy_helper.from_array(torch.arange(10, dtype=torch.float32).numpy(), "shift")
    graph.graph.initializer.append(shift)
    graph.graph.node.append(onnx.helper.make_node("Add", ["logits_before", "shift"], ["logits"]))
    onnx.save(graph, str(out / "model.portable.onnx"))
    with pytest.raises(StageFailed, match="stage 'parity' failed: parity failed for onnxruntime:model.portable.onnx"):
        rerun_verify(out, log=lambda _: None)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is False and parity["results"]["onnxruntime:model.onnx"]["passed"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["parity"]["status"] == "failed" and "parity" in (out / "report.md").read_text()


def test_export_rerun_is_byte_identical(built, tmp_path):
    source, manifest, _ = built
    out = tmp_path / "again"
    out.mkdir()
    (out / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    result = CliRunner().invoke(main, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("model.onnx", "model.portable.onnx"):
        assert file_sha256(out / name) == manifest["artifacts"][name]["sha256"]


@pytest.fixture(scope="module")
def vim_s_weights(tmp_path_factory):
    with torch.device("meta"):
        from rmeeto_export.models import create_model

        shapes = {k: v.shape for k, v in create_model("vim_s").state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vim_s.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in shapes.items()}}, path)
    return path


@pytest.mark.parametrize("case,message", [
    ("unknown model", "unknown model 'vim_q'"),
    ("bad ratio", "ratio"),
    ("unwritable out", "cannot create output folder"),
    ("missing weights", "weights file not found"),
    ("weights of another model", "does not fit this model"),
    ("bad precision", "Invalid value for '--precision'"),
])
def test_bad_input_is_one_line_and_leaves_no_files(tmp_path, vim_s_weights, case, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = tmp_path / "out"
    args = {
        "unknown model": ["--model", "vim_q"],
        "bad ratio": ["--model", "vim_t", "--ratio", "1.2"],
        "unwritable out": ["--model", "vim_t"],
        "missing weights": ["--model", "vim_t", "--weights", str(tmp_path / "nope.pth")],
        "weights of another model": ["--model", "vim_t", "--weights", str(vim_s_weights)],
        "bad precision": ["--model", "vim_t", "--precision", "fp8"],
    }[case]
    target = blocker / "out" if case == "unwritable out" else out
    result = CliRunner().invoke(main, ["build", *args, "--out", str(target)])
    assert result.exit_code != 0
    assert message in result.output
    if case != "bad precision":  # click's own usage errors print a usage line too
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_verify_without_a_build_folder(tmp_path):
    result = CliRunner().invoke(main, ["verify", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "has no manifest.json" in result.output


def test_bad_config_values(tmp_path):
    with pytest.raises(UserError, match="batch must be at least 1"):
        build(tiny_config(export=ExportSettings(batch=0)), tmp_path / "out")


def test_int8_build_calibrates_and_checks_the_int8_graphs(tmp_path):
    from PIL import Image

    images = tmp_path / "calib"
    images.mkdir()
    generator = torch.Generator().manual_seed(0)
    for index in range(8):
        pixels = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(images / f"{index}.png")
    out = tmp_path / "out"
    settings = tiny_config(export=ExportSettings(precision="int8"), calibration=CalibrationSettings(data=str(images), num=8))
    manifest = build(settings, out, log=lambda _: None).manifest
    assert {"calibration.json", "model.int8.onnx", "model.portable.int8.onnx"} <= set(manifest["artifacts"])
    parity = json.loads((out / "parity.json").read_text())
    assert {"onnxruntime:model.int8.onnx", "onnxruntime:model.portable.int8.onnx"} <= set(parity["results"])
    # The INT8 graphs are checked on the calibration folder's images (all 8: there are no others), not on noise.
    assert parity["samples"] == {"fp32": 4, "int8": 8}
    int8 = parity["results"]["onnxruntime:model.int8.onnx"]
    assert int8["images"] == 8
    assert int8["tolerance"]["min_top1_agreement"] == 0.0  # random weights: their top-1 is a coin toss
    if HAS_TRT:
        assert manifest["engine"]["from"] == "model.int8.onnx" and manifest["engine"]["precision"] == "int8"


@pytest.mark.parametrize("change,message", [
    (dict(export=ExportSettings(precision="int8")), "--calib-data"),
    (dict(retrain=RetrainSettings(data="some/images")), "add --weights"),
])
def test_missing_companion_option_is_an_error(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        build(tiny_config(**change), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_retrains_first_when_given_data(tmp_path):
    from test_retrain import CLASSES, TINY as RETRAIN_TINY, write_dataset

    from rmeeto_export.models import create_model

    data = write_dataset(tmp_path / "data")
    torch.manual_seed(0)
    weights = tmp_path / "start.pth"
    torch.save({"model": create_model("vim_t", num_classes=CLASSES, **RETRAIN_TINY).state_dict()}, weights)
    settings = BuildSettings(model=ModelSettings(name="vim_t", r=1, overrides=RETRAIN_TINY, weights=str(weights)),
                             parity=ParitySettings(samples=2),
                             retrain=RetrainSettings(data=str(data), epochs=1, batch_size=4, workers=0))
    lines = []
    manifest = build(settings, tmp_path / "out", log=lines.append).manifest
    assert lines[0].startswith("[1/6] re-train") and manifest["stages"]["retrain"]["status"] == "ok"
    assert (tmp_path / "out" / "retrain" / "model.pth").is_file() and "retrain/model.pth" in manifest["artifacts"]
    assert manifest["stages"]["load"]["note"] == "vim_t, weights retrain/model.pth"
    assert manifest["random_weights"] is False
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["passed"]
