"""Atomic file writes and digests: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary stream to a temporary file beside ``path``, renamed over it only on success.

    durable: flush the data to the disk before the rename, so that even a power loss leaves the old
    file or the whole new one. Engines skip it: the flush of hundreds of MB takes seconds on slow
    disks, and their sha256 (build record, manifest) already exposes a file torn by a power loss.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    # os.open with mode 0o666 lets the umask decide permissions, as a plain open() would.
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: PathLike, data: Union[bytes, memoryview], durable: bool = True) -> Path:
    with atomic_open(path, durable) as stream:
        stream.write(data)
    return Path(path)


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
