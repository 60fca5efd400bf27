"""A real TensorRT-RTX engine of the tiny merged Vim with a batch range, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.backends import tensorrt_rtx_or_skip

ENGINE_BATCH = "1:4:16"


@pytest.fixture(scope="session")
def range_engine(tiny_model, tmp_path_factory) -> Path:
    """model.engine (portable graph, no plugins, sm89) for batches 1..16, its build record beside it."""
    tensorrt_rtx_or_skip()
    from rmeeto_export.export import export_onnx
    from rmeeto_export.trt import build_engine

    folder = tmp_path_factory.mktemp("range-engine")
    onnx_path = export_onnx(tiny_model, folder / "model.portable.onnx", batch=ENGINE_BATCH, portable=True)
    build_engine(onnx_path, folder / "model.engine", backend="tensorrt-rtx", plugins="off", batch=ENGINE_BATCH,
                 target_cc="sm89")
    return folder / "model.engine"
