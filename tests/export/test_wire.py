"""Cutting a serialized model's weights out and joining them back gives protobuf's own bytes."""

from __future__ import annotations

import onnx
import pytest

from rmeeto_export.export import build_onnx
from rmeeto_export.export.onnx_export import inline_custom_ops, inline_serialized
from rmeeto_export.export.wire import join_weights, split_weights
from tests.support.models import tiny_vim


@pytest.fixture(scope="module", params=[("fp32", 1), ("fp16", 1), ("fp32", "1:2:4")], ids=["fp32", "fp16", "batch-range"])
def exported(request) -> onnx.ModelProto:
    precision, batch = request.param
    return build_onnx(tiny_vim(merge_r=2), precision=precision, batch=batch)


def test_weights_split_off_and_joined_back_give_the_same_bytes(exported):
    serialized = exported.SerializeToString()
    split = split_weights(serialized)
    rest = onnx.load_model_from_string(split.rest)
    assert len(rest.graph.initializer) == 0 and len(rest.graph.node) == len(exported.graph.node)
    assert len(split.weights) > 0 and len(split.rest) + len(split.weights) <= len(serialized)
    assert b"".join(join_weights(split.rest, split.weights)) == serialized


def test_inlining_the_serialized_model_is_byte_identical_to_inlining_the_model(exported):
    expected = inline_custom_ops(exported).SerializeToString()
    assert b"".join(inline_serialized(exported.SerializeToString())) == expected


def test_a_model_without_weights_splits_into_itself():
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    serialized = onnx.helper.make_model(graph).SerializeToString()
    split = split_weights(serialized)
    assert split.rest == serialized and len(split.weights) == 0
    assert b"".join(join_weights(split.rest, split.weights)) == serialized


def test_weights_join_only_a_model_without_its_own(exported):
    serialized = exported.SerializeToString()
    with pytest.raises(ValueError, match="without initializers"):
        join_weights(serialized, split_weights(serialized).weights)
