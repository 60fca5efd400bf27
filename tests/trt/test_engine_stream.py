"""Which CUDA stream Engine enqueues on, checked on the CPU with stand-ins for the context and streams."""

import pytest
import torch

from rmeeto_export.trt.backend import Backend
from rmeeto_export.trt.runtime import Engine


class _Stream:
    def __init__(self, handle, log):
        self.cuda_stream, self.log = handle, log

    def wait_stream(self, other):
        self.log.append(("wait", self.cuda_stream, other.cuda_stream))


class _Trt:
    float32 = "float32"

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"


class _EngineAndContext:
    """One fp32 input "x" and one fp32 output "y"; remembers the stream each run was enqueued on."""

    def __init__(self, log):
        self.log = log

    def get_tensor_dtype(self, name):
        return _Trt.float32

    def set_input_shape(self, name, shape):
        pass

    def set_tensor_address(self, name, address):
        pass

    def get_tensor_shape(self, name):
        return (2,)

    def execute_async_v3(self, stream):
        self.log.append(("run", stream))
        return True


class _CudaTensor:
    is_cuda, dtype, shape = True, torch.float32, (2,)

    def contiguous(self):
        return self

    def data_ptr(self):
        return 4096


def _engine(log):
    engine = object.__new__(Engine)  # everything __init__ would load from TensorRT, faked
    engine.path, engine.backend = "model.engine", Backend("tensorrt", _Trt)
    engine._engine = engine._context = _EngineAndContext(log)
    engine.input_names, engine.output_names = ["x"], ["y"]
    engine._own_stream = None
    return engine


@pytest.fixture
def cuda_streams(monkeypatch):
    """torch.cuda with a settable current stream; torch.cuda.Stream() hands out handles 100, 101, ..."""
    log, current = [], {}
    made = iter(range(100, 200))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current["stream"])
    monkeypatch.setattr(torch.cuda, "Stream", lambda *args, **kwargs: _Stream(next(made), log))
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: _CudaTensor())
    monkeypatch.setattr("rmeeto_export.trt.device_buffers.torch_dtype_of", lambda trt, data_type: torch.float32)
    return log, lambda handle: current.update(stream=_Stream(handle, log))


def test_engine_called_from_the_legacy_default_stream_runs_on_its_own_stream(cuda_streams):
    log, set_current = cuda_streams
    engine = _engine(log)
    set_current(0)
    engine(_CudaTensor())
    engine(_CudaTensor())
    # Fenced both ways around each run, and the same stream every time (made once).
    assert log == [("wait", 100, 0), ("run", 100), ("wait", 0, 100)] * 2


def test_engine_runs_on_the_callers_stream(cuda_streams):
    log, set_current = cuda_streams
    engine = _engine(log)
    set_current(77)
    engine(_CudaTensor())
    assert log == [("run", 77)]
