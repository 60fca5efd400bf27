"""The Triton model repository entry, its config parsed with Triton's own ModelConfig schema."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from rmeeto_export.errors import UserError
from rmeeto_export.serving import triton
from rmeeto_export.serving.triton import TRITON_DTYPES, write_model
from rmeeto_export.trt.plugins import PluginSource
from rmeeto_export.trt.record import BuildRecord, TensorSpec, read_record, write_record
from tests.support.backends import HAS_RTX, RTX_MISSING


def _parse(model_folder: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _as_triton(tensors: tuple[TensorSpec, ...], batching: bool) -> list[tuple]:
    """(name, Triton dtype, dims) the config must state for the record's tensors."""
    dtype = model_config_pb2.DataType.Value
    return [(t.name, dtype(TRITON_DTYPES[t.dtype]), list(t.shape[1:] if batching else t.shape)) for t in tensors]


def _stated(tensors) -> list[tuple]:
    return [(t.name, t.data_type, list(t.dims)) for t in tensors]


@pytest.mark.trt
@pytest.mark.skipif(not HAS_RTX, reason=RTX_MISSING)
def test_config_of_a_real_engine_matches_its_build_record(range_engine, tmp_path):
    record = read_record(range_engine)
    model = write_model(range_engine, tmp_path / "repository", "vim_tiny")
    folder = model.folder
    config = _parse(folder)
    assert config.name == "vim_tiny" and config.platform == "tensorrt_plan"
    assert config.max_batch_size == record.batch["max"] == 16
    assert _stated(config.input) == _as_triton(record.inputs, batching=True) == [("images", config.input[0].data_type, [3, 32, 32])]
    assert _stated(config.output) == _as_triton(record.outputs, batching=True)
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.HasField("dynamic_batching") and list(config.dynamic_batching.preferred_batch_size) == [record.batch["opt"]]
    assert (folder / "1" / "model.plan").read_bytes() == range_engine.read_bytes()
    assert model.files == ("1/model.plan", "README.md", "config.pbtxt")  # no plugin library needed
    assert sorted(p.name for p in folder.iterdir()) == ["1", "README.md", "config.pbtxt"]
    readme = (folder / "README.md").read_text()
    assert f"tritonserver --model-repository={(tmp_path / 'repository').resolve()}" in readme and "LD_PRELOAD" not in readme
    assert "TensorRT-RTX engine" in readme  # the caveat for Triton's TensorRT backend
    assert [p.name for p in (tmp_path / "repository").iterdir()] == ["vim_tiny"]  # no staging folder left


# --- from build records: the cases a CPU build cannot produce (C++ plugins, fp16 I/O, fixed batch) --------


def _engine_with_record(folder: Path, **changes) -> Path:
    """An engine file and a build record for it (TensorRT 10.3, fixed batch 2, fp16 I/O) with `changes`."""
    engine = folder / "model.engine"
    engine.write_bytes(b"serialized engine")
    record = BuildRecord(
        trt_flavour="tensorrt", trt_version="10.3.0", target="sm87", gpu_name="Orin", precision="fp16",
        batch={"min": 2, "opt": 2, "max": 2}, plugins=None,
        engine_sha256=hashlib.sha256(b"serialized engine").hexdigest(), engine_bytes=17,
        inputs=(TensorSpec("images", (2, 3, 224, 224), "HALF"),), outputs=(TensorSpec("logits", (2, 1000), "HALF"),),
    )
    write_record(engine, dataclasses.replace(record, **changes))
    return engine


def _plugin_library(folder: Path) -> PluginSource:
    library = folder / "librmeeto_trt_plugins.so"
    library.write_bytes(b"\x7fELF plugin library")
    return PluginSource(str(library), hashlib.sha256(library.read_bytes()).hexdigest())


def test_fixed_batch_engine_states_full_shapes_without_batching(tmp_path):
    engine = _engine_with_record(tmp_path)
    config = _parse(write_model(engine, tmp_path / "repo", "vim_s").folder)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert _stated(config.input) == [("images", model_config_pb2.TYPE_FP16, [2, 3, 224, 224])]
    assert _stated(config.output) == [("logits", model_config_pb2.TYPE_FP16, [2, 1000])]


