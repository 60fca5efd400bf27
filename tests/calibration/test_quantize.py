"""The INT8 Q/DQ graphs: where Q/DQ sit, per-channel weight scales, the cache's activation scales, ORT runs."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rmeeto_export.calibration import calibrate, linear_layers, load_cache, quantize, quantize_model
from rmeeto_export.calibration.parity import check_int8_parity
from rmeeto_export.calibration.qdq import layers_to_quantize
from rmeeto_export.errors import UserError
from rmeeto_export.export import export_onnx
from tests.support.images import write_noise_images
from tests.support.models import tiny_vim

QDQ = ("QuantizeLinear", "DequantizeLinear")
KINDS = ["plugin", "portable"]


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def quantize_nodes_of_activations(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """{tensor: its QuantizeLinear} for the non-constant tensors (the weights have their own)."""
    constants = {init.name for init in model.graph.initializer}
    return {node.input[0]: node for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in constants}


def subgraphs(graph: onnx.GraphProto):
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield attribute.g
                yield from subgraphs(attribute.g)


@pytest.mark.parametrize("kind", KINDS)
def test_dequantized_tensors_feed_only_the_linear_layers(fp32_graphs, int8_graphs, kind):
    """Scan, merge, norms, convs and the residual stream see no Q/DQ: every DQ output goes to a linear layer."""
    model = onnx.load(int8_graphs[kind])
    linear_nodes = {layer.node for layer in linear_layers(onnx.load(fp32_graphs[kind]))}
    users = consumers(model.graph)
    dequantized = [node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"]
    assert dequantized
    for name in dequantized:
        assert {node.name for node in users[name]} <= linear_nodes, name
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert [user.op_type for user in users[node.output[0]]] == ["DequantizeLinear"]


@pytest.mark.parametrize("kind", KINDS)
def test_custom_op_bodies_and_scan_bodies_stay_float(int8_graphs, kind):
    model = onnx.load(int8_graphs[kind])
    inner = [node for function in model.functions for node in function.node]
    inner += [node for graph in subgraphs(model.graph) for node in graph.node]
    assert inner  # function bodies (plugin graph) or Scan bodies (portable graph) exist
    assert not [node.name for node in inner if node.op_type in QDQ]
    if kind == "plugin":
        assert {f.name for f in model.functions} == {"SelectiveScan", "TokenMerge"}
        custom = [node for node in model.graph.node if node.domain == "rmeeto"]
        producers = {out: node for node in model.graph.node for out in node.output}
        for node in custom:
            assert not [name for name in node.input if name in producers and producers[name].op_type in QDQ]


@pytest.mark.parametrize("kind", KINDS)
def test_weights_get_per_channel_symmetric_scales_on_the_output_axis(fp32_graphs, int8_graphs, kind):
    layers = layers_to_quantize(linear_layers(onnx.load(fp32_graphs[kind])), quantize_merge_inputs=False)
    model = onnx.load(int8_graphs[kind])
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    weight_q = {node.input[0]: node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] in inits}
    assert set(weight_q) == {layer.weight for layer in layers}
    users = consumers(model.graph)
    for layer in layers:
        quantize_node = weight_q[layer.weight]
        (dequantize_node,) = users[quantize_node.output[0]]
        weight, scale, zero = (inits[quantize_node.input[i]] for i in range(3))
        axis = onnx.helper.get_attribute_value(quantize_node.attribute[0])
        assert dequantize_node.op_type == "DequantizeLinear" and list(dequantize_node.input[1:]) == list(quantize_node.input[1:])
        assert onnx.helper.get_attribute_value(dequantize_node.attribute[0]) == axis == layer.channel_axis
        assert weight.dtype == np.float32 and zero.dtype == np.int8
        assert scale.shape == (weight.shape[axis],) and zero.shape == scale.shape and not zero.any()
        # Symmetric per channel: each channel's largest |w| lands at the top of the int8 range.
        channel_max = np.abs(weight).max(axis=1 - axis)
        assert np.allclose(scale * 127, channel_max, rtol=1e-2)


def test_activation_scales_are_the_cached_ones_per_tensor(fp32_graphs, int8_graphs, cache_path):
    cache = load_cache(cache_path)
    model = onnx.load(int8_graphs["plugin"])
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    quantized = quantize_nodes_of_activations(model)
    merge_input = {layer.activation for layer in linear_layers(onnx.load(fp32_graphs["plugin"])) if layer.feeds_merge}
    assert set(quantized) == set(cache.amax) - merge_input and len(merge_input) == 1
    for name, node in quantized.items():
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        assert scale.shape == () and zero.shape == () and zero == 0 and zero.dtype == np.int8
        assert scale == np.float32(cache.scales[name])


@pytest.mark.parametrize("kind", KINDS)
def test_int8_graph_runs_in_onnxruntime_close_to_pytorch(tiny_model, int8_graphs, image_batch, kind):
    images = image_batch
    session = ort.InferenceSession(str(int8_graphs[kind]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": images[:1].numpy()})[0].shape == (1, 10)
    parity = check_int8_parity(tiny_model, int8_graphs[kind], images)
    assert parity.passed, parity
    assert parity.max_rel > 0  # it really is quantised (an fp32 graph would be exact to ~1e-7)


def test_cache_of_other_weights_is_refused(cache_path, tmp_path):
    other = export_onnx(tiny_vim(seed=1), tmp_path / "other.onnx")
    with pytest.raises(UserError, match="other weights"):
        quantize(other, cache_path, tmp_path / "other.int8.onnx")
    assert not (tmp_path / "other.int8.onnx").exists()


def test_missing_model_is_a_user_error(cache_path, tmp_path):
    with pytest.raises(UserError, match="not found"):
        quantize(tmp_path / "none.onnx", cache_path, tmp_path / "out.onnx")


def test_ranges_are_computed_by_each_method(fp32_graphs, tmp_path):
    folder = write_noise_images(tmp_path / "images", 6, seed=2)
    amax = {}
    for method in ("max", "percentile", "entropy"):
        calibrate(fp32_graphs["plugin"], tmp_path / f"{method}.json", str(folder), 6, method)
        amax[method] = load_cache(tmp_path / f"{method}.json").amax
    assert amax["max"].keys() == amax["percentile"].keys() == amax["entropy"].keys()
    for name, largest in amax["max"].items():
        assert 0 < amax["percentile"][name] <= largest * (1 + 1e-6)  # a percentile never exceeds the maximum
        assert 0 < amax["entropy"][name] <= largest * (1 + 1e-6)
    assert amax["entropy"] != amax["max"]  # KL thresholds clip somewhere
    # out_proj's input (the scan output) always gets its max range: its outliers are signal.
    scan_outputs = {layer.activation for layer in linear_layers(onnx.load(fp32_graphs["plugin"])) if layer.role == "out_proj"}
    for method in ("percentile", "entropy"):
        assert {name: amax[method][name] for name in scan_outputs} == {name: amax["max"][name] for name in scan_outputs}


def test_parity_fails_when_activations_are_clipped(tiny_model, fp32_graphs, cache_path, image_batch, tmp_path):
    """The INT8 tolerance is tight enough to catch ranges 3x too small (most activations saturate)."""
    cache = load_cache(cache_path)
    clipped = dataclasses.replace(cache, amax={name: value / 3 for name, value in cache.amax.items()})
    path = tmp_path / "clipped.onnx"
    onnx.save(quantize_model(onnx.load(fp32_graphs["plugin"]), clipped), str(path))
    assert not check_int8_parity(tiny_model, path, image_batch).passed


@pytest.mark.parametrize("quantize_merge_inputs", [False, True])
def test_the_merge_metric_stays_float_unless_asked(fp32_graphs, cache_path, quantize_merge_inputs):
    fp32 = onnx.load(fp32_graphs["portable"])
    merge_input = next(layer.activation for layer in linear_layers(fp32) if layer.feeds_merge)
    model = quantize_model(fp32, load_cache(cache_path), quantize_merge_inputs=quantize_merge_inputs)
    quantized = set(quantize_nodes_of_activations(model))
    assert (merge_input in quantized) == quantize_merge_inputs
    assert len(quantized) == len(linear_layers(fp32)) - (0 if quantize_merge_inputs else 1)
