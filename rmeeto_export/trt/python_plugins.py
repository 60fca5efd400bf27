"""SelectiveScan and TokenMerge as Python IPluginV3 plugins.

Names, fields, input counts and dtype rules come from the ops' contracts (rmeeto_export.contracts),
which the C++ plugins in plugins_trt/ follow too, so an ONNX graph with our custom nodes builds where the C++ library is not
available, e.g. with TensorRT-RTX in CI. At run time they call the CUDA kernels through
rmeeto_export.kernels on torch tensors that wrap TensorRT's device buffers; an engine built with
them needs this Python package when it runs. With the kernels library built for the emulated device
(tests), the buffers are host memory and the kernels run on the CPU.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from types import ModuleType

import numpy as np

from rmeeto_export.contracts import (
    ACTIVATION_DTYPES,
    CONTRACTS,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SELECTIVE_SCAN,
    TOKEN_MERGE,
    OpContract,
)


def field_values(fields, contract: OpContract) -> dict[str, int]:
    """Int32 field values from a PluginFieldCollection, defaults filled in, required ones checked."""
    given = {field.name: int(np.asarray(field.data).reshape(-1)[0]) for field in fields if len(field.data)}
    return contract.attribute_values(given)


def accepts_type(trt: ModuleType, plugin_name: str, pos: int, num_inputs: int, types: list) -> bool:
    """Whether tensor ``pos`` (inputs, then outputs) of our plugin may have type ``types[pos]``.

    ``types`` holds the types of positions 0..pos. The contract's rule: the first input is one of
    the activation types, fp32-only tensors are fp32, every other tensor has the first input's type.
    """
    contract = CONTRACTS[plugin_name]
    if num_inputs not in contract.input_counts:
        return False
    kind = types[pos]
    if contract.tensor_at(pos, num_inputs).fp32:
        return kind == trt.float32
    if pos == 0:
        return kind in [getattr(trt, dtype) for dtype in ACTIVATION_DTYPES]
    return kind == types[0]


@lru_cache(maxsize=None)
def python_plugin_creators(trt: ModuleType) -> tuple:
    """Creator objects for ``trt`` (tensorrt or tensorrt_rtx), made once per module.

    The classes derive from the module's binding types, so they are defined per module.
    """

    class _RmeetoPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        """Parts both plugins share: identity, int32 fields, cloning, enqueue through torch."""

        CONTRACT: OpContract

        def __init__(self, values: dict[str, int]):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = self.CONTRACT.name
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self.num_outputs = len(self.CONTRACT.outputs)
            self.values = dict(values)

        def get_capability_interface(self, capability):
            return self

        def get_fields_to_serialize(self):
            # A PluginFieldCollection points into its fields' arrays without holding them: the plugin holds them
            # (left to the garbage collector, TensorRT serialized whatever reused that memory, or aborted).
            self.serialized_fields = [
                trt.PluginField(name, np.array([value], dtype=np.int32), trt.PluginFieldType.INT32)
                for name, value in self.values.items()
            ]
            return trt.PluginFieldCollection(self.serialized_fields)

        def get_output_data_types(self, input_types):
            return [trt.float32 if tensor.fp32 else input_types[0] for tensor in self.CONTRACT.outputs]

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

            from rmeeto_export import kernels
            from rmeeto_export.trt.device_buffers import torch_dtype_of, wrap_device_buffer, wrap_host_buffer

            if kernels.emulated():  # host buffers; each kernel call returns when done, so no stream
                wrap, on_stream = wrap_host_buffer, contextlib.nullcontext()
            else:  # the kernels launch on torch's current stream: make it TensorRT's stream
                wrap, on_stream = wrap_device_buffer, torch.cuda.stream(torch.cuda.ExternalStream(stream))

            def as_tensors(pointers, descs):
                return [wrap(p, tuple(d.dims), torch_dtype_of(trt, d.type)) for p, d in zip(pointers, descs)]

            with on_stream:
                for out, result in zip(as_tensors(outputs, output_desc), self.compute(as_tensors(inputs, input_desc))):
                    out.copy_(result)

        def supports_format_combination(self, pos, in_out, num_inputs):
            types = [tensor.desc.type for tensor in in_out[: pos + 1]]
            linear = in_out[pos].desc.format == trt.TensorFormat.LINEAR
            return linear and accepts_type(trt, self.CONTRACT.name, pos, num_inputs, types)

        def compute(self, inputs):
            raise NotImplementedError

    class SelectiveScanPlugin(_RmeetoPlugin):
        CONTRACT = SELECTIVE_SCAN

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
        CONTRACT = TOKEN_MERGE

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
            self.name = plugin_class.CONTRACT.name
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            # The parser hands over only the attributes named here (as INT32 for ONNX INT). The creator holds
            # the fields, as the collection does not (see get_fields_to_serialize).
            self.field_specs = [trt.PluginField(name, np.array([], dtype=np.int32), trt.PluginFieldType.INT32)
                                for name in plugin_class.CONTRACT.attribute_names]
            self.field_names = trt.PluginFieldCollection(self.field_specs)

        def create_plugin(self, name, fields, phase):
            return self.plugin_class(field_values(fields, self.plugin_class.CONTRACT))

    return (_Creator(SelectiveScanPlugin), _Creator(TokenMergePlugin))

