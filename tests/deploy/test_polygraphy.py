"""Polygraphy, run for real: our ONNX graphs in ONNX Runtime against the PyTorch outputs `verify` saves,
and TensorRT-RTX engines built by `polygraphy convert` with our C++ plugin library."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from rmeeto_export.export.polygraphy_check import INPUTS, OUTPUTS, check_command, logit_scale
from rmeeto_export.pipelines.build import build
from rmeeto_export.pipelines.settings import BuildSettings, EngineSettings, ModelSettings, ParitySettings
from rmeeto_export.trt.graph import for_plugins

from tests.support.models import TINY_MERGE_R, TINY_VIM

from .conftest import run

GRAPHS = ("model.onnx", "model.portable.onnx")


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("polygraphy") / "out"
    settings = BuildSettings(model=ModelSettings(name="vim_t", r=TINY_MERGE_R, overrides=TINY_VIM), parity=ParitySettings(samples=4),
                             engine=EngineSettings(plugins="off"))
    build(settings, out, log=lambda _: None)
    return out


def test_the_engine_graph_is_judged_on_every_input(tiny_build):
    results = json.loads((tiny_build / "parity.json").read_text())["results"]
    assert {key: result["images"] for key, result in results.items()} == {f"onnxruntime:{graph}": 4 for graph in GRAPHS}


def polygraphy(*args, env=None, cwd):
    """The polygraphy command of this environment (dev extra), as a user runs it."""
    return run([Path(sys.executable).parent / "polygraphy", *args], env=env, cwd=cwd)


@pytest.mark.parametrize("graph", GRAPHS)
def test_onnx_runtime_matches_the_saved_pytorch_outputs(tiny_build, graph):
    command = check_command(graph, "fp32", logit_scale(tiny_build))
    result = polygraphy(*command[1:], cwd=tiny_build)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Passed: 4/4 iterations" in result.stdout + result.stderr


def test_outputs_off_by_more_than_the_tolerance_fail(tiny_build, tmp_path):
    from polygraphy.comparator import RunResults

    for name in ("model.onnx", INPUTS):
        shutil.copy(tiny_build / name, tmp_path / name)
    scale = logit_scale(tiny_build)
    results = RunResults.load(str(tiny_build / OUTPUTS))
    logits = results["pytorch"][1]["logits"]
    logits[0, 3] += np.float32(3e-5 * scale)  # fp32 allows 1e-5 of the logit scale
    results.save(str(tmp_path / OUTPUTS))
    result = polygraphy(*check_command("model.onnx", "fp32", scale)[1:], cwd=tmp_path)
    assert result.returncode != 0
    assert "Passed: 3/4 iterations" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.trt
def test_polygraphy_convert_builds_tensorrt_rtx_engines_with_our_library(tiny_build, plugins_built, wheel_env, tmp_path):
    env = {**wheel_env, "POLYGRAPHY_USE_TENSORRT_RTX": "1"}
    library = plugins_built.stdout.strip().splitlines()[-1]  # what `rmeeto-export plugins build` compiled
    converted = polygraphy("convert", tiny_build / "model.onnx", "--plugins", library, "-o", tmp_path / "model.engine",
                           env=env, cwd=tmp_path)
    assert converted.returncode == 0, converted.stdout[-3000:] + converted.stderr[-3000:]
    assert (tmp_path / "model.engine").stat().st_size > 0
    # Without function bodies the custom nodes parse only as plugins: the library is what makes it build.
    onnx.save(for_plugins(onnx.load(tiny_build / "model.onnx")), tmp_path / "plugins_only.onnx")
    without = polygraphy("convert", tmp_path / "plugins_only.onnx", "-o", tmp_path / "none.engine", env=env, cwd=tmp_path)
    assert without.returncode != 0 and "Plugin not found" in without.stdout + without.stderr
    with_library = polygraphy("convert", tmp_path / "plugins_only.onnx", "--plugins", library,
                              "-o", tmp_path / "plugins_only.engine", env=env, cwd=tmp_path)
    assert with_library.returncode == 0, with_library.stdout[-3000:] + with_library.stderr[-3000:]
