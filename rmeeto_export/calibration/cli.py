"""`rmeeto-export calibrate`: INT8 calibration and Q/DQ graphs for a build folder (the lead adds it to `main`)."""

from __future__ import annotations

from pathlib import Path

import click

from rmeeto_export.calibration.collect import DEFAULT_METHOD, DEFAULT_NUM_IMAGES, DEFAULT_PERCENTILE, METHODS
from rmeeto_export.calibration.folder import CACHE_NAME, quantize_build_folder
from rmeeto_export.calibration.smoothing import DEFAULT_ALPHA


@click.command("calibrate")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="build folder holding model.onnx / model.portable.onnx (fp32) from `build`")
@click.option("--data", required=True, help="calibration images: a folder of images or an ImageFolder tree (its train/)")
@click.option("--num", default=DEFAULT_NUM_IMAGES, show_default=True, help="number of calibration images")
@click.option("--method", default=DEFAULT_METHOD, show_default=True, help=f"range method: {', '.join(METHODS)}")
@click.option("--percentile", default=DEFAULT_PERCENTILE, show_default=True, help="for --method percentile")
@click.option("--smoothing-alpha", default=DEFAULT_ALPHA, show_default=True,
              help="SmoothQuant migration strength for in_proj/out_proj inputs (0..1)")
@click.option("--no-smoothing", is_flag=True, help="quantise the activations as exported, without smoothing")
@click.option("--recalibrate", is_flag=True, help=f"ignore an existing {CACHE_NAME} made with the same settings")
@click.option("--quantize-merge-inputs", is_flag=True,
              help="also INT8 the out_proj layers whose output the next merge matches on (flips merges; see docs)")
def calibrate_command(out_dir: Path, data: str, num: int, method: str, percentile: float, smoothing_alpha: float,
                      no_smoothing: bool, recalibrate: bool, quantize_merge_inputs: bool) -> None:
    """Calibrate INT8 activation ranges on DATA and write the Q/DQ INT8 twins of the graphs in OUT."""
    written = quantize_build_folder(out_dir, data, num, method, percentile=percentile,
                                    smoothing_alpha=None if no_smoothing else smoothing_alpha, force=recalibrate,
                                    quantize_merge_inputs=quantize_merge_inputs)
    smoothing = "no smoothing" if no_smoothing else f"smoothing alpha {smoothing_alpha}"
    click.echo(f"{out_dir / CACHE_NAME}: {method} scales, {smoothing}; wrote {', '.join(str(path) for path in written)}")
