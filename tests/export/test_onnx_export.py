"""Whole-model export: graph structure, static shapes, fp16 typing, ONNX Runtime vs PyTorch, determinism."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rmeeto_export.errors import UserError
from rmeeto_export.export import build_onnx, check_graph, export_onnx
from rmeeto_export.contracts import DOMAIN, SELECTIVE_SCAN, TOKEN_MERGE
from rmeeto_export.export.graph_checks import custom_op_counts, inferred
from rmeeto_export.export.onnx_export import inline_custom_ops, with_unique_node_names
from rmeeto_export.export.parity import run_onnx
from rmeeto_export.models.vim import create_model
from tests.support.models import TINY_VIM, tiny_vim
from tests.support.native_build import native_dir, native_ops  # noqa: F401 - fixtures

VARIANTS = [("fp32", False), ("fp32", True), ("fp16", False), ("fp16", True)]
VARIANT_IDS = ["fp32-custom", "fp32-portable", "fp16-custom", "fp16-portable"]
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
# Nodes one op becomes once inlined and folded (measured: 36 per scan in fp32, 41 in fp16 with its
# casts, 54 per merge), whatever the token count; an unrolled scan (1612 nodes per block at 197 tokens)
# or a sort/scatter emulation would be many times more.
MAX_NODES_PER_INLINED_SCAN, MAX_NODES_PER_INLINED_MERGE = 45, 80


def load(path) -> onnx.ModelProto:
    return onnx.load(path)


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = inferred(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def test_custom_graph_has_one_node_per_op_call_with_plugin_attributes(exported, merged_model):
    model = load(exported[("fp32", False)])
    depth, schedule = TINY_VIM["depth"], merged_model.schedule
    assert custom_op_counts(model) == {SELECTIVE_SCAN.name: 2 * depth, TOKEN_MERGE.name: len(schedule.merge_blocks)}
    custom = [node for node in model.graph.node if node.domain == DOMAIN]
    for node in custom:
        assert attributes(node)["plugin_namespace"] == b"rmeeto" and attributes(node)["plugin_version"] == b"1"
    scans = [attributes(n) for n in custom if n.op_type == SELECTIVE_SCAN.name]
    assert sorted(a["reverse"] for a in scans) == [0] * depth + [1] * depth  # backward scans, no flips
    assert all(a["delta_softplus"] == 1 for a in scans)
    merges = [attributes(n) for n in custom if n.op_type == TOKEN_MERGE.name]
    expected = [(schedule.r, schedule.cls_index_per_block[block - 1]) for block in schedule.merge_blocks]
    assert [(a["r"], a["cls_index"]) for a in merges] == expected
    assert {(f.domain, f.name) for f in model.functions} == {(DOMAIN, SELECTIVE_SCAN.name), (DOMAIN, TOKEN_MERGE.name)}
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[DOMAIN] == 1 and opsets[""] >= 18


def test_unmerged_model_exports_without_token_merge(tmp_path):
    model = load(export_onnx(tiny_vim(merge_r=0, spread_logits=True), tmp_path / "plain.onnx"))
    assert custom_op_counts(model) == {SELECTIVE_SCAN.name: 2 * TINY_VIM["depth"]}
    assert [f.name for f in model.functions] == [SELECTIVE_SCAN.name]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_portable_graph_is_plain_onnx_and_small(exported, precision):
    custom, portable = load(exported[(precision, False)]), load(exported[(precision, True)])
    assert not custom_op_counts(portable) and not portable.functions
    assert DOMAIN not in {o.domain for o in portable.opset_import}
    counts = custom_op_counts(custom)
    assert sum(node.op_type == "Scan" for node in portable.graph.node) == counts[SELECTIVE_SCAN.name]
    budget = (
        len(custom.graph.node)
        + MAX_NODES_PER_INLINED_SCAN * counts[SELECTIVE_SCAN.name]
        + MAX_NODES_PER_INLINED_MERGE * counts[TOKEN_MERGE.name]
    )
    assert len(portable.graph.node) <= budget


def node_names(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes of `graph` and of all its subgraphs (Scan bodies), in graph order."""
    names = []
    for node in graph.node:
        names.append(node.name)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                names.extend(node_names(subgraph))
    return names


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_inlined_graphs_name_every_node_once(exported, precision):
    """TensorRT warns about repeated node names, which inlining one function body many times can make."""
    portable = load(exported[(precision, True)])
    inlined_later = inline_custom_ops(load(exported[(precision, False)]))  # as the build stage and trt/ do
    for model in (portable, inlined_later):
        names = node_names(model.graph)
        assert sum(node.op_type == "Scan" for node in model.graph.node) == 2 * TINY_VIM["depth"]
        assert all(names) and len(set(names)) == len(names)


