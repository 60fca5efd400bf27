"""TensorRT-RTX builds the tiny pruned Vim: pruning is standard ONNX (TopK, Gather) that TensorRT
parses natively, so only the scan needs our plugin, and the portable graph needs none."""

import pytest

from rmeeto_export.trt import build_engine
from tests.support.backends import needs_rtx

pytestmark = needs_rtx


@pytest.mark.parametrize("portable, plugins", [(True, "off"), (False, "python")])
def test_pruned_vim_builds_with_tensorrt_rtx(tiny_pruned_exports, rtx, tmp_path, portable, plugins):
    engine = tmp_path / "model.engine"
    record = build_engine(tiny_pruned_exports["fp32", portable], engine, backend="tensorrt-rtx", plugins=plugins,
                          precision="fp32", target_cc="sm89")
    assert (record.plugins is None) == (plugins == "off") and record.target == "sm89"
    assert engine.stat().st_size == record.engine_bytes > 0
