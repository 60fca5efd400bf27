"""Where the libraries compiled from plugins_trt/ are found: one search for the CUDA kernels
(rmeeto_export.kernels) and the TensorRT plugin library (rmeeto_export.trt.plugins)."""

from __future__ import annotations

import os
from pathlib import Path

BUILD_DIR = Path("build") / "plugins_trt"  # where `make plugins` puts both libraries, side by side
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def library_candidates(name: str, env_var: str) -> list[Path]:
    """Where library `name` is looked for, in order: the file $env_var names (only that one, when it
    is set), else build/plugins_trt/ under the working directory, then under the source tree."""
    configured = os.environ.get(env_var)
    if configured:
        return [Path(configured)]
    return [folder / name for folder in dict.fromkeys((Path.cwd() / BUILD_DIR, SOURCE_ROOT / BUILD_DIR))]
