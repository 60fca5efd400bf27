"""INT8 in a build folder: calibrate on the fp32 graphs `build` wrote, then write their INT8 twins.

    DIR/model.onnx, DIR/model.portable.onnx      fp32, from `rmeeto-export build`
    DIR/calibration.json                         the scale cache (shared by both graphs)
    DIR/model.int8.onnx, DIR/model.portable.int8.onnx
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rmeeto_export.calibration.collect import DEFAULT_NUM_IMAGES, DEFAULT_PERCENTILE, calibrate
from rmeeto_export.calibration.qdq import quantize
from rmeeto_export.calibration.smoothing import DEFAULT_ALPHA
from rmeeto_export.errors import UserError

FP32_GRAPHS = ("model.onnx", "model.portable.onnx")
CACHE_NAME = "calibration.json"


def int8_name(fp32_name: str) -> str:
    """model.onnx -> model.int8.onnx, model.portable.onnx -> model.portable.int8.onnx."""
    return fp32_name.removesuffix(".onnx") + ".int8.onnx"


def quantize_build_folder(
    out_dir: Path,
    images: str,
    num: int = DEFAULT_NUM_IMAGES,
    method: str = "percentile",
    *,
    percentile: float = DEFAULT_PERCENTILE,
    smoothing_alpha: Optional[float] = DEFAULT_ALPHA,
    force: bool = False,
    quantize_merge_inputs: bool = False,
) -> list[Path]:
    """Calibrate (or reuse DIR/calibration.json) and write the INT8 graph of each fp32 graph in `out_dir`."""
    graphs = [out_dir / name for name in FP32_GRAPHS if (out_dir / name).is_file()]
    if not graphs:
        raise UserError(f"{out_dir} has no {' or '.join(FP32_GRAPHS)}: run `rmeeto-export build --out {out_dir}` first")
    cache = out_dir / CACHE_NAME
    # One calibration serves every graph: the twins share the quantised tensors and weights.
    calibrate(graphs[0], cache, images, num, method, percentile=percentile, smoothing_alpha=smoothing_alpha, force=force)
    return [quantize(graph, cache, out_dir / int8_name(graph.name), quantize_merge_inputs=quantize_merge_inputs)
            for graph in graphs]
