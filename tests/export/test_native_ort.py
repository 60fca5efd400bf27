"""librmeeto_ort_ops.so in ONNX Runtime sessions on our exported graphs (plain, merged, fp16, INT8 Q/DQ)
against the PyTorch model, with proof that the library, not the function bodies, ran the rmeeto nodes."""

from __future__ import annotations

import json
import os
from collections import Counter

import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from rmeeto_export.calibration.parity import Int8Tolerance, compare_int8_logits
from rmeeto_export.contracts import DOMAIN, DOMAIN_VERSION, SELECTIVE_SCAN
from rmeeto_export.export import export_onnx
from rmeeto_export.export.parity import compare_logits, run_onnx, session_options, torch_logits
from rmeeto_export.models.ops import selective_scan_reference
from rmeeto_export.models.vim import with_scan_backend
from tests.support.kernel_inputs import TOLERANCE, assert_close_to_scale, merge_inputs, scan_inputs
from tests.support.models import TINY_VIM, tiny_vim
from tests.support.native_build import native_dir, native_ops, ort_ops_library  # noqa: F401 - fixtures


def images(count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, TINY_VIM["img_size"], TINY_VIM["img_size"], generator=torch.Generator().manual_seed(2))


def kernel_ops(onnx_path, native: bool) -> Counter:
    """How often each op type's kernel ran in one batch-1 inference (ONNX Runtime's profiler)."""
    options = session_options(native)
    options.enable_profiling = True
    options.profile_file_prefix = os.fspath(onnx_path) + (".native" if native else ".bodies")
    session = ort.InferenceSession(os.fspath(onnx_path), options, providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: images(1).numpy()})
    with open(session.end_profiling()) as trace:
        events = json.load(trace)
    return Counter(e["args"]["op_name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("kernel_time"))


def test_library_runs_the_rmeeto_nodes_and_bodies_run_without_it(ort_ops_library, tiny_exports):
    graph = tiny_exports["fp32", False]
    with_library, without = kernel_ops(graph, native=True), kernel_ops(graph, native=False)
    depth = TINY_VIM["depth"]
    assert with_library["SelectiveScan"] == 2 * depth and with_library["TokenMerge"] == 1  # both directions
    assert with_library["Scan"] == 0
    assert without["SelectiveScan"] == 0 and without["Scan"] == 2 * depth  # the function bodies' Scan


@pytest.mark.parametrize("merge_r", [0, 2], ids=["plain", "merged"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_native_graph_matches_pytorch(ort_ops_library, tmp_path, merge_r, precision):
    model = tiny_vim(merge_r=merge_r, spread_logits=True)
    graph = export_onnx(model, tmp_path / "model.onnx", precision=precision)
    inputs = images()
    actual, provider = run_onnx(graph, inputs.numpy())
    # The oracle is the model on the reference ops: with the default backend it would run the native
    # ops too, and a kernel bug would cancel out.
    report = compare_logits(actual, torch_logits(with_scan_backend(model, "reference"), inputs), precision, provider)
    assert report.passed, report  # the build's own parity tolerances


def test_native_int8_graph_matches_pytorch(ort_ops_library, int8_graphs, tiny_model, image_batch):
    actual, provider = run_onnx(int8_graphs["plugin"], image_batch.numpy())
    # The tiny model has random weights: top-1 is not judged (as the build does), the logit errors are.
    expected = torch_logits(with_scan_backend(tiny_model, "reference"), image_batch)
    report = compare_int8_logits(actual, expected, provider, Int8Tolerance(min_top1_agreement=0.0))
    assert report.passed, report
    bodies, _ = run_onnx(int8_graphs["plugin"], image_batch.numpy(), native_ops=False)
    assert compare_int8_logits(actual, bodies, provider, Int8Tolerance(min_top1_agreement=0.0)).passed


def one_node_session(library, op_type: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> ort.InferenceSession:
    """A session on one fp32 rmeeto node that carries no attributes, run by the library."""
    node = helper.make_node(op_type, list(inputs), outputs, domain=DOMAIN)
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, t.shape) for name, t in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(os.fspath(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_library_fills_in_the_contracts_attribute_defaults(ort_ops_library):
    inputs = scan_inputs(2, 8, 16, 9, optional=False, dtype=torch.float32, seed=0, device="cpu")
    session = one_node_session(ort_ops_library, "SelectiveScan", inputs, ["y"])
    (y,) = session.run(None, {name: t.numpy() for name, t in inputs.items()})
    expected = selective_scan_reference(**inputs, **SELECTIVE_SCAN.defaults)  # softplus on, forward
    assert_close_to_scale(torch.from_numpy(y), expected, TOLERANCE[torch.float32])


def test_library_rejects_a_merge_without_its_schedule(ort_ops_library):
    hidden, residual, size = merge_inputs(1, 9, 8, torch.float32, seed=0)
    with pytest.raises(Exception, match="TokenMerge: .*'r'"):  # onnxruntime raises its own Fail type
        one_node_session(ort_ops_library, "TokenMerge", {"hidden": hidden, "residual": residual, "size": size},
                         ["hidden_out", "residual_out", "size_out"])  # fmt: skip