def test_inlining_keeps_every_weight_and_leaves_its_input_as_it_was(exported):
    model = load(exported[("fp32", False)])
    before = model.SerializeToString()
    inlined = inline_custom_ops(model)
    assert model.SerializeToString() == before
    weights = lambda m: [tensor.SerializeToString() for tensor in m.graph.initializer]  # noqa: E731
    assert weights(inlined) == weights(model) and len(weights(model)) > 0


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_trace_takes_scan_values_from_the_native_kernels_and_the_graph_is_the_same(native_ops, monkeypatch, precision):
    model = tiny_vim(merge_r=2)
    calls = []
    native_scan = native_ops.selective_scan
    monkeypatch.setattr(native_ops, "selective_scan", lambda *args: calls.append(args) or native_scan(*args))
    on_native = build_onnx(model, precision=precision).SerializeToString()
    assert len(calls) == 2 * TINY_VIM["depth"]  # every scan of the trace, both directions
    monkeypatch.setattr(native_ops, "supports", lambda *tensors: False)
    assert build_onnx(model, precision=precision).SerializeToString() == on_native  # on the reference
    assert len(calls) == 2 * TINY_VIM["depth"]


def test_repeated_node_names_get_deterministic_suffixes():
    relu = lambda name: onnx.helper.make_node("Relu", ["x"], ["x"], name=name)  # noqa: E731
    body = onnx.helper.make_graph([relu("step"), relu("Relu")], "body", [], [])
    scan = onnx.helper.make_node("Scan", [], [], name="step", body=body, num_scan_inputs=0)
    graph = onnx.helper.make_graph([relu("Relu"), relu("Relu"), relu("Relu_1"), relu(""), scan], "main", [], [])
    renamed = with_unique_node_names(onnx.helper.make_model(graph))
    assert node_names(renamed.graph) == ["Relu", "Relu_1", "Relu_1_1", "Relu_2", "step", "step_1", "Relu_3"]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_graph_passes_full_checker_and_every_tensor_is_static(exported, export_batch, variant):
    model = load(exported[variant])
    check_graph(model)  # raises on checker errors or any tensor without a static shape
    (graph_input,) = model.graph.input
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [export_batch, 3, 32, 32]
    assert graph_input.type.tensor_type.elem_type == FLOAT  # fp16 graphs cast inside
    (graph_output,) = model.graph.output
    assert [d.dim_value for d in graph_output.type.tensor_type.shape.dim] == [export_batch, TINY_VIM["num_classes"]]


@pytest.mark.parametrize("portable", [False, True], ids=["custom", "portable"])
def test_onnx_runtime_matches_pytorch_fp32(exported, merged_model, images, portable):
    actual, _ = run_onnx(exported[("fp32", portable)], images.numpy())
    with torch.no_grad():
        expected = merged_model(images).double().numpy()
    error = np.abs(actual - expected).max()
    assert error <= 1e-4  # fp32 graph, same math in another summation order
    top2 = np.sort(expected, axis=1)[:, -2:]
    # The 100% top-1 agreement below means something only if no image is a near-tie.
    assert (top2[:, 1] - top2[:, 0]).min() > 100 * error
    assert (actual.argmax(1) == expected.argmax(1)).all()


