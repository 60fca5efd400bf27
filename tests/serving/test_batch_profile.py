"""TensorRT-RTX builds one optimisation profile from a batch range; the record states it and the I/O."""

from __future__ import annotations

import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.trt import build_engine, read_record
from rmeeto_export.trt.record import TensorSpec
from tests.support.backends import needs_rtx

pytestmark = needs_rtx


def test_engine_of_a_batch_range_records_its_profile_and_io(range_engine):
    record = read_record(range_engine)
    assert record.batch == {"min": 1, "opt": 4, "max": 16}
    assert record.inputs == (TensorSpec("images", (-1, 3, 32, 32), "FLOAT"),)
    assert record.outputs == (TensorSpec("logits", (-1, 10), "FLOAT"),)


def test_fixed_batch_graph_refuses_a_range(fp32_graphs, tmp_path):
    with pytest.raises(UserError, match="fixed batch of 1; export it with a dynamic batch to build for 1:4:16"):
        build_engine(fp32_graphs["portable"], tmp_path / "model.engine", backend="tensorrt-rtx", plugins="off",
                     batch="1:4:16", target_cc="sm89")
    assert list(tmp_path.iterdir()) == []
