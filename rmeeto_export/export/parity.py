"""ONNX Runtime vs PyTorch parity of an exported model: the figures behind parity.json.

The reference is always the fp32 PyTorch model: an fp16 graph is judged by how far it is from what
the fp32 model predicts, which is what a deployment cares about. Polygraphy is not used: it needs a
TensorRT install to be useful and full TensorRT is not installable on these machines; ONNX Runtime
alone is called directly.

Metrics (over all images): max_abs = max |onnx - torch| over every logit; max_rel = max_abs divided by
the largest |torch logit| (relative to the logit scale, because per-logit ratios blow up near zero);
min_cosine = the lowest per-image cosine similarity of the logit vectors; top1_agreement = fraction of
images with the same arg-max. A top-1 disagreement fails the check when it is decisive: the
reference's top-1/top-2 margin exceeds twice the error the tolerance allows (max_rel * logit scale),
so only images tied within the tolerance may flip.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from rmeeto_export import native
from rmeeto_export.errors import UserError
from rmeeto_export.export.onnx_export import INPUT_NAME
from rmeeto_export.precision import EXPORTED_PRECISIONS, check_precision


@dataclass(frozen=True)
class Tolerance:
    max_rel: float
    min_cosine: float


# fp32: same math in another summation order; 1e-5 of the logit scale leaves room for 24 blocks of
# reassociated fp32 sums (unit roundoff 6e-8) in the scan and the linears.
# fp16: activations into every linear are rounded to fp16 (unit roundoff 4.9e-4) in each of 24 blocks
# and the final head, and a near-tied merge decision can flip; 3e-2 of the logit scale and a cosine of
# 0.999 still catch a wrong cast or an fp16 reduction, which move logits by tens of percent.
TOLERANCES = {
    "fp32": Tolerance(max_rel=1e-5, min_cosine=0.999999),
    "fp16": Tolerance(max_rel=3e-2, min_cosine=0.999),
}
# Two logits each off by the allowed error can close a gap of twice that error.
DECISIVE_MARGIN_FACTOR = 2.0


@dataclass(frozen=True)
class ParityReport:
    precision: str
    provider: str
    images: int
    max_abs: float
    max_rel: float
    min_cosine: float
    top1_agreement: float
    decisive_top1_mismatches: int
    tolerance: Tolerance
    passed: bool
    per_image_max_rel: tuple[float, ...] = ()  # for the report's figure; max_rel is their maximum

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def execution_providers() -> list[str]:
    """CUDA EP first when this onnxruntime build has it (onnxruntime-gpu), CPU always."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def graph_batch(session: ort.InferenceSession) -> Optional[int]:
    """The graph's static batch size, or None for a graph exported with a dynamic batch."""
    batch = session.get_inputs()[0].shape[0]
    return batch if isinstance(batch, int) else None


def session_options(native_ops: bool) -> ort.SessionOptions:
    """Options with our op library (librmeeto_ort_ops.so) registered when asked for and built; without
    it the rmeeto nodes run their function bodies (the graphs carry both)."""
    options = ort.SessionOptions()
    library = native.ort_ops_library() if native_ops else None
    if library is not None:
        try:
            options.register_custom_ops_library(os.fspath(library))
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own Fail/RuntimeError types
            raise UserError(f"cannot register {library} with ONNX Runtime: {error}; rebuild it with {native.BUILD_HINT}") from error
    return options


def rmeeto_nodes_note() -> str:
    """What run_onnx runs the rmeeto nodes of a graph on, in a few words for a stage's progress line."""
    if native.ort_ops_library() is None:
        return native.ABSENT_NOTE
    variant = f" ({native.scan_variant()} scan)" if native.available() else ""  # the op library's CPU kernels
    return f"rmeeto nodes on the native ops{variant}"


def run_onnx(
    onnx_path: Union[str, os.PathLike], images: np.ndarray, batch: Optional[int] = None, native_ops: bool = True
) -> tuple[np.ndarray, str]:
    """Logits for `images` (N, 3, H, W) fp32, run batch by batch, and the provider.

    batch: the size of each run; a static-batch graph runs at its own size (a different `batch` is an
    error), a dynamic-batch graph at `batch` (default: all images in one run). With native_ops the
    rmeeto nodes run on our op library when it is built (native.py says where it is looked for), else
    on their function bodies.
    """
    session = ort.InferenceSession(os.fspath(onnx_path), session_options(native_ops), providers=execution_providers())
    static = graph_batch(session)
    if static is not None and batch not in (None, static):
        raise UserError(f"the ONNX model has a static batch of {static}; it cannot run batches of {batch}")
    batch = static or batch or len(images)
    if len(images) % batch:
        raise UserError(f"{len(images)} images do not split into batches of {batch}")
    chunks = [session.run(None, {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(chunks).astype(np.float64), session.get_providers()[0]


def torch_logits(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    if next(model.parameters()).dtype != torch.float32:
        raise UserError("check_parity needs the fp32 PyTorch model as its reference")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return model(images.float().to(device)).double().cpu().numpy()
    finally:
        model.train(was_training)


def per_image_max_rel(actual: np.ndarray, expected: np.ndarray) -> tuple[float, ...]:
    """Each image's largest |actual - expected| logit over the largest |expected| logit of all images."""
    scale = max(float(np.abs(expected).max()), np.finfo(np.float64).tiny)
    return tuple(float(error) / scale for error in np.abs(actual - expected).max(axis=1))


def compare_logits(actual: np.ndarray, expected: np.ndarray, precision: str, provider: str) -> ParityReport:
    tolerance = TOLERANCES[precision]
    error = np.abs(actual - expected)
    max_abs = float(error.max())
    scale = max(float(np.abs(expected).max()), np.finfo(np.float64).tiny)
    max_rel = max_abs / scale
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    cosine = float(np.min(np.sum(actual * expected, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)))
    same_top1 = actual.argmax(axis=1) == expected.argmax(axis=1)
    top2 = np.sort(expected, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > DECISIVE_MARGIN_FACTOR * tolerance.max_rel * scale
    mismatches = int(np.sum(~same_top1 & decisive))
    passed = max_rel <= tolerance.max_rel and cosine >= tolerance.min_cosine and mismatches == 0
    return ParityReport(
        precision=precision,
        provider=provider,
        images=len(expected),
        max_abs=max_abs,
        max_rel=max_rel,
        min_cosine=cosine,
        top1_agreement=float(same_top1.mean()),
        decisive_top1_mismatches=mismatches,
        tolerance=tolerance,
        passed=passed,
        per_image_max_rel=per_image_max_rel(actual, expected),
    )


def check_parity(model: nn.Module, onnx_path: Union[str, os.PathLike], inputs: torch.Tensor, precision: str) -> ParityReport:
    """Run `onnx_path` in ONNX Runtime and the fp32 PyTorch `model` on `inputs`; compare the logits.

    `precision` is the precision the ONNX file was exported with; it picks the tolerance.
    """
    check_precision(precision, EXPORTED_PRECISIONS)
    if not Path(onnx_path).is_file():
        raise UserError(f"ONNX model {os.fspath(onnx_path)!r} not found")
    actual, provider = run_onnx(onnx_path, inputs.float().cpu().numpy())
    return compare_logits(actual, torch_logits(model, inputs), precision, provider)
