"""``rmeeto-export plugins info|build``: the C++ plugin library for the TensorRT on this machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import click

from rmeeto_export.trt.plugin_build import FLAVOURS, build_plugins, describe, find_cached_library, inspect_toolchain
from rmeeto_export.trt.targets import parse_compute_capability


def _archs(values: tuple[str, ...]) -> tuple:
    """--arch 87 --arch 89, or --arch 87,89; each as sm87, 87 or 8.7."""
    return tuple(dict.fromkeys(parse_compute_capability(part) for value in values for part in value.split(",") if part))


def toolchain_options(func):
    func = click.option("--arch", "archs", multiple=True,
                        help="GPU architecture(s) to compile for, e.g. 87 (Jetson Orin), 86, 89 [default: the GPU "
                             "present; without one, TensorRT-RTX's default target sm89]")(func)
    func = click.option("--tensorrt-root", type=click.Path(path_type=Path), default=None,
                        help="folder with include/ (and lib/) of TensorRT [default: $TENSORRT_ROOT]; for a pip "
                             "TensorRT or TensorRT-RTX: where its headers are")(func)
    return click.option("--trt", "flavour", type=click.Choice(("auto", *FLAVOURS)), default="auto", show_default=True,
                        help="which TensorRT to build for (auto: full TensorRT when found, else TensorRT-RTX)")(func)


json_option = click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")


@click.group("plugins")
def plugins_group() -> None:
    """Build our C++ TensorRT plugin library for the TensorRT on this machine."""


@plugins_group.command("info")
@toolchain_options
@json_option
def info_command(flavour: str, tensorrt_root: Optional[Path], archs: tuple[str, ...], as_json: bool) -> None:
    """What a plugin build would use, what is missing and how to fix it."""
    toolchain = inspect_toolchain(flavour, tensorrt_root, _archs(archs))
    cached = None
    if toolchain.library is not None:
        cached = find_cached_library(toolchain.flavour, toolchain.library.version,
                                     toolchain.archs[0] if toolchain.archs else None)
    if as_json:
        click.echo(json.dumps({**toolchain.to_json(), "cached_library": None if cached is None else str(cached)}, indent=2))
        return
    for line in describe(toolchain, cached):
        click.echo(line)


def cache_build_options(func):
    """--jobs and --force of a build into the per-user cache (`plugins build`, `native build`)."""
    func = click.option("--force", is_flag=True, help="rebuild even when the cache has this build")(func)
    return click.option("--jobs", type=click.IntRange(min=1), default=min(os.cpu_count() or 1, 8), show_default=True,
                        help="parallel compile jobs")(func)


@plugins_group.command("build")
@toolchain_options
@cache_build_options
def build_command(flavour: str, tensorrt_root: Optional[Path], archs: tuple[str, ...], jobs: int, force: bool) -> None:
    """Compile the CUDA kernels and the IPluginV3 library into the per-user cache."""
    toolchain = inspect_toolchain(flavour, tensorrt_root, _archs(archs))
    build = build_plugins(toolchain, jobs=jobs, force=force, log=click.echo)
    click.echo(str(build.library))
