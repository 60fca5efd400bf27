"""TensorRT-RTX parses and builds the portable graph (no plugins) of the small merged model.

Builds ahead of time for SM 8.9 on a CPU-only machine (DESIGN.md section 6), through the project's
builder (rmeeto_export.trt) so the export is checked against the same build path deployment uses.
"""

from __future__ import annotations

import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx; CI installs it)")

from rmeeto_export.trt import build_engine  # noqa: E402

pytestmark = pytest.mark.trt


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_rtx_builds_the_portable_graph(exported, tmp_path, precision):
    engine = tmp_path / "model.engine"
    record = build_engine(
        exported[(precision, True)], engine, backend="tensorrt-rtx", plugins="off", precision=precision, target_cc="sm89"
    )
    assert record.plugins is None and record.target == "sm89" and record.precision == precision
    assert engine.stat().st_size == record.engine_bytes > 0
