"""INT8 graph vs the fp32 PyTorch model: top-1 agreement and logit error, with INT8's own tolerance.

Why INT8 gets its own criteria rather than the fp16 ones: every linear layer's input is rounded to
255 levels of its calibrated range (a relative step of 1/127 of the range, against fp16's 2^-11 per
value) and its weights to 255 levels per channel; with percentile or entropy calibration the rare
largest activations are clipped on purpose. These errors enter 6 linear layers per block (in_proj,
out_proj, and x_proj and dt_proj of each direction) and pass through the scan's exp(), so logits
move by a few percent of their scale, and images whose top-2 logits are that close can swap. The
criteria therefore judge the ranking over a set of images and the direction of the logit vectors:
- top-1 agreement >= 0.95 (the deployment question: does the INT8 engine classify like the model?);
- median cosine similarity of the logit vectors >= 0.99 and mean |int8 - fp32| <= 0.05 of the logit
  scale (the largest |fp32 logit|): activation ranges 1.5x too small (clipping) fail the first,
  3x too small fail all three.
The median, not the mean: in a merged model the per-image error is heavy-tailed. An image whose
merge match flips under INT8 rounding (near-tied similarities upstream of the merge metric) gets a
different token set and a much lower cosine, while the rest stay near 1. The figures these
thresholds were set from: docs/measurements.md#int8-parity-criteria.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from torch import nn

from rmeeto_export.errors import UserError
from rmeeto_export.export.parity import per_image_max_rel, run_onnx, torch_logits


@dataclass(frozen=True)
class Int8Tolerance:
    min_top1_agreement: float = 0.95
    min_median_cosine: float = 0.99
    max_mean_rel: float = 0.05


@dataclass(frozen=True)
class Int8Parity:
    images: int
    provider: str
    top1_agreement: float
    median_cosine: float
    mean_cosine: float  # reported, not judged: see the module docstring
    mean_rel: float  # mean |int8 - fp32| over all logits / max |fp32 logit|
    max_rel: float  # max |int8 - fp32| / max |fp32 logit|
    tolerance: Int8Tolerance
    passed: bool
    per_image_max_rel: tuple[float, ...] = ()  # for the report's figure

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare_int8_logits(actual: np.ndarray, expected: np.ndarray, provider: str,
                        tolerance: Int8Tolerance = Int8Tolerance()) -> Int8Parity:
    tiny = np.finfo(np.float64).tiny
    scale = max(float(np.abs(expected).max()), tiny)
    error = np.abs(actual - expected)
    norms = np.maximum(np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1), tiny)
    cosines = np.sum(actual * expected, axis=1) / norms
    median_cosine, mean_cosine = float(np.median(cosines)), float(np.mean(cosines))
    agreement = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    mean_rel, max_rel = float(error.mean()) / scale, float(error.max()) / scale
    passed = (agreement >= tolerance.min_top1_agreement and median_cosine >= tolerance.min_median_cosine
              and mean_rel <= tolerance.max_mean_rel)
    return Int8Parity(len(expected), provider, agreement, median_cosine, mean_cosine, mean_rel, max_rel, tolerance,
                      passed, per_image_max_rel(actual, expected))


def check_int8_parity(model: nn.Module, int8_onnx: Union[str, os.PathLike], images: torch.Tensor,
                      tolerance: Int8Tolerance = Int8Tolerance()) -> Int8Parity:
    """Run the INT8 Q/DQ graph in ONNX Runtime and the fp32 PyTorch `model` on `images`; compare."""
    if not os.path.isfile(int8_onnx):
        raise UserError(f"INT8 ONNX model not found: {os.fspath(int8_onnx)}")
    actual, provider = run_onnx(int8_onnx, images.float().cpu().numpy())
    return compare_int8_logits(actual, torch_logits(model, images), provider, tolerance)
