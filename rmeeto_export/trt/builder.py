"""ONNX -> serialized TensorRT / TensorRT-RTX engine, strongly typed, written atomically."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import onnx

from rmeeto_export.errors import UserError
from rmeeto_export.export.batch import BatchRange, BatchSpec, parse_batch
from rmeeto_export.export.wire import join_weights, split_weights
from rmeeto_export.files import write_bytes_atomic
from rmeeto_export.trt.backend import Backend, load_backend
from rmeeto_export.trt.graph import (
    check_plugin_input_types,
    check_plugin_layers,
    custom_nodes,
    custom_nodes_without_function,
    for_plugins,
    without_plugins,
)
from rmeeto_export.trt.plugins import load_plugins
from rmeeto_export.trt.record import BuildRecord, TensorSpec, write_record
from rmeeto_export.trt.targets import (
    DEFAULT_RTX_TARGET,
    ComputeCapability,
    check_precision_supported,
    current_gpu,
    parse_compute_capability,
    rtx_compute_capability_enum,
    sm_name,
)

def build_engine(
    onnx_path: Union[str, Path],
    engine_path: Union[str, Path],
    *,
    backend: str = "auto",
    plugins: str = "auto",
    precision: str = "fp32",
    batch: BatchSpec = None,
    target_cc: Optional[str] = None,
    timing_cache: Union[str, Path, None] = None,
) -> BuildRecord:
    """Builds ``onnx_path`` into ``engine_path`` and writes the build record to ``engine_path``.json.

    precision is the one the graph carries (casts / Q-DQ are in the ONNX; builds are strongly
    typed): it is checked against the target and recorded. batch: a size, or a range (min, opt, max;
    "1:8:64") that becomes the optimisation profile of a graph with a dynamic batch dimension (default
    1); for a fixed-batch graph it must match. The record lists the engine's inputs and outputs.
    target_cc: TensorRT-RTX's ahead-of-time target (sm86, sm89, sm120...; default the GPU here,
    else sm89); full TensorRT always builds for the GPU it runs on.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    started = time.perf_counter()
    trt_backend = load_backend(backend)
    onnx_file = load_onnx(onnx_path)
    cc, gpu_name = resolve_target(trt_backend, target_cc)
    check_precision_supported(precision, cc)
    plugin_source = load_plugins(trt_backend, plugins, target=cc) if custom_nodes(onnx_file.model) else None
    bodiless = custom_nodes_without_function(onnx_file.model)
    if plugin_source is None and bodiless:
        raise UserError(
            f"{onnx_path} has custom nodes without function bodies ({', '.join(bodiless)}): "
            "build it with plugins or export the portable graph"
        )
    parsed = parse_network(trt_backend, onnx_file, with_plugins=plugin_source is not None)
    builder, network = parsed.builder, parsed.network
    config = builder.create_builder_config()
    if trt_backend.is_rtx:
        config.num_compute_capabilities = 1
        config.set_compute_capability(rtx_compute_capability_enum(trt_backend.trt, cc), 0)
    batch_range = _add_batch_profile(builder, config, network, batch)
    if precision == "fp32":  # TF32 (on by default) rounds fp32 matmul inputs to 10 bits: 1e-3, not fp32's 1e-5
        config.clear_flag(trt_backend.trt.BuilderFlag.TF32)
    cache = _attach_timing_cache(trt_backend, config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build {onnx_path}: {' | '.join(trt_backend.logger.take_errors()[:3])}")
    engine = memoryview(serialized)  # not bytes(): a copy of the whole engine, hundreds of MB
    write_bytes_atomic(engine_path, engine, durable=False)  # its sha256 is in the record
    if cache is not None:
        write_bytes_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    record = BuildRecord(
        trt_flavour=trt_backend.flavour,
        trt_version=trt_backend.version,
        target=sm_name(cc),
        gpu_name=gpu_name,
        precision=precision,
        batch={"min": batch_range.min, "opt": batch_range.opt, "max": batch_range.max},
        inputs=_tensors(network.get_input(i) for i in range(network.num_inputs)),
        outputs=_tensors(network.get_output(i) for i in range(network.num_outputs)),
        plugins=plugin_source,
        flags={
            "strongly_typed": True,
            "tf32": config.get_flag(trt_backend.trt.BuilderFlag.TF32),
            "timing_cache": None if cache is None else str(timing_cache),
            "plugin_mode": plugins,
        },
        build_seconds=round(time.perf_counter() - started, 3),
        engine_bytes=serialized.nbytes,
        engine_sha256=hashlib.sha256(engine).hexdigest(),
    )
    write_record(engine_path, record)
    return record


def resolve_target(backend: Backend, target_cc: Optional[str]) -> tuple[ComputeCapability, Optional[str]]:
    """(compute capability to build for, name of the GPU it is built on or None)."""
    gpu = current_gpu()
    wanted = parse_compute_capability(target_cc) if target_cc else None
    if backend.is_rtx:
        if wanted is None:
            return (gpu[1], gpu[0]) if gpu else (DEFAULT_RTX_TARGET, None)
        return wanted, gpu[0] if gpu and gpu[1] == wanted else None
    if gpu is None:
        raise UserError(
            f"TensorRT {backend.version} builds engines on a CUDA GPU and none is visible; "
            "use --trt tensorrt-rtx to build ahead of time without one"
        )
    if wanted is not None and wanted != gpu[1]:
        raise UserError(
            f"TensorRT builds for the GPU it runs on ({gpu[0]}, {sm_name(gpu[1])}), not {sm_name(wanted)}: "
            "build on that GPU, or use --trt tensorrt-rtx for ahead-of-time targets"
        )
    return gpu[1], gpu[0]


@dataclass(frozen=True)
class OnnxFile:
    """An ONNX file read once: its structure parsed without the initializers, which stay as serialized
    (parsing, copying and re-serializing hundreds of MB of weights was most of a parse's cost)."""

    path: Path
    model: onnx.ModelProto
    weights: memoryview

    def serialized(self, model: onnx.ModelProto) -> bytes:
        """`model`, this file's structure rewritten, serialized with this file's weights."""
        return b"".join(join_weights(model.SerializeToString(), self.weights))


def load_onnx(path: Path) -> OnnxFile:
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist")
    try:
        split = split_weights(path.read_bytes())
        return OnnxFile(path, onnx.load_model_from_string(split.rest), split.weights)
    except Exception as err:  # noqa: BLE001 - protobuf raises several unrelated types
        raise UserError(f"{path} is not an ONNX model ({err})") from None


def _strongly_typed_flags(trt) -> int:
    """STRONGLY_TYPED where the enum has it (TensorRT 10.x); TensorRT 11 and RTX are always strongly typed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


@dataclass
class ParsedNetwork:
    builder: Any
    network: Any
    parser: Any  # owns the weights the network points to: keep it alive until the build is done


def parse_network(backend: Backend, onnx_file: OnnxFile, *, with_plugins: bool) -> ParsedNetwork:
    """The network parsed from ``onnx_file``, strongly typed.

    with_plugins: our custom nodes must become plugin layers (registered beforehand); their
    function bodies are removed first. Otherwise the function bodies are inlined (the portable
    graph). Either way the plugin layers are checked against the custom nodes.
    """
    builder = backend.trt.Builder(backend.logger)
    network = builder.create_network(_strongly_typed_flags(backend.trt))
    parser = backend.trt.OnnxParser(network, backend.logger)
    model = onnx_file.model
    graph = for_plugins(model) if with_plugins else without_plugins(model)
    # path: where the parser finds external weight files, next to the original model.
    if not parser.parse(onnx_file.serialized(graph), str(onnx_file.path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT could not parse {onnx_file.path}: {' | '.join(errors[:3])}")
    check_plugin_layers(backend.trt, network, model, with_plugins=with_plugins)
    check_plugin_input_types(backend.trt, network)
    return ParsedNetwork(builder, network, parser)


def _tensors(tensors) -> tuple[TensorSpec, ...]:
    """Name, shape (-1: the dynamic batch) and TensorRT dtype name ("FLOAT", "HALF") of network inputs or outputs."""
    return tuple(TensorSpec(t.name, tuple(t.shape), t.dtype.name) for t in tensors)


def _add_batch_profile(builder, config, network, batch: BatchSpec) -> BatchRange:
    """Adds the batch optimization profile when the graph's batch is dynamic; returns the batch range."""
    wanted = parse_batch(batch)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = {tensor.name: tuple(tensor.shape) for tensor in inputs}
    inner_dynamic = sorted(name for name, shape in shapes.items() if any(d < 0 for d in shape[1:]))
    if inner_dynamic:
        raise UserError(f"only the batch dimension may be dynamic; inputs {', '.join(inner_dynamic)} have other dynamic dims")
    fixed = {shape[0] for shape in shapes.values() if shape and shape[0] >= 0}
    dynamic = [name for name, shape in shapes.items() if shape and shape[0] < 0]
    if not dynamic:
        size = min(fixed, default=1)
        if batch is not None and wanted != BatchRange.fixed(size):
            raise UserError(f"the graph has a fixed batch of {size}; export it with a dynamic batch to build for {wanted}")
        return BatchRange.fixed(size)
    profile = builder.create_optimization_profile()
    for name in dynamic:
        rest = shapes[name][1:]
        profile.set_shape(name, (wanted.min, *rest), (wanted.opt, *rest), (wanted.max, *rest))
    config.add_optimization_profile(profile)
    return wanted


def _attach_timing_cache(backend: Backend, config, timing_cache: Union[str, Path, None]):
    """Loads (or starts) the timing cache file; None where unused (TensorRT-RTX has no timing cache)."""
    if timing_cache is None or backend.is_rtx or not hasattr(config, "create_timing_cache"):
        return None
    path = Path(timing_cache)
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache
