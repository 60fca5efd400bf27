"""TensorRT-RTX builds of the tiny merged Vim exported by rmeeto_export.export: the custom-node graph
with our Python plugins, the portable graph, and the INT8 Q/DQ graphs."""

import pytest

from rmeeto_export.export.graph_checks import custom_op_counts
from rmeeto_export.trt import build_engine, layers_by_type
from rmeeto_export.trt.builder import load_onnx, parse_network
from rmeeto_export.trt.graph import plugin_layers
from tests.support.backends import needs_rtx

pytestmark = needs_rtx


@pytest.mark.parametrize("target", ["sm86", "sm89"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plugin_graph_builds_with_the_python_plugins(tiny_exports, rtx, tmp_path, precision, target):
    engine_path = tmp_path / "model.engine"
    record = build_engine(
        tiny_exports[(precision, False)], engine_path, backend="tensorrt-rtx", plugins="python", precision=precision, target_cc=target
    )
    assert record.target == target and record.precision == precision and record.plugins.is_python
    assert record.engine_bytes == engine_path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]


def test_parser_maps_every_custom_node_to_our_plugin(tiny_exports, rtx):
    onnx_path = tiny_exports[("fp32", False)]
    onnx_file = load_onnx(onnx_path)
    model = onnx_file.model
    counts = custom_op_counts(model)
    assert counts == {"SelectiveScan": 2 * 4, "TokenMerge": 1}  # forward + backward scan per block; one merge
    parsed = parse_network(rtx, onnx_file, with_plugins=True)
    assert len(layers_by_type(parsed.network)["PLUGIN_V3"]) == sum(counts.values())
    mapped = {(namespace, name) for _, namespace, name in plugin_layers(rtx.trt, parsed.network)}
    assert mapped == {("rmeeto", "SelectiveScan"), ("rmeeto", "TokenMerge")}


def test_function_bodies_are_inlined_without_plugins_even_when_registered(tiny_exports, rtx):
    onnx_path = tiny_exports[("fp32", False)]
    parsed = parse_network(rtx, load_onnx(onnx_path), with_plugins=False)
    layers = layers_by_type(parsed.network)
    assert "PLUGIN_V3" not in layers
    assert "RECURRENCE" in layers or "LOOP_OUTPUT" in layers  # the scan bodies became TensorRT loops


def test_custom_node_graph_builds_without_plugins(tiny_exports, rtx, tmp_path):
    record = build_engine(tiny_exports[("fp32", False)], tmp_path / "model.engine", backend="tensorrt-rtx", plugins="off")
    assert record.plugins is None and record.engine_bytes > 0


def test_plugins_receive_the_node_attributes(tiny_exports, rtx, tiny_model):
    onnx_path = tiny_exports[("fp32", False)]
    parsed = parse_network(rtx, load_onnx(onnx_path), with_plugins=True)
    values = {}
    for index in range(parsed.network.num_layers):
        layer = parsed.network.get_layer(index)
        if layer.type == rtx.trt.LayerType.PLUGIN_V3:
            layer.__class__ = rtx.trt.IPluginV3Layer
            plugin = layer.plugin  # our Python object: its parsed field values are readable
            values.setdefault(plugin.plugin_name, []).append(plugin.values)
    schedule = tiny_model.schedule
    (merge_block,) = schedule.merge_blocks
    assert values["TokenMerge"] == [{"r": schedule.r, "cls_index": schedule.cls_index_per_block[merge_block - 1]}]
    assert sorted(v["reverse"] for v in values["SelectiveScan"]) == [0] * 4 + [1] * 4
    assert all(v["delta_softplus"] == 1 for v in values["SelectiveScan"])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_portable_graph_builds_ahead_of_time_without_a_gpu(tiny_exports, rtx, tmp_path, precision):
    engine = tmp_path / "model.engine"
    record = build_engine(tiny_exports[(precision, True)], engine, backend="tensorrt-rtx", plugins="off", precision=precision,
                          target_cc="sm89")
    assert record.plugins is None and record.target == "sm89" and record.precision == precision
    assert engine.stat().st_size == record.engine_bytes > 0


@pytest.mark.parametrize("kind, plugins", [("portable", "none"), ("plugin", "python")])
def test_int8_graph_builds_strongly_typed(int8_graphs, rtx, tmp_path, kind, plugins):
    """INT8 comes from the graph's Q/DQ pairs (strongly typed), not from an INT8 builder flag."""
    onnx_path = int8_graphs[kind]
    layers = layers_by_type(parse_network(rtx, load_onnx(onnx_path), with_plugins=plugins != "none").network)
    # 25 linear layers, less the out_proj the merge reads: 24 activation and 24 weight Q/DQ pairs
    assert len(layers["QUANTIZE"]) == len(layers["DEQUANTIZE"]) == 48
    record = build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins=plugins,
                          precision="int8", target_cc="sm89")
    assert record.precision == "int8" and record.flags["strongly_typed"]
    assert record.engine_bytes == (tmp_path / "model.engine").stat().st_size > 0
