"""The build job end to end on a tiny model: artifacts, parity, re-training first, re-running stages alone."""

import json
import shutil

import onnx
import pytest
import torch
from click.testing import CliRunner

from rmeeto_export.cli import main
from rmeeto_export.files import file_sha256
from rmeeto_export.pipelines import figures
from rmeeto_export.pipelines.build import build, rerun_verify, spot_checked_graphs
from rmeeto_export.pipelines.folder import FIGURES
from rmeeto_export.pipelines.settings import BuildSettings, EngineSettings, ModelSettings, ParitySettings, RetrainSettings
from rmeeto_export.pipelines.stages import StageFailed
from tests.support.builds import assert_manifest_matches_files, int8_settings, tiny_settings
from tests.support.backends import HAS_TENSORRT as HAS_TRT
from tests.support.images import write_class_folders
from tests.support.models import TINY_VIM, TRAINABLE_CLASSES, TRAINABLE_VIM


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "out"
    lines = []
    folder = build(tiny_settings(), out, log=lines.append)
    return out, folder.manifest, lines


def test_build_writes_every_artifact_with_its_digest(built):
    out, manifest, lines = built
    engine = {"model.engine", "model.engine.json"} if HAS_TRT else set()
    parity = {"parity.json", "parity_inputs.json", "parity_outputs.json"}
    assert set(manifest["artifacts"]) == {"schedule.json", "model.onnx", "model.portable.onnx"} | parity | engine | set(FIGURES)
    for name, artifact in manifest["artifacts"].items():
        assert file_sha256(out / name) == artifact["sha256"]
    assert (out / "report.md").is_file() and (out / "manifest.json").is_file()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".staging")]
    assert json.loads((out / "manifest.json").read_text())["stages"].keys() == {"load", "schedule", "export", "parity", "figures", "engine"}


def test_build_says_loudly_that_weights_are_random(built):
    out, manifest, lines = built
    assert manifest["random_weights"] is True
    assert any("RANDOM weights" in line for line in lines)
    assert "Random weights" in (out / "report.md").read_text()
    assert [line.split("]")[0] for line in lines if line.startswith("[")] == [f"[{i}/6" for i in range(1, 7)]


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
    manifest = assert_manifest_matches_files(out)
    assert manifest["stages"]["parity"]["status"] == "failed" and "| parity | failed |" in (out / "report.md").read_text()


