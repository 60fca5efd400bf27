"""Engine builds with TensorRT-RTX, which builds ahead of time on this GPU-less machine."""

import hashlib
import json

import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.trt import build_engine, layers_by_type, read_record
from rmeeto_export.trt.builder import load_onnx, parse_network
from rmeeto_export.trt.graph import custom_nodes, plugin_layers
from tests.support.backends import needs_rtx
from tests.support.handmade_graphs import MERGE_R, TOKENS, write_custom_node_graph, write_standard_graph

pytestmark = needs_rtx


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# The sm86/sm89 x fp32/fp16 matrix runs on an exported model in test_exported_models.py.
def test_build_record_describes_the_engine(tmp_path, rtx):
    precision, target = "fp16", "sm86"
    onnx_path = write_custom_node_graph(tmp_path / "model.onnx", precision)
    engine_path = tmp_path / "model.engine"
    record = build_engine(onnx_path, engine_path, backend="tensorrt-rtx", plugins="python", precision=precision, target_cc=target)
    assert record.trt_flavour == "tensorrt-rtx" and record.trt_version == rtx.version
    assert record.target == target and record.precision == precision
    assert record.plugins is not None and record.plugins.is_python
    assert record.engine_bytes == engine_path.stat().st_size > 0
    assert record.batch == {"min": 1, "opt": 1, "max": 1}
    assert json.loads((tmp_path / "model.engine.json").read_text()) == record.to_json()
    assert read_record(engine_path) == record
    assert _files(tmp_path) == ["model.engine", "model.engine.json", "model.onnx"]  # no temp file left


def test_every_custom_node_becomes_our_plugin_layer(tmp_path, rtx):
    onnx_path = write_custom_node_graph(tmp_path / "model.onnx")
    onnx_file = load_onnx(onnx_path)
    model = onnx_file.model
    parsed = parse_network(rtx, onnx_file, with_plugins=True)
    layers = layers_by_type(parsed.network)
    assert len(layers["PLUGIN_V3"]) == len(custom_nodes(model)) == 3
    mapped = sorted((namespace, name) for _, namespace, name in plugin_layers(rtx.trt, parsed.network))
    assert mapped == [("rmeeto", "SelectiveScan"), ("rmeeto", "SelectiveScan"), ("rmeeto", "TokenMerge")]
    merged = [parsed.network.get_output(i) for i in range(parsed.network.num_outputs)]
    shapes = {tensor.name: tuple(tensor.shape) for tensor in merged}
    assert shapes["hidden_out"][1] == shapes["residual_out"][1] == shapes["size_out"][1] == TOKENS - MERGE_R


def test_token_merge_outputs_keep_hidden_dtype_and_fp32_stream(tmp_path, rtx):
    onnx_path = write_custom_node_graph(tmp_path / "model.onnx", "fp16")
    parsed = parse_network(rtx, load_onnx(onnx_path), with_plugins=True)
    dtypes = {t.name: t.dtype for t in (parsed.network.get_output(i) for i in range(parsed.network.num_outputs))}
    trt = rtx.trt
    assert dtypes == {
        "y_forward": trt.float16, "y_backward": trt.float16,
        "hidden_out": trt.float16, "residual_out": trt.float32, "size_out": trt.float32,
    }  # fmt: skip


def test_dynamic_batch_gets_an_optimization_profile(tmp_path, rtx):
    onnx_path = write_custom_node_graph(tmp_path / "model.onnx", batch="batch")
    record = build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins="python", batch=(1, 2, 4))
    assert record.batch == {"min": 1, "opt": 2, "max": 4}


def test_rtx_target_defaults_to_sm89_without_a_gpu(tmp_path, rtx, monkeypatch):
    monkeypatch.setattr("rmeeto_export.trt.builder.current_gpu", lambda: None)
    record = build_engine(write_standard_graph(tmp_path / "model.onnx"), tmp_path / "model.engine", backend="tensorrt-rtx")
    assert record.target == "sm89" and record.gpu_name is None


def test_fixed_batch_graph_rejects_another_batch(tmp_path, rtx):
    onnx_path = write_standard_graph(tmp_path / "model.onnx", batch=2)
    with pytest.raises(UserError, match="fixed batch of 2"):
        build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", batch=4)
    assert _files(tmp_path) == ["model.onnx"]


