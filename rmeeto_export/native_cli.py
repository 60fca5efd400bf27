"""``rmeeto-export native info|build``: the native CPU ops for an installed package (a source checkout
has `make native`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from rmeeto_export.native_build import HEADERS_ENV_VAR, build_native, describe, info_json, inspect_toolchain
from rmeeto_export.trt.plugins_cli import cache_build_options, json_option

onnxruntime_include_option = click.option(
    "--onnxruntime-include", type=click.Path(path_type=Path), default=None,
    help=f"folder with ONNX Runtime's C/C++ headers (onnxruntime_cxx_api.h) [default: ${HEADERS_ENV_VAR}, a previous "
         "fetch, the system's; else Debian's libonnxruntime-dev is fetched into the cache]")


@click.group("native")
def native_group() -> None:
    """Build the native CPU ops (PyTorch and ONNX Runtime) into the per-user cache."""


@native_group.command("info")
@onnxruntime_include_option
@json_option
def info_command(onnxruntime_include: Optional[Path], as_json: bool) -> None:
    """What a build would use, the cache entry, and the scan variant this CPU runs."""
    toolchain = inspect_toolchain(onnxruntime_include)
    if as_json:
        click.echo(json.dumps(info_json(toolchain), indent=2))
        return
    for line in describe(toolchain):
        click.echo(line)


@native_group.command("build")
@onnxruntime_include_option
@cache_build_options
def build_command(onnxruntime_include: Optional[Path], jobs: int, force: bool) -> None:
    """Compile librmeeto_cpu_kernels.so and librmeeto_ort_ops.so into the per-user cache."""
    build_native(inspect_toolchain(onnxruntime_include), jobs=jobs, force=force, log=click.echo)
