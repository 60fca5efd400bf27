"""SelectiveScan and TokenMerge as Python IPluginV3 plugins (namespace "rmeeto", version "1").

They mirror the C++ plugins in plugins_trt/ (same names, fields, output shapes and dtypes,
format combinations), so an ONNX graph with our custom nodes builds where the C++ library is not
available, e.g. with TensorRT-RTX in CI. At run time they call the CUDA kernels through
rmeeto_export.kernels on torch tensors that wrap TensorRT's device buffers; an engine built with
them needs this Python package when it runs.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Optional

import numpy as np

from rmeeto_export.export.functions import DOMAIN, PLUGIN_VERSION, SELECTIVE_SCAN, TOKEN_MERGE

NAMESPACE, VERSION = DOMAIN, PLUGIN_VERSION  # the ONNX custom nodes' domain and plugin_version

# Field name -> default (None: required). Same as the C++ creators' field specs.
SELECTIVE_SCAN_FIELDS: dict[str, Optional[int]] = {"delta_softplus": 1, "reverse": 0}
TOKEN_MERGE_FIELDS: dict[str, Optional[int]] = {"r": None, "cls_index": None}

# SelectiveScan inputs: u, delta, A, B, C, then D, z, delta_bias all together or none.
_SCAN_INPUT_COUNTS = (5, 8)
_SCAN_FP32_INPUTS = (2, 5, 7)  # A, D, delta_bias: parameters stay fp32


def field_values(fields, specs: dict[str, Optional[int]], plugin: str) -> dict[str, int]:
    """Int32 field values from a PluginFieldCollection, defaults filled in, required ones checked."""
    given = {field.name: int(np.asarray(field.data).reshape(-1)[0]) for field in fields if len(field.data)}
    missing = [name for name, default in specs.items() if default is None and name not in given]
    if missing:
        raise ValueError(f"{plugin}: missing attribute(s) {', '.join(missing)}")
    return {name: given.get(name, default) for name, default in specs.items()}


def accepts_type(trt: ModuleType, plugin_name: str, pos: int, num_inputs: int, types: list) -> bool:
    """Whether tensor ``pos`` (inputs, then outputs) of our plugin may have type ``types[pos]``.

    ``types`` holds the types of positions 0..pos. Same rule as the C++ plugins: activations
    fp32/fp16/bf16 sharing the first input's type; A, D, delta_bias, residual and size fp32.
    """
    activation_types = (trt.float32, trt.float16, trt.bfloat16)
    kind = types[pos]
    if plugin_name == SELECTIVE_SCAN:
        if num_inputs not in _SCAN_INPUT_COUNTS:
            return False
        if pos >= num_inputs:  # y; with 5 inputs it sits where an 8-input node has D
            return kind == types[0]
        if pos in _SCAN_FP32_INPUTS:
            return kind == trt.float32
        return kind in activation_types if pos == 0 else kind == types[0]
    if num_inputs != 3:  # TokenMerge: hidden, residual, size -> the same three, merged
        return False
    if pos == 0:
        return kind in activation_types
    return kind == types[0] if pos == 3 else kind == trt.float32


@lru_cache(maxsize=None)
def python_plugin_creators(trt: ModuleType) -> tuple:
    """Creator objects for ``trt`` (tensorrt or tensorrt_rtx), made once per module.

    The classes derive from the module's binding types, so they are defined per module.
    """

    class _RmeetoPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        """Parts both plugins share: identity, int32 fields, cloning, enqueue through torch."""

        PLUGIN_NAME = ""
        FIELD_SPECS: dict[str, Optional[int]] = {}
        NUM_OUTPUTS = 1

        def __init__(self, values: dict[str, int]):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = self.PLUGIN_NAME
            self.plugin_namespace = NAMESPACE
            self.plugin_version = VERSION
            self.num_outputs = self.NUM_OUTPUTS
            self.values = dict(values)

        def get_capability_interface(self, capability):
            return self

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([
                trt.PluginField(name, np.array([value], dtype=np.int32), trt.PluginFieldType.INT32)
                for name, value in self.values.items()
            ])

        def configure_plugin(self, inputs, outputs):
            pass

        def on_shape_change(self, inputs, outputs):
            pass

        def set_tactic(self, tactic):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def clone(self):
            return type(self)(self.values)

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            import torch

            from rmeeto_export.trt.device_buffers import torch_dtype_of, wrap_device_buffer

            def as_tensors(pointers, descs):
                return [wrap_device_buffer(p, tuple(d.dims), torch_dtype_of(trt, d.type)) for p, d in zip(pointers, descs)]

            # The kernels launch on torch's current stream: make it TensorRT's stream.
            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                for out, result in zip(as_tensors(outputs, output_desc), self.compute(as_tensors(inputs, input_desc))):
                    out.copy_(result)

        def supports_format_combination(self, pos, in_out, num_inputs):
            types = [tensor.desc.type for tensor in in_out[: pos + 1]]
            linear = in_out[pos].desc.format == trt.TensorFormat.LINEAR
            return linear and accepts_type(trt, self.PLUGIN_NAME, pos, num_inputs, types)

        def compute(self, inputs):
            raise NotImplementedError

    class SelectiveScanPlugin(_RmeetoPlugin):
        PLUGIN_NAME = SELECTIVE_SCAN
        FIELD_SPECS = SELECTIVE_SCAN_FIELDS

        def get_output_data_types(self, input_types):
            return [input_types[0]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[0])]

        def compute(self, inputs):
            from rmeeto_export import kernels

            u, delta, A, B, C, *optional = inputs
            D, z, delta_bias = optional or (None, None, None)
            return (kernels.selective_scan(
                u, delta, A, B, C, D, z, delta_bias,
                delta_softplus=bool(self.values["delta_softplus"]), reverse=bool(self.values["reverse"]),
            ),)

    class TokenMergePlugin(_RmeetoPlugin):
        PLUGIN_NAME = TOKEN_MERGE
        FIELD_SPECS = TOKEN_MERGE_FIELDS
        NUM_OUTPUTS = 3

        def get_output_data_types(self, input_types):
            return [input_types[0], trt.float32, trt.float32]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            removed = expr_builder.constant(self.values["r"])
            shapes = []
            for dims in inputs:
                merged = trt.DimsExprs(dims)
                merged[1] = expr_builder.operation(trt.DimensionOperation.SUB, dims[1], removed)
                shapes.append(merged)
            return shapes

        def compute(self, inputs):
            from rmeeto_export import kernels

            hidden, residual, size = inputs
            return kernels.token_merge(hidden, residual, size, self.values["r"], self.values["cls_index"])

    class _Creator(trt.IPluginCreatorV3One):
        def __init__(self, plugin_class):
            trt.IPluginCreatorV3One.__init__(self)
            self.plugin_class = plugin_class
            self.name = plugin_class.PLUGIN_NAME
            self.plugin_namespace = NAMESPACE
            self.plugin_version = VERSION
            # The parser hands over only the attributes named here (as INT32 for ONNX INT).
            self.field_names = trt.PluginFieldCollection([
                trt.PluginField(name, np.array([], dtype=np.int32), trt.PluginFieldType.INT32)
                for name in plugin_class.FIELD_SPECS
            ])

        def create_plugin(self, name, fields, phase):
            return self.plugin_class(field_values(fields, self.plugin_class.FIELD_SPECS, self.name))

    return (_Creator(SelectiveScanPlugin), _Creator(TokenMergePlugin))

