"""Calibration: activation ranges of the linear layers' inputs, measured by running the fp32 graph.

ONNX Runtime's calibrators run the exported graph itself (with the MatMul/Gemm tensors added as
outputs), so the ranges are those of exactly the tensors that get quantised, custom-op function
bodies included. Methods:
- "max": the largest |x| seen;
- "percentile" (default, 99.99): the |x| below which that percentage of all values fall, which
  ignores the rare outliers that would otherwise stretch the scale for every other value;
- "entropy": the threshold minimising the KL divergence between the fp32 histogram and its int8
  version (as TensorRT's legacy entropy calibrator, with 512 histogram bins instead of its 2048).

Whatever the method, out_proj's input (the averaged scan outputs) gets the max range: its rare large
values are signal, not noise (the same finding as Quamba, arXiv 2410.13229, for Mamba's SSM output);
clipping them cost accuracy (docs/measurements.md#out_projs-input-max-range).

One pass over the images measures every activation's largest |x| per channel. That gives the
smoothing factors s (calibration/smoothing.py) and every max range, since |x / s| peaks channel by
channel where |x| does. Percentile and entropy need the whole distribution of x / s, so they take
a second pass, over the smoothed graph.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

from rmeeto_export.calibration.cache import CalibrationCache, CalibrationSettings, fingerprint, load_cache, save_cache
from rmeeto_export.calibration.images import list_images, load_image, pick
from rmeeto_export.calibration.layers import linear_layers
from rmeeto_export.calibration.smoothing import DEFAULT_ALPHA, factors_for, fold_sites, smooth
from rmeeto_export.errors import UserError
from rmeeto_export.progress import progress

METHODS = ("max", "percentile", "entropy")
MAX_RANGE_ROLES = ("out_proj",)  # calibrated by max whatever the method: see the module docstring
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99
DEFAULT_NUM_IMAGES = 512
_ORT_METHODS = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
_PERCENTILE_BINS = 2048  # resolution of the percentile: 1/2048 of the largest |x|
# ONNX Runtime's KL search tries every threshold bin in a Python loop, for every tensor: 2048 bins
# took about a second per tensor here (minutes for Vim-B); 512 bins is 7x faster, still 4 bins per
# int8 level of the 128 positive levels it maps onto.
_ENTROPY_BINS = 512
_ENTROPY_LEVELS = 128
# ONNX Runtime holds every added output of the batches of one collect call before reducing them;
# collecting in groups of this many batches bounds that memory for large models and many images.
# (Its own max_intermediate_outputs option is not used: in onnxruntime 1.31 MinMax drops the held
# outputs unreduced when that limit is reached.)
_BATCHES_PER_COLLECT = 16

PathLike = Union[str, Path]


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's quantisation tools print progress and log advice; neither belongs in our output."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def check_method(method: str, percentile: float, smoothing_alpha: Optional[float]) -> None:
    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise UserError(f"percentile must be in (50, 100], got {percentile}")
    if smoothing_alpha is not None and not 0.0 <= smoothing_alpha <= 1.0:
        raise UserError(f"smoothing alpha must be in [0, 1], got {smoothing_alpha}")


def input_shape(model: onnx.ModelProto) -> tuple[int, int]:
    """(batch, image size) of the graph's static image input."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or any(not d.HasField("dim_value") for d in dims):
        raise UserError("the ONNX model has no static (batch, 3, H, W) image input; export it with rmeeto-export")
    return dims[0].dim_value, dims[2].dim_value


