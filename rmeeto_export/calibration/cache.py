"""The calibration cache: per-tensor activation ranges and scales, and the smoothing factors, as JSON,
tied to the weights.

A rebuild reuses the cache when it was made for the same linear-layer weights with the same method
and settings, so calibration images are read once. The fingerprint hashes the activation names and
the weights of the quantised layers, which the plugin graph and its portable twin share: one cache
serves both exports of a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import onnx

from rmeeto_export.calibration.layers import LinearLayer
from rmeeto_export.errors import UserError
from rmeeto_export.files import write_json_atomic

FORMAT = "rmeeto-export/int8-calibration/2"  # 2: smoothing factors
INT8_MAX = 127  # symmetric int8 as TensorRT quantises: [-127, 127], zero point 0, scale = amax / 127


@dataclass(frozen=True)
class CalibrationSettings:
    method: str
    percentile: Optional[float]  # only for method "percentile"
    num_images: int
    data: str
    smoothing_alpha: Optional[float]  # None: no smoothing


@dataclass(frozen=True)
class CalibrationCache:
    settings: CalibrationSettings
    fingerprint: str
    amax: dict[str, float] = field(default_factory=dict)  # activation tensor -> calibrated |x| range (after smoothing)
    smoothing: dict[str, tuple[float, ...]] = field(default_factory=dict)  # activation tensor -> s per input channel

    @property
    def scales(self) -> dict[str, float]:
        return {name: scale_of(value) for name, value in self.amax.items()}

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "settings": asdict(self.settings),
            "fingerprint": self.fingerprint,
            "activations": {name: {"amax": value, "scale": scale_of(value)} for name, value in sorted(self.amax.items())},
            "smoothing": {name: list(factors) for name, factors in sorted(self.smoothing.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> "CalibrationCache":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        activations = data["activations"]
        return cls(
            settings=CalibrationSettings(**data["settings"]),
            fingerprint=str(data["fingerprint"]),
            amax={str(name): float(entry["amax"]) for name, entry in activations.items()},
            smoothing={str(name): tuple(float(f) for f in factors) for name, factors in data["smoothing"].items()},
        )


def scale_of(amax: float) -> float:
    """Symmetric int8 scale; a tensor that was all zeros gets the smallest normal float, never 0."""
    return max(amax / INT8_MAX, float.fromhex("0x1p-126"))


def fingerprint(model: onnx.ModelProto, layers: list[LinearLayer]) -> str:
    initializers = {init.name: init for init in model.graph.initializer}
    digest = hashlib.sha256()
    for layer in sorted(layers, key=lambda item: item.activation):
        digest.update(layer.activation.encode() + b"\0")
        digest.update(onnx.numpy_helper.to_array(initializers[layer.weight]).tobytes())
    return digest.hexdigest()


def save_cache(cache: CalibrationCache, path: Union[str, Path]) -> Path:
    return write_json_atomic(path, cache.to_json())


def load_cache(path: Union[str, Path]) -> CalibrationCache:
    try:
        return CalibrationCache.from_json(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise UserError(f"calibration cache not found: {path}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"calibration cache {path} is unreadable ({err}); delete it and calibrate again") from None
