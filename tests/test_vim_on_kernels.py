"""A whole merged Vim-Ti (real shapes: 224 px, 197 tokens, 24 blocks, r = 11; random weights) whose
rmeeto:: ops run on the project's kernels (the emulated device in CI, a real GPU where there is one)
gives the reference model's logits."""

from __future__ import annotations

import contextlib

import pytest
import torch

from rmeeto_export import kernels
from rmeeto_export.models import create_model


def _scan_on_kernels(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    return kernels.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=delta_softplus, reverse=reverse)


def _merge_on_kernels(hidden, residual, size, r, cls_index):
    return kernels.token_merge(hidden, residual, size, r, cls_index)


@contextlib.contextmanager
def ops_on_kernels(device: torch.device):
    """rmeeto::selective_scan and rmeeto::token_merge dispatch to the kernels for tensors on `device`."""
    if device.type == "cuda":  # the product's registration, which stays (every GPU run wants it)
        kernels.register_cuda_kernels()
        yield
        return
    # The emulated device takes CPU tensors: a scoped registration, the CPU reference is back afterwards.
    with torch.library._scoped_library("rmeeto", "IMPL") as library:
        library.impl("selective_scan", _scan_on_kernels, "CPU")
        library.impl("token_merge", _merge_on_kernels, "CPU")
        yield


@pytest.mark.gpu  # on the kernels device: a real GPU when there is one (make gpu-check), else the emulated one
def test_merged_vim_t_on_the_kernels_gives_the_reference_logits(kernel_device, monkeypatch):
    torch.manual_seed(0)
    model = create_model("vim_t", merge_ratio=0.31, scan_backend="reference").eval()
    assert model.schedule.r == 11
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        expected = model(images)  # the CPU reference ops

    scans, scan = [], kernels.selective_scan
    monkeypatch.setattr(kernels, "selective_scan", lambda *a, **k: scans.append(1) or scan(*a, **k))
    device = kernel_device.device
    if device.type == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the patch embedding in true fp32
    with torch.inference_mode(), ops_on_kernels(device):
        actual = model.to(device)(images.to(device)).cpu()
    assert len(scans) == 2 * 24  # both directions of every block ran on the kernels
    # fp32 on both sides, the same math in another order: about 1e-7 relative per op, compounding over
    # 24 blocks; 1e-4 of the logit scale leaves room for that, while one wrongly matched merge or a
    # wrong scan step moves logits by a good fraction of their scale.
    error = (actual - expected).abs().max()
    assert error <= 1e-4 * expected.abs().max(), f"max |error| {error:.3g}, logit scale {expected.abs().max():.3g}"
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))

