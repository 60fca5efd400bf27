"""Torch views of the raw buffers TensorRT hands plugins (CUDA device memory, or host memory on the
emulated device of the tests), dtype mapping."""

from __future__ import annotations

import ctypes
import math

import torch

# __cuda_array_interface__ has no bfloat16 type string: describe every buffer as signed
# integers of the same width and reinterpret the bits with Tensor.view(dtype).
_INTEGER_TYPESTR_OF_WIDTH = {1: "|i1", 2: "<i2", 4: "<i4", 8: "<i8"}


class _CudaArrayInterface:
    def __init__(self, pointer: int, shape: tuple[int, ...], typestr: str):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (pointer, False),
            "strides": None,  # dense, row-major
            "version": 3,
        }


def wrap_device_buffer(pointer: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A dense row-major CUDA tensor over ``pointer`` that shares the memory (no copy)."""
    width = torch.empty((), dtype=dtype).element_size()
    raw = torch.as_tensor(_CudaArrayInterface(pointer, tuple(shape), _INTEGER_TYPESTR_OF_WIDTH[width]), device="cuda")
    return raw.view(dtype)


def wrap_host_buffer(pointer: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A dense row-major CPU tensor over host memory at ``pointer`` that shares it (no copy)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(pointer), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def torch_dtype_of(trt, data_type) -> torch.dtype:
    """The torch dtype of a TensorRT DataType of module ``trt``."""
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    return table[data_type]