def test_standard_graph_builds_without_plugins(tmp_path, rtx):
    onnx_path = write_standard_graph(tmp_path / "model.onnx", batch="batch")
    record = build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins="off", batch=3)
    assert record.plugins is None and record.batch == {"min": 3, "opt": 3, "max": 3}
    engine = (tmp_path / "model.engine").read_bytes()
    assert record.engine_bytes == len(engine) > 0 and record.engine_sha256 == hashlib.sha256(engine).hexdigest()


def test_custom_nodes_without_bodies_need_plugins(tmp_path, rtx):
    onnx_path = write_custom_node_graph(tmp_path / "model.onnx")
    with pytest.raises(UserError, match="custom nodes without function bodies \\(SelectiveScan, TokenMerge\\)"):
        build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins="off")
    assert _files(tmp_path) == ["model.onnx"]


def test_failed_build_leaves_no_file_and_keeps_the_old_engine(tmp_path, rtx):
    onnx_path = write_custom_node_graph(tmp_path / "model.onnx")
    engine_path = tmp_path / "model.engine"
    engine_path.write_bytes(b"previous engine")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(onnx_path.read_bytes().replace(b"TokenMerge", b"TokenMerg3"))  # no such op or plugin
    with pytest.raises(UserError, match="TensorRT could not parse"):
        build_engine(broken, engine_path, backend="tensorrt-rtx", plugins="python")
    assert engine_path.read_bytes() == b"previous engine"
    assert _files(tmp_path) == ["broken.onnx", "model.engine", "model.onnx"]


def test_precision_no_build_makes_is_a_user_error(tmp_path, rtx):
    onnx_path = write_standard_graph(tmp_path / "model.onnx")
    with pytest.raises(UserError, match="unknown precision 'fp8'; choose one of fp32, fp16, int8"):
        build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", precision="fp8", target_cc="sm86")


def test_target_tensorrt_rtx_cannot_build_for(tmp_path, rtx):
    onnx_path = write_standard_graph(tmp_path / "model.onnx")
    with pytest.raises(UserError, match="cannot build for sm90"):
        build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", target_cc="sm90")


def test_missing_onnx_file(tmp_path, rtx):
    with pytest.raises(UserError, match="does not exist"):
        build_engine(tmp_path / "none.onnx", tmp_path / "model.engine", backend="tensorrt-rtx")


def test_tensorrt_rtx_has_no_timing_cache_so_none_is_written(tmp_path, rtx):
    cache = tmp_path / "timing.cache"
    record = build_engine(write_standard_graph(tmp_path / "model.onnx"), tmp_path / "model.engine",
                          backend="tensorrt-rtx", timing_cache=cache)
    assert record.flags["timing_cache"] is None and not cache.exists()


# TensorRT-RTX 1.7 aborts the process (heap corruption) when a plugin accepts no format combination,
# so the builder checks the plugin input types first.
def test_types_the_plugins_do_not_take_are_a_user_error_before_building(tmp_path, rtx):
    onnx_path = write_custom_node_graph(tmp_path / "model.onnx", "fp16", stream_precision="fp16")  # residual must be fp32
    with pytest.raises(UserError, match="TokenMerge node .*: input 1 is HALF"):
        build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins="python", precision="fp16")
    assert _files(tmp_path) == ["model.onnx"]


def test_fp32_engines_are_built_without_tf32(tmp_path, rtx):
    onnx_path = write_standard_graph(tmp_path / "model.onnx", batch=1)
    fp32 = build_engine(onnx_path, tmp_path / "fp32.engine", backend="tensorrt-rtx", plugins="off")
    fp16 = build_engine(onnx_path, tmp_path / "fp16.engine", backend="tensorrt-rtx", plugins="off", precision="fp16")
    assert fp32.flags["tf32"] is False and fp16.flags["tf32"] is True  # TensorRT's default for the rest


def test_a_file_that_is_not_onnx_is_a_user_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x0fnot a protobuf message")
    with pytest.raises(UserError, match="is not an ONNX model"):
        load_onnx(path)
