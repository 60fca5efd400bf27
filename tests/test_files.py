"""Atomic writes: a reader sees the old file or the whole new one; only durable writes wait for the disk."""

import os

import pytest

from rmeeto_export import files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.engine"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_open(target) as stream:
            stream.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.engine"]


@pytest.mark.parametrize("durable", [True, False])
def test_only_durable_writes_flush_to_the_disk(tmp_path, monkeypatch, durable):
    flushed = []
    monkeypatch.setattr(os, "fsync", flushed.append)
    files.write_bytes_atomic(tmp_path / "out.bin", b"data", durable=durable)
    assert (tmp_path / "out.bin").read_bytes() == b"data" and bool(flushed) == durable
