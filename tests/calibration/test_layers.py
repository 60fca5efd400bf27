"""Which nodes get INT8: Vim's linear layers, the same ones in the plugin and the portable export."""

import dataclasses
from collections import Counter

import onnx
import pytest

from rmeeto_export.calibration import linear_layers
from rmeeto_export.calibration.layers import embed_dim
from rmeeto_export.errors import UserError
from tests.support.models import TINY_VIM
from rmeeto_export.export import build_onnx

DEPTH = TINY_VIM["depth"]
# Per block: in_proj, out_proj, and x_proj + dt_proj for each of the two scan directions; one head.
EXPECTED_ROLES = {"in_proj": DEPTH, "x_proj": 2 * DEPTH, "dt_proj": 2 * DEPTH, "out_proj": DEPTH, "head": 1}


@pytest.mark.parametrize("kind", ["plugin", "portable"])
def test_every_linear_layer_and_nothing_else_is_found(fp32_graphs, kind):
    layers = linear_layers(onnx.load(fp32_graphs[kind]))
    assert Counter(layer.role for layer in layers) == EXPECTED_ROLES


def test_both_exports_quantise_the_same_tensors(fp32_graphs):
    plugin, portable = (linear_layers(onnx.load(fp32_graphs[kind])) for kind in ("plugin", "portable"))
    assert plugin == [dataclasses.replace(layer, node=p.node) for layer, p in zip(portable, plugin)]


@pytest.mark.parametrize("kind", ["plugin", "portable"])
def test_only_the_out_proj_before_the_merge_feeds_it(fp32_graphs, kind):
    """The tiny model merges at block 2, on block 1's mixer output."""
    feeding = [layer for layer in linear_layers(onnx.load(fp32_graphs[kind])) if layer.feeds_merge]
    assert [(layer.role, layer.node.split("/")[2]) for layer in feeding] == [("out_proj", "layers.1")]


def test_weight_shapes_match_their_roles(fp32_graphs):
    model = onnx.load(fp32_graphs["plugin"])
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    width = TINY_VIM["embed_dim"]
    assert embed_dim(model) == width
    for layer in linear_layers(model):
        out_channels = shapes[layer.weight][layer.channel_axis]
        expected = {"in_proj": 4 * width, "out_proj": width, "dt_proj": 2 * width, "head": TINY_VIM["num_classes"]}
        assert out_channels == expected.get(layer.role, out_channels)
        assert layer.channel_axis == (0 if layer.op_type == "Gemm" else 1)  # the head is a Gemm with transB


def test_an_fp16_graph_has_nothing_to_quantise(tiny_model):
    with pytest.raises(UserError, match="fp16 weights"):
        linear_layers(build_onnx(tiny_model, precision="fp16"))


def test_a_graph_without_patch_embedding_is_refused():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(UserError, match="not a Vim exported"):
        linear_layers(onnx.helper.make_model(graph))
