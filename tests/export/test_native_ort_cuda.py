"""librmeeto_ort_ops.so's CUDA ops under ONNX Runtime's CUDA execution provider (`make gpu-check` builds
the library with them), against the PyTorch model on the reference ops."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rmeeto_export import native
from rmeeto_export.export import export_onnx
from rmeeto_export.export.parity import compare_logits, session_options, torch_logits
from rmeeto_export.models.vim import with_scan_backend
from tests.support.models import TINY_VIM, tiny_vim

CUDA_EP = "CUDAExecutionProvider"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA_EP not in ort.get_available_providers(),
                       reason="this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)"),
    pytest.mark.skipif(native.ort_ops_library() is None, reason="librmeeto_ort_ops.so is not built (make gpu-check builds it)"),
]


def test_cuda_provider_runs_the_rmeeto_nodes_on_our_cuda_ops(tmp_path):
    model = tiny_vim(merge_r=2, spread_logits=True)
    graph = export_onnx(model, tmp_path / "model.onnx")
    images = torch.randn(4, 3, TINY_VIM["img_size"], TINY_VIM["img_size"], generator=torch.Generator().manual_seed(3))
    options = session_options(native_ops=True)
    options.enable_profiling = True
    options.profile_file_prefix = os.fspath(tmp_path / "profile")
    session = ort.InferenceSession(os.fspath(graph), options, providers=[CUDA_EP, "CPUExecutionProvider"])
    logits = [session.run(None, {"images": images[i : i + 1].numpy()})[0] for i in range(len(images))]
    with open(session.end_profiling()) as trace:
        events = [e for e in json.load(trace) if e.get("cat") == "Node" and e["name"].endswith("kernel_time")]
    providers = {e["args"]["provider"] for e in events if e["args"]["op_name"] in ("SelectiveScan", "TokenMerge")}
    assert providers == {CUDA_EP}, f"the rmeeto nodes ran on {providers}: was {native.ort_ops_library()} built with CUDA?"
    actual = np.concatenate(logits).astype(np.float64)
    report = compare_logits(actual, torch_logits(with_scan_backend(model, "reference"), images), "fp32", CUDA_EP)
    assert report.passed, report  # the build's fp32 parity tolerance
