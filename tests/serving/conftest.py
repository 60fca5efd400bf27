"""A build folder of the tiny merged Vim with a batch range and a real TensorRT-RTX engine, built once per session
through the command line (`build --batch 1:4:16`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.backends import tensorrt_rtx_or_skip
from tests.support.models import TINY_CLI_OPTIONS


@pytest.fixture(scope="session")
def range_build(tmp_path_factory) -> Path:
    """The folder: graphs for batches 1..16, parity at 1, 4 and 16, model.engine (portable graph, sm89) with its record."""
    tensorrt_rtx_or_skip()
    from rmeeto_export.cli import main

    out = tmp_path_factory.mktemp("range-build") / "vim_tiny"
    result = CliRunner().invoke(main, ["build", *TINY_CLI_OPTIONS, "--batch", "1:4:16", "--parity-samples", "4",
                                       "--trt", "tensorrt-rtx", "--plugins", "off", "--target-cc", "sm89", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def range_engine(range_build) -> Path:
    return range_build / "model.engine"
