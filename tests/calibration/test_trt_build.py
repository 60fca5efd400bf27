"""TensorRT-RTX builds the INT8 Q/DQ graphs (strongly typed, no INT8 flag), with and without our plugins."""

import pytest

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx; CI installs it)")

from rmeeto_export.trt import build_engine, layers_by_type  # noqa: E402
from rmeeto_export.trt.builder import load_onnx, parse_network  # noqa: E402

pytestmark = pytest.mark.trt


@pytest.mark.parametrize("kind, plugins", [("portable", "none"), ("plugin", "python")])
def test_int8_graph_builds(int8_graphs, rtx, tmp_path, kind, plugins):
    onnx_path = int8_graphs[kind]
    layers = layers_by_type(parse_network(rtx, load_onnx(onnx_path), onnx_path, with_plugins=plugins != "none").network)
    # 25 linear layers, less the out_proj the merge reads: 24 activation and 24 weight Q/DQ pairs
    assert len(layers["QUANTIZE"]) == len(layers["DEQUANTIZE"]) == 48
    record = build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins=plugins,
                          precision="int8", target_cc="sm89")
    assert record.precision == "int8" and record.flags["strongly_typed"]
    assert record.engine_bytes == (tmp_path / "model.engine").stat().st_size > 0
