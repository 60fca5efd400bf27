"""The build record of an engine: what it was built with, kept next to it as ``<engine>.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from rmeeto_export.errors import UserError
from rmeeto_export.files import write_json_atomic
from rmeeto_export.trt.plugins import PluginSource


@dataclass(frozen=True)
class TensorSpec:
    """An engine input or output: name, shape (-1 on a dynamic batch axis), TensorRT dtype name ("FLOAT")."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


@dataclass(frozen=True)
class BuildRecord:
    """Manifest entry of one engine build. ``plugins`` is None for a graph without plugin layers."""

    trt_flavour: str
    trt_version: str
    target: str  # compute capability as "sm89"
    gpu_name: Optional[str]  # the GPU it was built on; None for ahead-of-time TensorRT-RTX builds
    precision: str
    batch: dict[str, int]  # {"min", "opt", "max"}
    plugins: Optional[PluginSource]
    flags: dict = field(default_factory=dict)
    build_seconds: float = 0.0
    engine_bytes: int = 0
    engine_sha256: str = ""
    inputs: tuple[TensorSpec, ...] = ()  # empty in records written before the engine's I/O was recorded
    outputs: tuple[TensorSpec, ...] = ()

    def to_json(self) -> dict:
        data = asdict(self)
        data["plugins"] = None if self.plugins is None else self.plugins.to_json()
        for key in ("inputs", "outputs"):
            data[key] = [{**tensor, "shape": list(tensor["shape"])} for tensor in data[key]]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "BuildRecord":
        """Reads our fields and ignores others (a manifest's engine entry adds its own keys)."""
        values = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        values["plugins"] = None if data.get("plugins") is None else PluginSource.from_json(data["plugins"])
        for key in ("inputs", "outputs"):
            values[key] = tuple(TensorSpec.from_json(tensor) for tensor in data.get(key, ()))
        return cls(**values)


def record_path(engine_path: Path) -> Path:
    return Path(f"{engine_path}.json")


def write_record(engine_path: Path, record: BuildRecord) -> Path:
    path = record_path(engine_path)
    return write_json_atomic(path, record.to_json())


def read_record(engine_path: Path) -> BuildRecord:
    path = record_path(engine_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"no build record {path} next to the engine: rebuild the engine or pass its manifest entry") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise UserError(f"build record {path} is not JSON ({err}): rebuild the engine") from None
    return parse_record(data, str(path))


def parse_record(data: dict, source: str) -> BuildRecord:
    """BuildRecord from a manifest entry; UserError naming ``source`` when it is malformed."""
    try:
        return BuildRecord.from_json(data)
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"build record {source} is not valid ({err}): rebuild the engine") from None
