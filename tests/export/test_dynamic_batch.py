"""Graphs exported for a batch range: a symbolic batch axis, static token counts, PyTorch's logits at any batch."""

from __future__ import annotations

import onnx
import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.export import build_onnx
from rmeeto_export.export.batch import BatchRange, parity_batch_sizes, parse_batch
from rmeeto_export.export.onnx_export import BATCH_DIM, inline_custom_ops
from rmeeto_export.export.parity import compare_logits, run_onnx, torch_logits

RANGE = "1:4:16"


@pytest.fixture(scope="module")
def dynamic_graphs(merged_model, tmp_path_factory):
    """{portable: path} of the small merged model exported for batches 1..16."""
    folder = tmp_path_factory.mktemp("dynamic")
    graph = build_onnx(merged_model, batch=RANGE)
    paths = {False: folder / "model.onnx", True: folder / "model.portable.onnx"}
    paths[False].write_bytes(graph.SerializeToString())
    paths[True].write_bytes(inline_custom_ops(graph).SerializeToString())
    return paths


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("portable", [False, True], ids=["custom-ops", "portable"])
def test_only_the_batch_axis_is_symbolic(dynamic_graphs, portable):
    graph = onnx.load(str(dynamic_graphs[portable])).graph
    assert _dims(graph.input[0]) == [BATCH_DIM, 3, 32, 32]
    assert _dims(graph.output[0]) == [BATCH_DIM, 10]
    # Token counts stay static: every intermediate shape the graph states has a symbolic axis 0 at most.
    for info in graph.value_info:
        assert all(isinstance(dim, int) for dim in _dims(info)[1:]), info.name


@pytest.mark.parametrize("portable", [False, True], ids=["custom-ops", "portable"])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_runs_at_every_batch_size_equal_to_pytorch(dynamic_graphs, merged_model, images, portable, batch):
    actual, provider = run_onnx(dynamic_graphs[portable], images[:batch].numpy(), batch=batch)
    report = compare_logits(actual, torch_logits(merged_model, images[:batch]), "fp32", provider)
    assert actual.shape == (batch, 10)
    assert report.passed, report  # fp32 tolerance: same math, another summation order (export/parity.py)


def test_fixed_batch_graph_keeps_static_shapes_and_refuses_another_batch(exported, export_batch, images):
    graph = onnx.load(str(exported[("fp32", False)])).graph  # exported at a fixed batch (tests/export/conftest.py)
    assert _dims(graph.input[0]) == [export_batch, 3, 32, 32] and _dims(graph.output[0]) == [export_batch, 10]
    with pytest.raises(UserError, match=f"static batch of {export_batch}; it cannot run batches of 4"):
        run_onnx(exported[("fp32", False)], images[:4].numpy(), batch=4)


@pytest.mark.parametrize(
    "spec, parsed",
    [("8", BatchRange(8, 8, 8)), ("1:8:64", BatchRange(1, 8, 64)), (" 2:2:4 ", BatchRange(2, 2, 4)), (3, BatchRange(3, 3, 3)),
     ((1, 2, 3), BatchRange(1, 2, 3)), (None, BatchRange(1, 1, 1)), ("4:4:4", BatchRange.fixed(4))],
)
def test_parse_batch(spec, parsed):
    assert parse_batch(spec) == parsed


@pytest.mark.parametrize(
    "spec, message",
    [("8:4:64", "batch range 8:4:64 needs MIN <= OPT <= MAX"), ("1:8:4", "needs MIN <= OPT <= MAX"),
     ("0", "at least 1"), ("0:1:2", "at least 1"), (0, "at least 1"), ("a:b:c", "whole numbers"), ("1:8", "whole numbers"),
     ("-1:2:3", "whole numbers"), ("1.5", "whole numbers"), ("", "whole numbers")],
)
def test_bad_batch_is_one_line_error(spec, message):
    with pytest.raises(UserError, match=message) as error:
        parse_batch(spec)
    assert "\n" not in str(error.value)


def test_dynamic_and_trace_size():
    assert not BatchRange.fixed(8).dynamic and BatchRange(1, 8, 64).dynamic
    assert BatchRange(1, 8, 64).trace_size == 2 and BatchRange.fixed(1).trace_size == 1 and BatchRange(4, 8, 8).trace_size == 4
    assert str(BatchRange(1, 8, 64)) == "1:8:64" and str(BatchRange.fixed(8)) == "8"


def test_parity_batch_sizes_are_min_opt_max_capped():
    assert parity_batch_sizes(BatchRange(1, 8, 64), cap=16) == (1, 8, 16)
    assert parity_batch_sizes(BatchRange(1, 8, 64), cap=64) == (1, 8, 64)
    assert parity_batch_sizes(BatchRange(32, 48, 64), cap=16) == (32,)
    assert parity_batch_sizes(BatchRange.fixed(4), cap=16) == (4,)