def test_fp16_custom_graph_keeps_scan_parameters_fp32(exported):
    model = load(exported[("fp16", False)])
    types = elem_types(model)
    for node in model.graph.node:
        if node.op_type == SELECTIVE_SCAN.name:
            named = dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), node.input))
            assert {k: types[named[k]] for k in ("A", "D", "delta_bias")} == {"A": FLOAT, "D": FLOAT, "delta_bias": FLOAT}
            assert types[named["u"]] == types[named["z"]] == FLOAT16
        if node.op_type == TOKEN_MERGE.name:
            hidden, residual, size = node.input
            assert (types[hidden], types[residual], types[size]) == (FLOAT16, FLOAT, FLOAT)  # residual stays fp32


def test_fp16_portable_graph_is_strongly_typed(exported):
    """Reductions and the scan run in fp32, the linears in fp16, with explicit casts between."""
    model = load(exported[("fp16", True)])
    types = elem_types(model)
    weights = {init.name for init in model.graph.initializer if len(init.dims) == 2}  # linears' (the merge's are 3-D)
    nodes = model.graph.node
    reductions = [n for n in nodes if n.op_type.startswith("Reduce")]
    assert reductions and all(types[n.input[0]] == FLOAT for n in reductions)
    scans = [n for n in nodes if n.op_type == "Scan"]
    assert scans and all(types[name] == FLOAT for n in scans for name in [*n.input, *n.output])
    linears = [n for n in nodes if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    assert len(linears) >= 4 * TINY_VIM["depth"]  # in_proj, x_proj, dt_proj, out_proj per block (both directions)
    assert all(types[n.input[0]] == FLOAT16 for n in linears)
    casts_to = {attributes(n)["to"] for n in nodes if n.op_type == "Cast"}
    assert {FLOAT, FLOAT16} <= casts_to


def test_fp16_graph_matches_pytorch_fp32_within_fp16_tolerance(exported, merged_model, images):
    expected = merged_model(images).detach().double().numpy()
    for portable in (False, True):
        actual, _ = run_onnx(exported[("fp16", portable)], images.numpy())
        # fp16 activations into every linear (unit roundoff 4.9e-4) through 4 blocks and the head:
        # logits of order 1-5 move by a few 1e-3; 2e-2 of the logit scale still catches a wrong cast.
        assert np.abs(actual - expected).max() <= 2e-2 * np.abs(expected).max()
        assert (actual.argmax(1) == expected.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("portable", [False, True], ids=["custom", "portable"])
def test_export_is_byte_identical_across_runs(merged_model, tmp_path, portable):
    first = export_onnx(merged_model, tmp_path / "a" / "model.onnx", precision="fp16", portable=portable)
    second = export_onnx(merged_model, tmp_path / "b" / "model.onnx", precision="fp16", portable=portable)
    assert first.read_bytes() == second.read_bytes()


def test_export_is_byte_identical_in_a_fresh_process(tmp_path):
    """No process-dependent names, addresses or hash orders end up in the file."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.support.models import tiny_vim; from rmeeto_export.export import export_onnx;"
        "export_onnx(tiny_vim(spread_logits=True), sys.argv[2], portable=True)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(Path(__file__).parents[2]), str(tmp_path / "other.onnx")], env=env, check=True)
    here = export_onnx(tiny_vim(spread_logits=True), tmp_path / "here.onnx", portable=True)
    assert here.read_bytes() == (tmp_path / "other.onnx").read_bytes()


def test_export_leaves_only_the_file_and_does_not_touch_the_model(merged_model, tmp_path):
    before = {k: v.clone() for k, v in merged_model.state_dict().items()}
    path = export_onnx(merged_model, tmp_path / "model.onnx", precision="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert path.stat().st_size > 0
    after = merged_model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(precision="int4"), "unknown precision"),
        (dict(batch=0), "batch sizes must be at least 1"),
        (dict(batch=2.0), "batch must be N or MIN:OPT:MAX"),
    ],
)
def test_bad_options_are_user_errors_and_write_nothing(merged_model, tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        export_onnx(merged_model, tmp_path / "model.onnx", **options)
    assert not any(tmp_path.iterdir())


def test_mamba_ssm_scan_backend_is_refused(tmp_path):
    model = create_model("vim_t", scan_backend="mamba_ssm", merge_r=2, **TINY_VIM)
    with pytest.raises(UserError, match="scan_backend"):
        export_onnx(model, tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())
