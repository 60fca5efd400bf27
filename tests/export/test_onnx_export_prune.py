"""The pruning step exports as standard ONNX (TopK + Gather, no custom op) and ONNX Runtime keeps
exactly the tokens PyTorch keeps. A whole pruned Vim's export, parity and engine: tests/pipelines/test_build.py."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from rmeeto_export.export.functions import DOMAIN
from rmeeto_export.export.onnx_export import export_module
from rmeeto_export.merge.prune import keep_important_tokens, ssm_importance


class _PruningStep(nn.Module):
    def __init__(self, num_keep: int, cls_index: int) -> None:
        super().__init__()
        self.num_keep, self.cls_index = num_keep, cls_index

    def forward(self, hidden, residual, scan_output):
        return keep_important_tokens(hidden, residual, ssm_importance(scan_output), self.num_keep, self.cls_index)[:2]


def step_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    hidden, residual = torch.randn(4, 17, 8, generator=generator), torch.randn(4, 17, 8, generator=generator)
    scan_output = torch.randn(4, 17, 16, generator=generator)
    scan_output[0, 2], scan_output[0, 5] = -1.0, -3.0  # both clip to a zero score: a tie the lower position wins
    scan_output[1, 9] = scan_output[1, 12]  # an exact tie between positive scores
    scan_output[2, 4, 7] = float("nan")  # NaN scores are pruned first
    return hidden, residual, scan_output


def test_the_pruning_step_exports_to_standard_onnx_and_agrees_exactly():
    inputs = step_inputs()
    model = export_module(_PruningStep(11, 8), inputs, ["hidden", "residual", "scan_output"], ["hidden_out", "residual_out"])
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["TopK"] == 1 and not any(node.domain == DOMAIN for node in model.graph.node)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(zip(["hidden", "residual", "scan_output"], (t.numpy() for t in inputs)))
    expected = _PruningStep(11, 8)(*inputs)
    for actual, wanted in zip(session.run(None, feeds), expected):
        assert np.array_equal(actual, wanted.numpy())  # the same tokens are kept: the copies are bit-exact