def test_plugin_library_travels_with_the_kernels_it_loads_and_is_preloaded(tmp_path, monkeypatch):
    source = _plugin_library(tmp_path)
    (tmp_path / "librmeeto_kernels.so").write_bytes(b"kernels")
    # What readelf shows for a real build: our kernels library beside it, TensorRT and the C++ runtime elsewhere.
    needed = {Path(source.library): ["librmeeto_kernels.so", "libtensorrt_rtx.so.1", "libstdc++.so.6"]}
    monkeypatch.setattr(triton, "elf_needed_libraries", lambda path: needed[path])
    engine = _engine_with_record(tmp_path, plugins=source)
    model = write_model(engine, tmp_path / "repo", "vim_s")
    folder = model.folder
    assert model.files == ("1/model.plan", "README.md", "config.pbtxt", "librmeeto_kernels.so", "librmeeto_trt_plugins.so")
    copied = folder / "librmeeto_trt_plugins.so"
    assert copied.read_bytes() == Path(source.library).read_bytes()
    assert (folder / "librmeeto_kernels.so").read_bytes() == b"kernels"
    command = f"LD_PRELOAD={copied.resolve()} tritonserver --model-repository={(tmp_path / 'repo').resolve()}"
    readme = (folder / "README.md").read_text()
    assert model.command == command and command in readme
    assert "-e LD_PRELOAD=/models/vim_s/librmeeto_trt_plugins.so" in readme


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(plugins=PluginSource(None, None)), "Python plugins, which Triton cannot load"),
        (dict(batch={"min": 2, "opt": 4, "max": 8}), "starts at 2: build it with --batch 1:4:8"),
        (dict(engine_sha256="0" * 64), "not the engine its build record describes"),
        (dict(inputs=()), "lists no inputs/outputs"),
        (dict(inputs=(TensorSpec("images", (2, 3, -1, -1), "HALF"),)), "only the batch may be dynamic"),
        (dict(inputs=(TensorSpec("images", (2, 3, 224, 224), "FP8"),)), "dtype FP8, which Triton has no type for"),
    ],
    ids=["python-plugins", "range-not-from-1", "stale-record", "old-record", "inner-dynamic", "fp8"],
)
def test_engines_triton_cannot_serve_are_refused_and_write_nothing(tmp_path, changes, message):
    engine = _engine_with_record(tmp_path, **changes)
    with pytest.raises(UserError, match=message):
        write_model(engine, tmp_path / "repo", "vim_s")
    assert not (tmp_path / "repo").exists() or list((tmp_path / "repo").iterdir()) == []


def test_changed_plugin_library_is_refused(tmp_path):
    source = _plugin_library(tmp_path)
    engine = _engine_with_record(tmp_path, plugins=source)
    Path(source.library).write_bytes(b"\x7fELF rebuilt since")
    with pytest.raises(UserError, match="changed since the engine was built"):
        write_model(engine, tmp_path / "repo", "vim_s")


def test_existing_model_folder_and_bad_names_are_refused(tmp_path):
    engine = _engine_with_record(tmp_path)
    write_model(engine, tmp_path / "repo", "vim_s")
    with pytest.raises(UserError, match="exists: remove it or choose another model name"):
        write_model(engine, tmp_path / "repo", "vim_s")
    with pytest.raises(UserError, match="must be letters, digits"):
        write_model(engine, tmp_path / "repo", "../escape")
    with pytest.raises(UserError, match="does not exist"):
        write_model(tmp_path / "missing.engine", tmp_path / "repo", "other")


def test_record_round_trips_its_io(tmp_path):
    engine = _engine_with_record(tmp_path)
    assert read_record(engine).inputs == (TensorSpec("images", (2, 3, 224, 224), "HALF"),)
    assert json.loads(Path(f"{engine}.json").read_text())["inputs"] == [{"name": "images", "shape": [2, 3, 224, 224], "dtype": "HALF"}]
