"""The stage runner's contract on a real tiny build folder: up to date means untouched, an interrupted
stage leaves the folder as it was before it, every failure is recorded and names its stage, and the
manifest matches the files after every command."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rmeeto_export.calibration import load_cache
from rmeeto_export.cli import main
from rmeeto_export.errors import InternalError, UserError
from rmeeto_export.pipelines import build as build_module
from rmeeto_export.pipelines.build import build
from rmeeto_export.pipelines.settings import ParitySettings
from rmeeto_export.pipelines.stages import StageFailed
from tests.support.builds import TINY_FLAGS, assert_manifest_matches_files, files_of, tiny_settings

STAGES = ["load", "schedule", "export", "calibrate", "parity", "figures", "engine"]


def stage_lines(lines: list[str]) -> dict[str, str]:
    """{stage title: its status line, the last indented line under it (after any progress lines)} from a run's lines."""
    statuses: dict[str, str] = {}
    title = None
    for line in lines:
        if line.startswith("["):
            title = line.split("] ")[1].removesuffix(" ...")
        elif title and line.startswith(" "):
            statuses[title] = line.strip()
    return statuses


def with_stage_replaced(monkeypatch, name: str, replace) -> None:
    """build_stages() as usual, but the stage `name` runs `replace(original_run, context)`."""
    original = build_module.build_stages

    def build_stages(settings):
        return [dataclasses.replace(stage, run=lambda context, run=stage.run: replace(run, context))
                if stage.name == name else stage for stage in original(settings)]

    monkeypatch.setattr(build_module, "build_stages", build_stages)


def test_rebuild_with_the_same_settings_touches_nothing(int8_build, int8_copy):
    _, settings, _ = int8_build
    before = {p: p.stat().st_mtime_ns for p in int8_copy.rglob("*")}
    lines: list[str] = []
    build(settings, int8_copy, log=lines.append)
    statuses = stage_lines(lines)
    assert statuses.pop("load vim_t").startswith("not needed")
    assert all(status.startswith("up to date") for status in statuses.values()), statuses
    assert {p: p.stat().st_mtime_ns for p in int8_copy.rglob("*")} == before


def test_a_changed_setting_reruns_only_the_stages_that_read_it(int8_build, int8_copy):
    _, settings, _ = int8_build
    lines: list[str] = []
    build(settings.replace(parity=ParitySettings(samples=2)), int8_copy, log=lines.append)
    statuses = stage_lines(lines)
    ran = sorted(title for title, status in statuses.items() if status.startswith("ok"))
    assert ran == ["check ONNX Runtime against PyTorch", "draw the report's figures", "load vim_t"]  # figures read parity.json
    manifest = assert_manifest_matches_files(int8_copy)
    assert manifest["settings"]["parity"] == {"samples": 2}
    assert json.loads((int8_copy / "parity.json").read_text())["samples"]["fp32"] == 2


