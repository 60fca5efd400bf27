import pytest
import torch

from rmeeto_export.trt.device_buffers import torch_dtype_of, wrap_device_buffer, wrap_host_buffer
from tests.support.backends import tensorrt_rtx_or_skip


def test_tensorrt_dtypes_map_to_torch():
    trt = tensorrt_rtx_or_skip()
    assert torch_dtype_of(trt, trt.float16) is torch.float16
    assert torch_dtype_of(trt, trt.bfloat16) is torch.bfloat16
    assert torch_dtype_of(trt, trt.float32) is torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the buffers are device pointers")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_wrapped_buffer_shares_memory(dtype):
    owner = torch.arange(24, device="cuda").to(dtype).reshape(2, 3, 4)
    view = wrap_device_buffer(owner.data_ptr(), (2, 3, 4), dtype)
    assert view.dtype == dtype and view.shape == owner.shape and view.data_ptr() == owner.data_ptr()
    assert torch.equal(view, owner)
    view.mul_(2)  # writes through, as a plugin's output buffer must
    assert torch.equal(owner, torch.arange(24, device="cuda").to(dtype).reshape(2, 3, 4) * 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_wrapped_host_buffer_shares_memory(dtype):
    """The emulated device's buffers are host memory: the same view, on the CPU."""
    owner = torch.arange(24).to(dtype).reshape(2, 3, 4)
    view = wrap_host_buffer(owner.data_ptr(), (2, 3, 4), dtype)
    assert view.dtype == dtype and view.shape == owner.shape and view.data_ptr() == owner.data_ptr()
    view.mul_(2)
    assert torch.equal(owner, torch.arange(24).to(dtype).reshape(2, 3, 4) * 2)
