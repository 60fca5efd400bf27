"""`rmeeto-export package`: a build folder's engine into a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click


@click.command("package")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="a folder made by `build` with an engine")
@click.option("--triton", "repository", type=click.Path(path_type=Path), required=True,
              help="Triton model repository to add the model to (created if missing)")
@click.option("--name", default=None, help="model name in the repository [default: the build folder's name]")
def package_command(out: Path, repository: Path, name: Optional[str]) -> None:
    """Add the build folder's engine to a Triton model repository (config.pbtxt, model.plan, plugins)."""
    from rmeeto_export.pipelines.folder import ENGINE
    from rmeeto_export.serving.triton import write_model

    model = write_model(out / ENGINE, repository, name or out.resolve().name)
    click.echo(f"wrote {model.folder}: {', '.join(model.files)}")
    click.echo(f"serve it with: {model.command}")
