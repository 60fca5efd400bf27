"""The ``rmeeto-export`` command line: one Click group, one subcommand per job."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from rmeeto_export.calibration.collect import METHODS as CALIBRATION_METHODS
from rmeeto_export.errors import UserError
from rmeeto_export.pipelines.build import PRECISIONS, BuildConfig
from rmeeto_export.trt import BACKENDS as TRT_BACKENDS
from rmeeto_export.trt import PLUGIN_MODES

BUILD_DEFAULTS = BuildConfig()


class _Group(click.Group):
    """Turns UserError into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="rmeeto-export")
def main() -> None:
    """Vision Mamba + R-MeeTo token merging -> verified ONNX and TensorRT engines."""


def model_option(func):
    return click.option("--model", "model_name", default=BUILD_DEFAULTS.model, show_default=True,
                        help="vim_t, vim_s or vim_b")(func)


def merge_options(func):
    func = click.option("--r", "merge_r", type=int, default=None, help="tokens merged per merge step (instead of --ratio)")(func)
    return click.option("--ratio", type=float, default=None, help="R-MeeTo reduction ratio, e.g. 0.31")(func)


@main.command()
@model_option
@merge_options
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
def info(model_name: str, ratio: Optional[float], merge_r: Optional[int], as_json: bool) -> None:
    """Parameters, GFLOPs, tokens and layers of a model, and its merge schedule."""
    import torch

    from rmeeto_export.models import create_model
    from rmeeto_export.models.complexity import count_parameters, gflops, model_gflops

    with torch.device("meta"):  # shapes only: no memory, no random init cost
        model = create_model(model_name, merge_ratio=ratio, merge_r=merge_r)
    cfg, schedule = model.cfg, model.schedule
    plain_gflops = gflops(cfg, (cfg.num_tokens,) * cfg.depth)
    merged_gflops = model_gflops(model)
    report = {
        "model": model_name,
        "parameters": count_parameters(model),
        "layers": cfg.depth,
        "embed_dim": cfg.embed_dim,
        "img_size": cfg.img_size,
        "tokens": cfg.num_tokens,
        "gflops": round(plain_gflops, 3),
    }
    if schedule.r:
        report.update(
            schedule=json.loads(schedule.to_json()),
            gflops_merged=round(merged_gflops, 3),
            theoretical_speedup=round(plain_gflops / merged_gflops, 3),
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{model_name}: {report['parameters'] / 1e6:.2f}M parameters, {cfg.depth} layers, "
               f"{cfg.num_tokens} tokens at {cfg.img_size} px, {plain_gflops:.2f} GFLOPs")
    if schedule.r:
        click.echo(f"merge r={schedule.r} at blocks {', '.join(map(str, schedule.merge_blocks))} "
                   f"(effective ratio {schedule.effective_ratio:.3f}); tokens in the last block: "
                   f"{schedule.tokens_per_block[-1]}")
        click.echo(f"GFLOPs {plain_gflops:.2f} -> {merged_gflops:.2f} "
                   f"(theoretical speed-up {plain_gflops / merged_gflops:.2f}x)")


@main.command()
@model_option
@merge_options
@click.option("--weights", default=None, help="checkpoint: .pth (official layout), .safetensors or hf://owner/repo/file")
@click.option("--ema", "use_ema", is_flag=True, help="take the checkpoint's model_ema weights")
@click.option("--precision", type=click.Choice(PRECISIONS), default=BUILD_DEFAULTS.precision, show_default=True,
              help="int8: Q/DQ around the linear layers, calibrated on --calib-data")
@click.option("--batch", type=int, default=BUILD_DEFAULTS.batch, show_default=True,
              help="fixed batch size of the graph and engine")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output folder [default: out/<model>]")
@click.option("--trt", "trt_backend", type=click.Choice(TRT_BACKENDS), default=BUILD_DEFAULTS.trt, show_default=True,
              help="TensorRT flavour for the engine stage (auto skips it when none is installed)")
@click.option("--plugins", type=click.Choice(PLUGIN_MODES), default=BUILD_DEFAULTS.plugins, show_default=True,
              help="engine with our plugins (C++ library, else Python plugins) or the portable graph (off)")
@click.option("--target-cc", default=None, help="TensorRT-RTX target compute capability, e.g. sm86, sm89, sm120")
@click.option("--parity-samples", type=int, default=BUILD_DEFAULTS.parity_samples, show_default=True,
              help="random inputs compared in parity")
@click.option("--seed", type=int, default=BUILD_DEFAULTS.seed, show_default=True,
              help="seed of random weights and parity inputs")
@click.option("--data", default=None, help="ImageFolder root (train/, val/): re-train the merged model first")
@click.option("--epochs", type=click.IntRange(min=1), default=BUILD_DEFAULTS.epochs, show_default=True,
              help="re-training epochs")
@click.option("--batch-size", type=click.IntRange(min=1), default=BUILD_DEFAULTS.batch_size, show_default=True,
              help="re-training batch per process (see `rmeeto-export retrain` for every recipe setting)")
@click.option("--calib-data", default=None, help="INT8 calibration images (a folder, or an ImageFolder root)")
@click.option("--calib-num", type=click.IntRange(min=1), default=BUILD_DEFAULTS.calib_num, show_default=True)
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default=BUILD_DEFAULTS.calib_method,
              show_default=True)
def build(model_name, ratio, merge_r, weights, use_ema, precision, batch, out, trt_backend, plugins, target_cc,
          parity_samples, seed, data, epochs, batch_size, calib_data, calib_num, calib_method) -> None:
    """Merge, export, check and build: the whole job into one output folder."""
    from rmeeto_export.pipelines.build import build as run_build

    config = BuildConfig(model=model_name, ratio=ratio, r=merge_r, weights=weights, use_ema=use_ema,
                         precision=precision, batch=batch, seed=seed, parity_samples=parity_samples,
                         trt=trt_backend, plugins=plugins, target_cc=target_cc, data=data, epochs=epochs,
                         batch_size=batch_size, calib_data=calib_data, calib_num=calib_num,
                         calib_method=calib_method)
    run_build(config, out or Path("out") / model_name, log=click.echo)


def out_argument(func):
    return click.option("--out", type=click.Path(path_type=Path), required=True, help="a folder made by `build`")(func)


@main.command("export")
@out_argument
def export_command(out: Path) -> None:
    """Re-run the ONNX export stage on a build folder."""
    from rmeeto_export.pipelines.build import rerun_export

    rerun_export(out, log=click.echo)


@main.command()
@out_argument
def verify(out: Path) -> None:
    """Re-run the parity stage (ONNX Runtime vs PyTorch) on a build folder."""
    from rmeeto_export.pipelines.build import rerun_verify

    rerun_verify(out, log=click.echo)


def _register_subcommands() -> None:
    from rmeeto_export.calibration.cli import calibrate_command
    from rmeeto_export.pipelines.retrain import retrain_command

    main.add_command(retrain_command)
    main.add_command(calibrate_command)


_register_subcommands()
