"""TensorRT-RTX builds one optimisation profile from a batch range; the record states it and the I/O."""

from __future__ import annotations

import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.trt import build_engine, read_record
from rmeeto_export.trt.record import TensorSpec
from tests.support.backends import needs_rtx, runnable_rtx_gpu

pytestmark = needs_rtx


def test_engine_of_a_batch_range_records_its_profile_and_io(range_engine):
    record = read_record(range_engine)
    assert record.batch == {"min": 1, "opt": 4, "max": 16}
    assert record.inputs == (TensorSpec("images", (-1, 3, 32, 32), "FLOAT"),)
    assert record.outputs == (TensorSpec("logits", (-1, 10), "FLOAT"),)


def test_fixed_batch_graph_refuses_a_range(fp32_graphs, tmp_path):
    with pytest.raises(UserError, match="fixed batch of 1; export it with a dynamic batch to build for 1:4:16"):
        build_engine(fp32_graphs["portable"], tmp_path / "model.engine", backend="tensorrt-rtx", plugins="off",
                     batch="1:4:16", target_cc="sm89")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
def test_engine_runs_every_batch_of_its_range_like_pytorch(tiny_model, tmp_path):
    """On a GPU: one engine with the 1..16 profile, run at 1, 4 and 16 images, against the PyTorch model."""
    runnable_rtx_gpu()
    import torch

    from rmeeto_export.export import export_onnx
    from rmeeto_export.export.parity import compare_logits, torch_logits
    from rmeeto_export.trt.runtime import Engine

    onnx_path = export_onnx(tiny_model, tmp_path / "model.portable.onnx", batch="1:4:16", portable=True)
    build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins="off", batch="1:4:16")
    engine = Engine(tmp_path / "model.engine")
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for batch in (1, 4, 16):
        logits = engine(images[:batch].cuda())["logits"].double().cpu().numpy()
        # TensorRT may run fp32 matmuls in TF32 (a 10-bit mantissa, as fp16's): the fp16 tolerance applies.
        report = compare_logits(logits, torch_logits(tiny_model, images[:batch]), "fp16", "tensorrt")
        assert logits.shape == (batch, 10) and report.passed, (batch, report)