def test_export_rerun_is_byte_identical(built, tmp_path):
    source, manifest, _ = built
    out = tmp_path / "again"
    out.mkdir()
    (out / "manifest.json").write_bytes((source / "manifest.json").read_bytes())
    result = CliRunner().invoke(main, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("model.onnx", "model.portable.onnx"):
        assert file_sha256(out / name) == manifest["artifacts"][name]["sha256"]
    assert_manifest_matches_files(out)


def test_int8_build_calibrates_and_checks_the_int8_graphs(int8_build):
    out, _, lines = int8_build
    manifest = assert_manifest_matches_files(out)
    assert lines[0] == "inputs checked; decoded all 8 calibration images"
    assert [line.split(" ...")[0] for line in lines if line.startswith("[")] == [
        "[1/7] load vim_t", "[2/7] freeze the merge schedule", "[3/7] export ONNX", "[4/7] calibrate INT8",
        "[5/7] check ONNX Runtime against PyTorch", "[6/7] draw the report's figures", "[7/7] build the TensorRT engine"]
    assert manifest["stages"]["calibrate"]["status"] == "ok" and manifest["stages"]["calibrate"]["seconds"] > 0
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


def test_build_retrains_first_when_given_data(tmp_path):
    from rmeeto_export.models import create_model

    data = write_class_folders(tmp_path / "data", TRAINABLE_CLASSES, {"train": 8, "val": 4})
    torch.manual_seed(0)
    weights = tmp_path / "start.pth"
    torch.save({"model": create_model("vim_t", num_classes=TRAINABLE_CLASSES, **TRAINABLE_VIM).state_dict()}, weights)
    settings = BuildSettings(model=ModelSettings(name="vim_t", r=1, overrides=TRAINABLE_VIM, weights=str(weights)),
                             parity=ParitySettings(samples=2),
                             retrain=RetrainSettings(data=str(data), epochs=1, batch_size=4, workers=0))
    lines = []
    manifest = build(settings, tmp_path / "out", log=lines.append).manifest
    assert lines[0] == "inputs checked; decoded all 24 train images, all 12 val images"
    assert next(line for line in lines if line.startswith("[")).startswith("[1/7] re-train") and manifest["stages"]["retrain"]["status"] == "ok"
    assert (tmp_path / "out" / "retrain" / "model.pth").is_file() and "retrain/model.pth" in manifest["artifacts"]
    assert manifest["stages"]["load"]["note"] == "vim_t, weights retrain/model.pth"
    assert manifest["random_weights"] is False
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["passed"]
    assert_manifest_matches_files(tmp_path / "out")


# --- the report's figures -----------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_figure_is_a_png_shown_in_the_report(built):
    out, manifest, _ = built
    report = (out / "report.md").read_text()
    for name, caption in FIGURES.items():
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"![{caption}]({name})" in report
        assert name in manifest["artifacts"]


def test_parity_figure_has_every_graph_and_image(built):
    out, _, _ = built
    errors, limits = figures.parity_errors(json.loads((out / "parity.json").read_text()))
    # The engine is built from model.onnx, so the portable graph is spot-checked on one batch.
    assert {graph: len(values) for graph, values in errors.items()} == {"model.onnx": 4, "model.portable.onnx": 1}
    assert all(max(values) <= limits[graph] for graph, values in errors.items())


def test_only_a_portable_graph_the_engine_does_not_use_is_spot_checked(tmp_path):
    assert spot_checked_graphs(tiny_settings()) == {"model.portable.onnx"}
    assert spot_checked_graphs(tiny_settings(engine=EngineSettings(plugins="off"))) == set()
    assert spot_checked_graphs(int8_settings(tmp_path)) == {"model.portable.onnx"}  # not its INT8 twin


def test_without_matplotlib_the_report_says_how_to_get_the_figures(built, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(built[0], out)  # the module's build folder stays as it is for the other tests
    shutil.rmtree(out / "figures")  # so the figures stage is not up to date
    monkeypatch.setattr(figures, "pyplot", lambda: None)
    lines = []
    rerun_verify(out, log=lines.append)
    assert any("skipped" in line and figures.MISSING_MATPLOTLIB in line for line in lines)
    assert f"Figures: {figures.MISSING_MATPLOTLIB}" in (out / "report.md").read_text()
    assert not (out / "figures").exists()


def test_build_method_prune_end_to_end(tmp_path):
    out = tmp_path / "out"
    flags = [flag for key, value in TINY_VIM.items() for flag in ("--override", f"{key}={value}")]
    result = CliRunner().invoke(main, ["build", "--model", "vim_t", "--method", "prune", "--keep-ratio", "0.6",
                                       "--prune-after", "1,3", "--parity-samples", "4", *flags, "--out", str(out)])
    assert result.exit_code == 0, result.output
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["method"] == "prune" and schedule["tokens_per_block"] == [17, 11, 11, 7]
    assert json.loads((out / "parity.json").read_text())["passed"]
    graph = onnx.load(str(out / "model.onnx")).graph
    assert {node.op_type for node in graph.node if node.domain == "rmeeto"} == {"SelectiveScan"}  # pruning: standard ops
    assert [node.op_type for node in graph.node].count("TopK") == 2  # one per pruning step
    assert "prune to 0.6 of the tokens after 1, 3 blocks" in (out / "report.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    if HAS_TRT:  # CI installs TensorRT-RTX, which builds without a GPU
        assert manifest["stages"]["engine"]["status"] == "ok" and manifest["engine"]["engine_bytes"] > 0
