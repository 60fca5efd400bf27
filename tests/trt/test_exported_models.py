"""TensorRT-RTX builds of a small merged Vim exported by rmeeto_export.export."""

import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx; CI installs it)")

import torch  # noqa: E402

from rmeeto_export.export import export_onnx  # noqa: E402
from rmeeto_export.export.graph_checks import custom_op_counts  # noqa: E402
from rmeeto_export.models import create_model  # noqa: E402
from rmeeto_export.trt import build_engine, layers_by_type  # noqa: E402
from rmeeto_export.trt.builder import load_onnx, parse_network  # noqa: E402
from rmeeto_export.trt.graph import plugin_layers  # noqa: E402

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def tiny_model():
    """17 tokens, class token at 8, r=2 merged at block 2."""
    torch.manual_seed(0)
    return create_model("vim_t", embed_dim=32, depth=4, img_size=32, patch_size=8, num_classes=10, merge_r=2).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    """{(precision, portable): onnx path} of the tiny merged test model."""
    model = tiny_model
    folder = tmp_path_factory.mktemp("exported")
    variants = [("fp32", False), ("fp16", False), ("fp32", True)]
    return {
        (precision, portable): export_onnx(model, folder / f"{precision}_{portable}.onnx", precision=precision, portable=portable)
        for precision, portable in variants
    }


@pytest.mark.parametrize("target", ["sm86", "sm89"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plugin_graph_builds_with_the_python_plugins(exported, rtx, tmp_path, precision, target):
    engine_path = tmp_path / "model.engine"
    record = build_engine(
        exported[(precision, False)], engine_path, backend="tensorrt-rtx", plugins="python", precision=precision, target_cc=target
    )
    assert record.target == target and record.precision == precision and record.plugins.is_python
    assert record.engine_bytes == engine_path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]


def test_parser_maps_every_custom_node_to_our_plugin(exported, rtx):
    onnx_path = exported[("fp32", False)]
    model = load_onnx(onnx_path)
    counts = custom_op_counts(model)
    assert counts == {"SelectiveScan": 2 * 4, "TokenMerge": 1}  # forward + backward scan per block; one merge
    parsed = parse_network(rtx, model, onnx_path, with_plugins=True)
    assert len(layers_by_type(parsed.network)["PLUGIN_V3"]) == sum(counts.values())
    mapped = {(namespace, name) for _, namespace, name in plugin_layers(rtx.trt, parsed.network)}
    assert mapped == {("rmeeto", "SelectiveScan"), ("rmeeto", "TokenMerge")}


def test_function_bodies_are_inlined_without_plugins_even_when_registered(exported, rtx):
    onnx_path = exported[("fp32", False)]
    parsed = parse_network(rtx, load_onnx(onnx_path), onnx_path, with_plugins=False)
    layers = layers_by_type(parsed.network)
    assert "PLUGIN_V3" not in layers
    assert "RECURRENCE" in layers or "LOOP_OUTPUT" in layers  # the scan bodies became TensorRT loops


@pytest.mark.parametrize("variant", [("fp32", True), ("fp32", False)], ids=["portable-graph", "custom-graph-inlined"])
def test_graph_builds_without_plugins(exported, rtx, tmp_path, variant):
    record = build_engine(exported[variant], tmp_path / "model.engine", backend="tensorrt-rtx", plugins="off")
    assert record.plugins is None and record.engine_bytes > 0


def test_plugins_receive_the_node_attributes(exported, rtx, tiny_model):
    onnx_path = exported[("fp32", False)]
    parsed = parse_network(rtx, load_onnx(onnx_path), onnx_path, with_plugins=True)
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
