"""`rmeeto-export calibrate`: (re-)calibrate a build folder's INT8 graphs with changed calibration settings."""

from __future__ import annotations

from pathlib import Path

import click

from rmeeto_export.pipelines.folder import CALIBRATION
from rmeeto_export.pipelines.settings import CalibrationSettings, explicit_options, from_options, options


@click.command("calibrate")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="build folder holding model.onnx / model.portable.onnx (fp32) from `build`")
@options(CalibrationSettings, prefixed=False)
@click.option("--recalibrate", is_flag=True, help=f"ignore an existing {CALIBRATION} made with the same settings")
@click.pass_context
def calibrate_command(ctx: click.Context, out_dir: Path, recalibrate: bool, **settings: object) -> None:
    """Calibrate INT8 activation ranges and write the Q/DQ INT8 twins of the graphs in OUT.

    Options not given keep the folder's calibration settings (its manifest.json records them), so a
    later `rmeeto-export export` redoes the same calibration.
    """
    from rmeeto_export.pipelines.build import calibrate_folder

    changes = from_options(CalibrationSettings, settings, explicit=explicit_options(ctx))
    calibrate_folder(out_dir, changes, log=click.echo, recalibrate=recalibrate)