class _Batches(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return next(self._feeds, None)


def _feeds(files: list[str], input_name: str, batch: int, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Full batches of the graph's static batch size; a last partial batch is left out."""
    for start in range(0, len(files) - batch + 1, batch):
        yield {input_name: np.stack([load_image(path, size) for path in files[start : start + batch]])}


def collect_amax(model: onnx.ModelProto, tensors: list[str], feeds: Iterator[dict[str, np.ndarray]], method: str,
                 percentile: float) -> dict[str, float]:
    """Percentile or entropy |x| range of each of `tensors` of `model` over all `feeds`."""
    options = {"symmetric": True, "percentile": percentile, "num_quantized_bins": _ENTROPY_LEVELS,
               "num_bins": _ENTROPY_BINS if method == "entropy" else _PERCENTILE_BINS}
    with tempfile.TemporaryDirectory(prefix="rmeeto-calibrate-") as work, quiet_onnxruntime():
        # ONNX Runtime writes shape-inferred and augmented copies beside the model it is given: give it
        # a copy in a temporary folder so nothing appears in (or is left behind in) the build folder.
        copy = Path(work) / "model.onnx"
        onnx.save(model, str(copy))
        calibrator = create_calibrator(copy, ["MatMul", "Gemm"], str(Path(work) / "augmented.onnx"),
                                       _ORT_METHODS[method], extra_options=options)
        while chunk := list(itertools.islice(feeds, _BATCHES_PER_COLLECT)):
            calibrator.collect_data(_Batches(chunk))
        ranges = calibrator.compute_data()
    return {name: _amax(*ranges[name].range_value) for name in tensors}


def collect_channel_amax(model: onnx.ModelProto, tensors: list[str],
                         feeds: Iterator[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Largest |x| per channel (the last axis) of each of `tensors` of `model` over all `feeds`."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    probed.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in tensors)
    session = ort.InferenceSession(probed.SerializeToString(), providers=["CPUExecutionProvider"])
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, feed)):
            channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax[name], channel_max) if name in amax else channel_max
    return amax


def _amax(lowest: np.ndarray, highest: np.ndarray) -> float:
    """The symmetric range |x| <= amax covering [lowest, highest] (ONNX Runtime gives 0-d or 1-element arrays)."""
    return float(np.max(np.abs(np.concatenate([np.ravel(lowest), np.ravel(highest)]))))


def calibrate(
    onnx_path: PathLike,
    out_path: PathLike,
    images: str,
    num: int = DEFAULT_NUM_IMAGES,
    method: str = DEFAULT_METHOD,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    smoothing_alpha: Optional[float] = DEFAULT_ALPHA,
    force: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, float]:
    """Activation scales (and smoothing factors, unless `smoothing_alpha` is None) of `onnx_path`'s
    linear layers from `num` images under `images`.

    The cache is written to `out_path` (JSON, atomically). If `out_path` already holds a cache for
    the same weights and settings it is returned as is, without reading any image, unless `force`.
    Returns {activation tensor name: int8 scale}. log: where each pass over the images reports its
    progress (none without it).
    """
    check_method(method, percentile, smoothing_alpha)
    if not Path(onnx_path).is_file():
        raise UserError(f"ONNX model not found: {onnx_path}")
    model = onnx.load(str(onnx_path))
    layers = linear_layers(model)
    settings = CalibrationSettings(method, percentile if method == "percentile" else None, num,
                                   str(Path(images).resolve()), smoothing_alpha)
    model_fingerprint = fingerprint(model, layers)
    if not force and Path(out_path).is_file():
        cached = _readable_cache(out_path)
        if cached and cached.settings == settings and cached.fingerprint == model_fingerprint:
            return cached.scales
    batch, size = input_shape(model)
    files = pick(list_images(images), num)
    if len(files) < batch:
        raise UserError(f"{len(files)} calibration image(s) in {images} are fewer than the model's batch of {batch}")
    def feeds(ranges: str) -> Iterator[dict[str, np.ndarray]]:
        batches = _feeds(files, model.graph.input[0].name, batch, size)
        return progress(batches, f"calibration, {ranges}", total=len(files) // batch, log=log) if log else batches

    activations = sorted({layer.activation for layer in layers})
    channel_amax = collect_channel_amax(model, activations, feeds("channel ranges"))
    sites = fold_sites(model, layers) if smoothing_alpha is not None else {}
    factors = factors_for(model, sites, channel_amax, smoothing_alpha) if sites else {}
    amax = {name: float(np.max(channel_amax[name] / factors.get(name, 1.0))) for name in activations}
    by_method = [] if method == "max" else sorted({layer.activation for layer in layers
                                                   if layer.role not in MAX_RANGE_ROLES})
    if by_method:
        amax.update(collect_amax(smooth(model, layers, factors), by_method, feeds(f"{method} ranges"), method, percentile))
    cache = CalibrationCache(settings, model_fingerprint, amax,
                             {name: tuple(float(f) for f in value) for name, value in sorted(factors.items())})
    save_cache(cache, out_path)
    return cache.scales


def _readable_cache(path: PathLike) -> Optional[CalibrationCache]:
    """The cache at `path`, or None where it is unreadable or of an older format: it is rewritten anyway."""
    try:
        return load_cache(path)
    except UserError:
        return None
