"""fp32 ONNX + calibration cache -> explicit Q/DQ INT8 ONNX that TensorRT 10 (strongly typed) and 11 build.

Placement: a QuantizeLinear/DequantizeLinear pair on the activation input of every linear layer
(per-tensor scale from the cache) and one on its fp32 weight (per-channel scales along the
output-channel axis). Everything else stays as exported: the scan, the merge (custom nodes
with their function bodies, or their inlined ops), norms, convolutions and the fp32 residual stream.

By default the out_proj layers whose output the next block merges on stay float too. The merge's
bipartite matching is an argmax over cosine similarities of exactly that output, and INT8 rounding
there flips near-tied matches; keeping them float costs little and measurably raises the agreement
with fp32 (docs/measurements.md#merge-inputs-stay-float).

Before the Q/DQ go in, the cache's smoothing factors are folded into the graph's constants for the
layers that get quantised (calibration/smoothing.py); a layer that stays float keeps its weights
as exported, so the merge metric sees exactly the fp32 graph's values.

Outputs of the linear layers are not quantised: their consumers (conv, scan, residual add) run in
float, so a Q/DQ there would only add rounding. All zero points are 0 (symmetric), as TensorRT
requires.

Insertion is ONNX Runtime's QDQQuantizer with an explicit node list: it keeps the local functions
and handles MatMul/Gemm weight axes, and our cache supplies the activation scales exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QDQQuantizer, QuantType, TensorData, TensorsData

from rmeeto_export.calibration.cache import CalibrationCache, fingerprint, load_cache
from rmeeto_export.calibration.collect import quiet_onnxruntime
from rmeeto_export.calibration.layers import LinearLayer, linear_layers
from rmeeto_export.calibration.smoothing import smooth
from rmeeto_export.errors import UserError
from rmeeto_export.files import write_bytes_atomic

PathLike = Union[str, Path]


def _quantizer_options(cache: CalibrationCache, layers: list[LinearLayer]) -> dict:
    activations = {layer.activation for layer in layers}
    return {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # MatMul weights are (K, N): channels on axis 1
        # fp32 weight -> Q -> DQ (the QAT export form, parsed since TensorRT 8) rather than an int8 initializer
        # -> DQ: older parsers (e.g. TensorRT 8.x) reject int8 initializers, and JetPack 6's 10.3 cannot be
        # tried here. TensorRT folds the pair into int8 weights, so engines are the same size either way.
        "AddQDQPairToWeight": True,
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
        "QuantizeBias": False,  # the head's bias stays fp32 (fused by TensorRT); TensorRT dequantizes no INT32
        "TensorQuantOverrides": {
            name: [{"scale": np.array(cache.scales[name], np.float32), "zero_point": np.array(0, np.int8)}]
            for name in sorted(activations)
        },
    }


def check_cache_fits(cache: CalibrationCache, model: onnx.ModelProto, layers: list[LinearLayer]) -> None:
    if cache.fingerprint != fingerprint(model, layers):
        raise UserError("the calibration cache was made for other weights or another graph; calibrate this model again")
    missing = sorted({layer.activation for layer in layers} - set(cache.amax))
    if missing:
        raise UserError(f"the calibration cache has no range for {len(missing)} tensor(s), e.g. {missing[0]}; calibrate again")


def layers_to_quantize(layers: list[LinearLayer], quantize_merge_inputs: bool) -> list[LinearLayer]:
    return [layer for layer in layers if quantize_merge_inputs or not layer.feeds_merge]


def quantize_model(model: onnx.ModelProto, cache: CalibrationCache, *, quantize_merge_inputs: bool = False) -> onnx.ModelProto:
    """The INT8 Q/DQ version of the fp32 `model` (in memory); see the module docstring for what stays float."""
    all_layers = linear_layers(model)
    check_cache_fits(cache, model, all_layers)  # the cache covers every layer, so either policy can use it
    layers = layers_to_quantize(all_layers, quantize_merge_inputs)
    quantized = {layer.activation for layer in layers}
    model = smooth(model, all_layers, {name: np.array(factors, np.float32)
                                       for name, factors in cache.smoothing.items() if name in quantized})
    inferred = onnx.shape_inference.infer_shapes(model)
    ranges = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(-cache.amax[name]), highest=np.float32(cache.amax[name]))
        for name in quantized
    })
    with quiet_onnxruntime():
        quantizer = QDQQuantizer(
            inferred,
            True,  # per_channel
            False,  # reduce_range: a CPU (non-VNNI) workaround, not for TensorRT
            QuantType.QInt8,
            QuantType.QInt8,
            ranges,
            [layer.node for layer in layers],
            [],
            ["MatMul", "Gemm"],
            _quantizer_options(cache, layers),
        )
        quantizer.quantize_model()
    return quantizer.model.model


def quantize(onnx_path: PathLike, cache_path: PathLike, out_path: PathLike, *, quantize_merge_inputs: bool = False) -> Path:
    """Write the INT8 Q/DQ graph of the fp32 `onnx_path` with the scales of `cache_path` to `out_path` (atomically)."""
    if not Path(onnx_path).is_file():
        raise UserError(f"ONNX model not found: {onnx_path}")
    quantized = quantize_model(onnx.load(str(onnx_path)), load_cache(cache_path),
                               quantize_merge_inputs=quantize_merge_inputs)
    return write_bytes_atomic(out_path, quantized.SerializeToString())
