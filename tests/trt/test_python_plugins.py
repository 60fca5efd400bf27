"""The Python plugins' enqueue, called as TensorRT calls it: TensorRT-RTX's PluginTensorDesc for every
input and output, raw buffer addresses, a workspace and a stream, on the kernels device (the emulated
one in CI: host memory; a real GPU where there is one). Outputs are compared with the PyTorch references.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from rmeeto_export.merge.rmeeto import merge_tokens
from rmeeto_export.models.ops import selective_scan_reference
from rmeeto_export.trt.python_plugins import python_plugin_creators
from tests.support.backends import tensorrt_rtx_or_skip
from tests.support.kernel_inputs import DTYPES, TOLERANCE, assert_close_to_scale, scan_inputs, tie_free_merge_inputs

SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(scope="module")
def trt():
    return tensorrt_rtx_or_skip()


def _trt_type(trt, dtype: torch.dtype):
    return {torch.float32: trt.float32, torch.float16: trt.float16, torch.bfloat16: trt.bfloat16}[dtype]


def _desc(trt, tensor: torch.Tensor):
    desc = trt.PluginTensorDesc()
    desc.dims, desc.type, desc.format = trt.Dims(list(tensor.shape)), _trt_type(trt, tensor.dtype), trt.TensorFormat.LINEAR
    return desc


def _plugin(trt, name: str, fields: dict[str, int]):
    """Created from the node's fields, cloned, and re-created from its serialised fields: what an engine runs."""
    creator = next(c for c in python_plugin_creators(trt) if c.name == name)
    node_fields = [trt.PluginField(k, np.array([v], dtype=np.int32), trt.PluginFieldType.INT32) for k, v in fields.items()]
    collection = trt.PluginFieldCollection(node_fields)  # points into node_fields' arrays, which live until we return
    built = creator.create_plugin(name, collection, trt.TensorRTPhase.BUILD).clone()
    return creator.create_plugin(name, built.get_fields_to_serialize(), trt.TensorRTPhase.RUNTIME).attach_to_context(None)


def _enqueue(trt, plugin, inputs: list[torch.Tensor], outputs: list[torch.Tensor], device: torch.device) -> None:
    stream = torch.cuda.current_stream().cuda_stream if device.type == "cuda" else 0
    plugin.on_shape_change([_desc(trt, t) for t in inputs], [_desc(trt, t) for t in outputs])
    plugin.enqueue([_desc(trt, t) for t in inputs], [_desc(trt, t) for t in outputs],
                   [t.data_ptr() for t in inputs], [t.data_ptr() for t in outputs], 0, stream)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()


def test_serialized_fields_stay_valid_while_the_plugin_lives(trt):
    """TensorRT reads the collection get_fields_to_serialize returns after the call: its arrays must outlive it."""
    creator = next(c for c in python_plugin_creators(trt) if c.name == "SelectiveScan")
    node_fields = [trt.PluginField("reverse", np.array([1], dtype=np.int32), trt.PluginFieldType.INT32)]
    plugin = creator.create_plugin("SelectiveScan", trt.PluginFieldCollection(node_fields), trt.TensorRTPhase.BUILD)
    serialized = plugin.get_fields_to_serialize()
    gc.collect()
    reused = [np.full(4, -7, dtype=np.int32) for _ in range(20000)]  # takes the memory freed arrays would leave
    assert {serialized[i].name: int(serialized[i].data[0]) for i in range(len(serialized))} == {
        "delta_softplus": 1, "reverse": 1} and len(reused) == 20000


@pytest.mark.gpu  # on the kernels device: a real GPU when there is one (make gpu-check), else the emulated one
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("optional", [True, False], ids=["8_inputs", "5_inputs"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_selective_scan_plugin_enqueue(trt, kernel_device, dtype, optional, reverse):
    inputs = scan_inputs(2, 40, 16, 70, optional, dtype, seed=3, device=kernel_device.device)
    ordered = [inputs[k] for k in SCAN_INPUTS if k in inputs]
    y = torch.full_like(inputs["u"], float("nan"))
    _enqueue(trt, _plugin(trt, "SelectiveScan", {"reverse": int(reverse)}), ordered, [y], kernel_device.device)
    expected = selective_scan_reference(**{k: v.cpu() for k, v in inputs.items()}, reverse=reverse)
    assert_close_to_scale(y.cpu(), expected, TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("r, cls_index", [(0, 10), (4, 0), (10, 20)])
def test_token_merge_plugin_enqueue(trt, kernel_device, dtype, r, cls_index):
    inputs = tie_free_merge_inputs(2, 21, 40, dtype, r, cls_index)
    expected = merge_tokens(*inputs, r, cls_index)[:3]
    outputs = [torch.full(tuple(t.shape), float("nan"), dtype=t.dtype, device=kernel_device.device) for t in expected]
    plugin = _plugin(trt, "TokenMerge", {"r": r, "cls_index": cls_index})
    _enqueue(trt, plugin, [t.to(kernel_device.device) for t in inputs], outputs, kernel_device.device)
    for got, want in zip(outputs, expected):  # the kernel adds the reference's rounded products in its order
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)