@pytest.mark.parametrize("stage", STAGES)
def test_interrupting_a_stage_leaves_the_folder_as_it_was_before_it(int8_build, int8_copy, monkeypatch, stage):
    """KeyboardInterrupt once the stage has written all its files (to staging): none may reach the folder."""
    _, settings, _ = int8_build
    # The stage re-makes what it made before, byte for byte; make the folder's copies differ, so that
    # a file the stage wrote into the folder would show.
    for name in json.loads((int8_copy / "manifest.json").read_text())["stages"][stage].get("outputs", {}):
        with open(int8_copy / name, "ab") as stream:
            stream.write(b"\0")
    seen = {}

    def run_then_interrupt(run, context):
        seen["before"] = {name: data for name, data in files_of(context.folder.root).items()
                          if not name.startswith(".staging")}
        run(context)
        raise KeyboardInterrupt

    with_stage_replaced(monkeypatch, stage, run_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        build(settings, int8_copy, log=lambda _: None, force=(stage,))
    assert files_of(int8_copy) == seen["before"]


def run_then_interrupt(run, context):
    run(context)
    raise KeyboardInterrupt


def test_interrupting_the_first_stage_of_a_new_folder_leaves_no_folder(tmp_path, monkeypatch):
    with_stage_replaced(monkeypatch, "load", run_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        build(tiny_settings(), tmp_path / "new" / "out", log=lambda _: None)
    assert not (tmp_path / "new").exists()


def test_sigint_during_a_stage_leaves_the_folder_as_it_was_before_it(tmp_path):
    """A real SIGINT to a running `rmeeto-export build`, sent while the export stage is inside its work.

    The tiny model exports in well under a second, so a signal sent on the stage's title line could
    arrive after the stage (and the build) ended on a busy machine; the child holds the exporter in a
    sleep it announces, so the signal always lands inside the stage."""
    out = tmp_path / "out"
    # A shell starts background jobs with SIGINT ignored, and Python then installs no handler for it: the
    # child takes Python's handler whatever launched the tests, as a build started from a terminal has it.
    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
             "import rmeeto_export.export as export\n"
             "real = export.build_onnx\n"
             "def held(*args, **kwargs):\n"
             "    print('test: export running', flush=True)\n"
             "    time.sleep(120)\n"
             "    return real(*args, **kwargs)\n"
             "export.build_onnx = held\n"
             "from rmeeto_export.cli import main\n"
             "sys.argv[0] = 'rmeeto-export'\n"
             "main()\n")
    command = [sys.executable, "-c", child, "build", *TINY_FLAGS, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("test: export running"):
            before = files_of(out)
            process.send_signal(signal.SIGINT)
            break
    rest = process.communicate(timeout=120)[0]
    assert process.returncode == 130, "".join(lines) + rest
    assert "ok in" not in rest, "the export stage finished before the signal arrived: " + rest
    assert files_of(out) == before and {"schedule.json", "manifest.json"} <= set(before)
    assert_manifest_matches_files(out)


@pytest.mark.parametrize(("error", "expected"), [
    (UserError("TensorRT could not build model.onnx: out of memory"),
     "stage 'engine' failed: TensorRT could not build model.onnx: out of memory"),
    (RuntimeError("exporter broke\nsecond line"), "stage 'engine' failed: RuntimeError: exporter broke"),
])
def test_a_failing_stage_is_recorded_and_named(int8_build, int8_copy, monkeypatch, error, expected):
    _, settings, _ = int8_build

    def fail(run, context):
        context.output("model.engine").write_bytes(b"half an engine")
        raise error

    with_stage_replaced(monkeypatch, "engine", fail)
    with pytest.raises(StageFailed) as raised:
        build(settings, int8_copy, log=lambda _: None, force=("engine",))
    assert str(raised.value) == expected
    manifest = assert_manifest_matches_files(int8_copy)
    assert manifest["stages"]["engine"]["status"] == "failed"
    assert expected.split(": ", 1)[1] in manifest["stages"]["engine"]["note"]
    assert "| engine | failed |" in (int8_copy / "report.md").read_text()


def test_a_broken_invariant_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(run, context):
        raise InternalError("the schedule lost a block")

    with_stage_replaced(monkeypatch, "schedule", broken)
    result = CliRunner().invoke(main, ["build", *TINY_FLAGS, "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, InternalError) and "error:" not in result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]["schedule"]["status"] == "failed"


def test_calibrate_then_export_keeps_the_users_calibration(int8_copy, calibration_images):
    def cli(*args):
        result = CliRunner().invoke(main, [*args, "--out", str(int8_copy)])
        assert result.exit_code == 0, result.output
        assert_manifest_matches_files(int8_copy)
        return result.output

    cli("calibrate", "--no-smoothing", "--num", "4")
    cache = int8_copy / "calibration.json"
    calibrated = cache.read_bytes()
    assert load_cache(cache).settings.smoothing_alpha is None and load_cache(cache).settings.num_images == 4
    settings = json.loads((int8_copy / "manifest.json").read_text())["settings"]["calibration"]
    assert settings["smoothing"] is False and settings["num"] == 4 and settings["data"] == str(calibration_images)

    output = cli("export", "--force")
    assert "[3/3] calibrate INT8 ...\n      up to date" in output
    assert cache.read_bytes() == calibrated

    cache.unlink()  # export must now calibrate again, with the settings calibrate recorded, not the defaults
    cli("export")
    assert load_cache(cache).settings.smoothing_alpha is None and load_cache(cache).settings.num_images == 4

    output = cli("verify")  # the INT8 graphs changed: parity runs on them
    assert stage_lines(output.splitlines())["check ONNX Runtime against PyTorch"].startswith("ok in")


def test_stage_inputs_missing_from_the_folder_are_named_before_any_stage(int8_copy):
    (int8_copy / "model.portable.onnx").unlink()
    before = files_of(int8_copy)
    result = CliRunner().invoke(main, ["verify", "--out", str(int8_copy)])
    assert result.exit_code == 1 and "lacks model.portable.onnx" in result.output
    assert files_of(int8_copy) == before


def test_verify_without_a_build_folder(tmp_path):
    result = CliRunner().invoke(main, ["verify", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "has no manifest.json" in result.output
