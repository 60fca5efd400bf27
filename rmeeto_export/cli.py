"""The ``rmeeto-export`` command line: one Click group, one subcommand per job."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from rmeeto_export.errors import UserError
from rmeeto_export.pipelines.settings import GROUPS, ModelSettings, build_settings_from_options, options


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


@main.command()
@options(ModelSettings, only=("name", "method", "ratio", "r", "keep_ratio", "prune_after", "importance"))
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
def info(as_json: bool, **settings: object) -> None:
    """Parameters, GFLOPs, tokens and layers of a model, and its merge or prune schedule."""
    import torch

    from rmeeto_export.pipelines.settings import from_options

    from rmeeto_export.models import create_model
    from rmeeto_export.models.complexity import count_parameters, gflops, model_gflops

    model_settings = ModelSettings(**from_options(ModelSettings, settings))
    model_settings.check()
    model_name = model_settings.name
    with torch.device("meta"):  # shapes only: no memory, no random init cost
        model = create_model(model_name, **model_settings.reduction)
    cfg, schedule = model.cfg, model.schedule
    plain_gflops = gflops(cfg, (cfg.num_tokens,) * cfg.depth)
    reduced_gflops = model_gflops(model)
    report = {
        "model": model_name,
        "parameters": count_parameters(model),
        "layers": cfg.depth,
        "embed_dim": cfg.embed_dim,
        "img_size": cfg.img_size,
        "tokens": cfg.num_tokens,
        "gflops": round(plain_gflops, 3),
    }
    if schedule.reduces:
        report.update(
            schedule=json.loads(schedule.to_json()),
            **{f"gflops_{schedule.method}d": round(reduced_gflops, 3)},
            theoretical_speedup=round(plain_gflops / reduced_gflops, 3),
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{model_name}: {report['parameters'] / 1e6:.2f}M parameters, {cfg.depth} layers, "
               f"{cfg.num_tokens} tokens at {cfg.img_size} px, {plain_gflops:.2f} GFLOPs")
    if schedule.reduces:
        counts = [count for index, count in enumerate(schedule.tokens_per_block)
                  if index == 0 or count != schedule.tokens_per_block[index - 1]]
        click.echo(f"{schedule.summary()} (effective ratio {schedule.effective_ratio:.3f}); "
                   f"tokens {' -> '.join(map(str, counts))}")
        click.echo(f"GFLOPs {plain_gflops:.2f} -> {reduced_gflops:.2f} "
                   f"(theoretical speed-up {plain_gflops / reduced_gflops:.2f}x)")


def force_option(func):
    return click.option("--force", is_flag=True, help="run the stages even where they are up to date")(func)


@main.command()
@options(*GROUPS)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output folder [default: out/<model>]")
@force_option
def build(out: Optional[Path], force: bool, **settings: object) -> None:
    """Merge, export, check and build: the whole job into one output folder."""
    from rmeeto_export.pipelines.build import build as run_build
    from rmeeto_export.pipelines.build import build_stages

    config = build_settings_from_options(settings)
    stages = tuple(stage.name for stage in build_stages(config)) if force else ()
    run_build(config, out or Path("out") / config.model.name, log=click.echo, force=stages)


def out_argument(func):
    return click.option("--out", type=click.Path(path_type=Path), required=True, help="a folder made by `build`")(func)


@main.command("export")
@out_argument
@force_option
def export_command(out: Path, force: bool) -> None:
    """Re-run the ONNX export stage on a build folder (and calibration after it, with the folder's settings)."""
    from rmeeto_export.pipelines.build import rerun_export

    rerun_export(out, log=click.echo, force=force)


@main.command()
@out_argument
@force_option
def verify(out: Path, force: bool) -> None:
    """Re-run the parity stage (ONNX Runtime vs PyTorch) on a build folder."""
    from rmeeto_export.pipelines.build import rerun_verify

    rerun_verify(out, log=click.echo, force=force)


def _register_subcommands() -> None:
    from rmeeto_export.calibration.cli import calibrate_command
    from rmeeto_export.native_cli import native_group
    from rmeeto_export.pipelines.retrain import retrain_command
    from rmeeto_export.serving.cli import package_command
    from rmeeto_export.trt.plugins_cli import plugins_group

    main.add_command(retrain_command)
    main.add_command(calibrate_command)
    main.add_command(package_command)
    main.add_command(plugins_group)
    main.add_command(native_group)


_register_subcommands()
