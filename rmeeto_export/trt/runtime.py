"""Running a built engine on CUDA torch tensors, after checking it fits this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from rmeeto_export.errors import UserError
from rmeeto_export.files import file_sha256
from rmeeto_export.trt.backend import Backend, load_backend
from rmeeto_export.trt.plugins import (
    PluginSource,
    check_library_matches_backend,
    find_plugin_library,
    load_plugin_library,
    register_python_plugins,
)
from rmeeto_export.trt.record import BuildRecord, parse_record, read_record
from rmeeto_export.trt.targets import ComputeCapability, current_gpu, parse_compute_capability, sm_name

_REBUILD = "rebuild the engine here (rmeeto-export build) or run it where it was built"


def check_engine_fits(record: BuildRecord, backend: Backend, gpu: Optional[tuple[str, ComputeCapability]]) -> None:
    """UserError when the engine was built for another TensorRT or another GPU than ``gpu``."""
    if (record.trt_flavour, record.trt_version) != (backend.flavour, backend.version):
        raise UserError(
            f"the engine was built with {record.trt_flavour} {record.trt_version} but this process has "
            f"{backend.flavour} {backend.version}: {_REBUILD}"
        )
    if gpu is None:
        raise UserError("running a TensorRT engine needs a CUDA GPU and none is visible")
    built_for = parse_compute_capability(record.target)
    if built_for != gpu[1]:
        built_on = f" ({record.gpu_name})" if record.gpu_name else ""
        raise UserError(
            f"the engine was built for {record.target}{built_on} but this GPU is {gpu[0]} ({sm_name(gpu[1])}): {_REBUILD}"
        )


def plugin_library_for(source: PluginSource, backend: Backend) -> Path:
    """The C++ plugin library the engine was built with, checked: present, same file, same TensorRT."""
    path = find_plugin_library() or Path(source.library)
    if not path.is_file():
        raise UserError(
            f"the engine needs the plugin library {source.library} and it is missing: build plugins_trt "
            "or set RMEETO_TRT_PLUGINS to it"
        )
    check_library_matches_backend(path, backend)
    if file_sha256(path) != source.sha256:
        raise UserError(
            f"plugin library {path} is not the one the engine was built with (sha256 differs): "
            f"use that library or {_REBUILD}"
        )
    return path


def _prepare_plugins(source: Optional[PluginSource], backend: Backend) -> None:
    if source is None:
        return
    if not source.is_python:
        load_plugin_library(backend, plugin_library_for(source, backend))
        return
    from rmeeto_export import kernels

    kernels.load_library()  # the Python plugins' enqueue runs these kernels: fail now, not mid-inference
    register_python_plugins(backend)


class Engine:
    """A deserialized engine with one execution context; call it with CUDA tensors."""

    def __init__(self, path: Union[str, Path], manifest: Optional[dict] = None):
        self.path = Path(path)
        self.record = parse_record(manifest, "passed in") if manifest is not None else read_record(self.path)
        self.backend = load_backend(self.record.trt_flavour)
        check_engine_fits(self.record, self.backend, current_gpu())
        _prepare_plugins(self.record.plugins, self.backend)
        trt = self.backend.trt
        self._runtime = trt.Runtime(self.backend.logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise UserError(f"TensorRT could not load {self.path}: {' | '.join(self.backend.logger.take_errors())}")
        self._context = self._engine.create_execution_context()
        self._own_stream = None  # made on the first call from the legacy default stream
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _launch_stream(self, caller):
        """The caller's stream, unless it is the legacy default stream (handle 0), which synchronises with
        every other stream and which TensorRT warns about: then a stream of the engine's own."""
        import torch

        if caller.cuda_stream != 0:
            return caller
        if self._own_stream is None:
            self._own_stream = torch.cuda.Stream()
        return self._own_stream

    def __call__(self, *inputs, **named_inputs) -> dict:
        """Runs in the order of the current CUDA stream (on a stream of its own when that is the legacy
        default stream); inputs by position (engine order) or by name. Returns outputs by name."""
        import torch

        from rmeeto_export.trt.device_buffers import torch_dtype_of

        feeds = dict(zip(self.input_names, inputs), **named_inputs)
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise UserError(f"engine inputs missing: {', '.join(missing)}")
        kept_alive = []  # contiguous copies must outlive the launch
        for name in self.input_names:
            tensor = feeds[name]
            expected = torch_dtype_of(self.backend.trt, self._engine.get_tensor_dtype(name))
            if not tensor.is_cuda or tensor.dtype != expected:
                raise UserError(f"input {name} must be a CUDA {expected} tensor, got {tensor.device} {tensor.dtype}")
            tensor = tensor.contiguous()
            kept_alive.append(tensor)
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            dtype = torch_dtype_of(self.backend.trt, self._engine.get_tensor_dtype(name))
            outputs[name] = torch.empty(tuple(self._context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self._context.set_tensor_address(name, outputs[name].data_ptr())
        caller = torch.cuda.current_stream()
        stream = self._launch_stream(caller)
        if stream is not caller:
            stream.wait_stream(caller)  # the inputs are written in the caller's order
        launched = self._context.execute_async_v3(stream.cuda_stream)
        if stream is not caller:
            caller.wait_stream(stream)  # and whatever the caller does next sees the outputs
        if not launched:
            raise RuntimeError(f"TensorRT failed to run {self.path}: {' | '.join(self.backend.logger.take_errors())}")
        return outputs

