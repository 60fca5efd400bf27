"""A Triton Inference Server model repository entry for a built engine.

`<repository>/<model>/` holds config.pbtxt (platform "tensorrt_plan"), the engine as 1/model.plan,
the C++ plugin library the engine was built with (and the kernels library it loads), and README.md with the launch command: Triton's
TensorRT backend finds custom plugins only in libraries loaded into the server process, hence
LD_PRELOAD. Names, shapes and dtypes come from the engine's build record, which lists the network's
inputs and outputs as TensorRT built them.

An engine with a batch range becomes max_batch_size = MAX with dynamic batching (preferred batch
OPT): Triton then states every shape without the batch axis. A fixed-batch engine is
max_batch_size 0 with full shapes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rmeeto_export.errors import UserError
from rmeeto_export.files import file_sha256
from rmeeto_export.trt.plugins import elf_needed_libraries
from rmeeto_export.trt.record import BuildRecord, TensorSpec, read_record

CONFIG = "config.pbtxt"
PLAN = "model.plan"
VERSION = "1"
README = "README.md"
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# TensorRT dtype names (as the build record holds them) -> Triton's DataType enum.
TRITON_DTYPES = {
    "FLOAT": "TYPE_FP32",
    "HALF": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "INT8": "TYPE_INT8",
    "UINT8": "TYPE_UINT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL",
}


def max_batch_size(record: BuildRecord) -> int:
    """Triton's max_batch_size: the profile's MAX for a batch range, 0 (no batching axis) for a fixed batch.

    Triton's dynamic batcher sends any batch from 1 up, so a range must start at 1.
    """
    low, high = record.batch["min"], record.batch["max"]
    if low == high:
        return 0
    if low != 1:
        raise UserError(f"Triton sends batches from 1 to max_batch_size, but the engine's batch range starts at {low}: "
                        f"build it with --batch 1:{record.batch['opt']}:{high}")
    return high


def _tensor_block(tensor: TensorSpec, batching: bool) -> str:
    if tensor.dtype not in TRITON_DTYPES:
        raise UserError(f"engine tensor {tensor.name} has dtype {tensor.dtype}, which Triton has no type for")
    dims = tensor.shape[1:] if batching else tensor.shape
    if batching and tensor.shape[0] != -1:
        raise UserError(f"engine tensor {tensor.name} has a fixed batch of {tensor.shape[0]} in a batch-range engine")
    if any(dim < 0 for dim in dims):
        raise UserError(f"engine tensor {tensor.name} has dynamic dims {list(tensor.shape)}; only the batch may be dynamic")
    return (f'  {{\n    name: "{tensor.name}"\n    data_type: {TRITON_DTYPES[tensor.dtype]}\n'
            f"    dims: [ {', '.join(str(dim) for dim in dims)} ]\n  }}")


def model_config(name: str, record: BuildRecord) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for the engine `record` describes."""
    if not record.inputs or not record.outputs:
        raise UserError("the engine's build record lists no inputs/outputs (an older build): rebuild the engine")
    batch = max_batch_size(record)
    batching = batch > 0

    def tensors(specs: tuple[TensorSpec, ...]) -> str:
        return ",\n".join(_tensor_block(tensor, batching) for tensor in specs)

    lines = [
        f'name: "{name}"',
        'platform: "tensorrt_plan"',
        f"max_batch_size: {batch}",
        f"input [\n{tensors(record.inputs)}\n]",
        f"output [\n{tensors(record.outputs)}\n]",
    ]
    if batching:
        lines.append(f"dynamic_batching {{\n  preferred_batch_size: [ {record.batch['opt']} ]\n}}")
    return "\n".join(lines) + "\n"


def plugin_library(record: BuildRecord) -> Path | None:
    """The C++ plugin library the engine was built with (None: no plugin layers), checked against its sha256."""
    if record.plugins is None:
        return None
    if record.plugins.is_python:
        raise UserError("the engine uses the Python plugins, which Triton cannot load: "
                        "rebuild it with the C++ plugin library (--plugins on) or without plugins (--plugins off)")
    library = Path(record.plugins.library)
    if not library.is_file():
        raise UserError(f"the engine's plugin library {library} is gone: rebuild the library or the engine")
    if file_sha256(library) != record.plugins.sha256:
        raise UserError(f"{library} changed since the engine was built (sha256 differs): rebuild the engine")
    return library


def plugin_files(library: Path) -> list[Path]:
    """The plugin library and the libraries it needs from its own folder (our kernels library, which its
    $ORIGIN run path finds beside it); TensorRT and the C++ runtime come from the server."""
    beside = (library.parent / name for name in elf_needed_libraries(library))
    return [library, *(path for path in beside if path.is_file())]


def launch_command(repository: Path, name: str, library: Path | None) -> str:
    """The tritonserver command line; LD_PRELOAD makes the plugin library's creators known to TensorRT."""
    preload = f"LD_PRELOAD={repository.resolve() / name / library.name} " if library else ""
    return f"{preload}tritonserver --model-repository={repository.resolve()}"


def _readme(name: str, record: BuildRecord, library: Path | None, repository: Path) -> str:
    flavour = "TensorRT-RTX" if record.trt_flavour == "tensorrt-rtx" else "TensorRT"
    lines = [
        f"# {name}: Triton model",
        "",
        f"Engine built with {flavour} {record.trt_version} for {record.target}, precision {record.precision}, "
        f"batch {record.batch['min']}..{record.batch['max']} (opt {record.batch['opt']}).",
        "Triton's TensorRT backend deserialises it with the TensorRT of the server, which must be the version "
        "the engine was built with.",
    ]
    if record.trt_flavour == "tensorrt-rtx":
        lines += ["This is a TensorRT-RTX engine; Triton's `tensorrt_plan` backend runs full TensorRT engines, so for "
                  "Triton build the engine with `--trt tensorrt` on the serving GPU."]
    lines += ["", "Start the server from this machine:", "", "```", launch_command(repository, name, library), "```"]
    if library:
        lines += ["", "or in Triton's container (the repository mounted at /models):", "", "```",
                  f"docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -v {repository.resolve()}:/models "
                  f"-e LD_PRELOAD=/models/{name}/{library.name} nvcr.io/nvidia/tritonserver:<release>-py3 "
                  "tritonserver --model-repository=/models", "```"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TritonModel:
    folder: Path  # repository/name
    files: tuple[str, ...]  # written into it
    command: str  # the tritonserver command line that serves it


def write_model(engine: Path, repository: Path, name: str) -> TritonModel:
    """Writes `repository/name/` for `engine` (its build record next to it).

    The folder is assembled under a temporary name and renamed, so an interruption leaves none.
    """
    if not MODEL_NAME.fullmatch(name):
        raise UserError(f"Triton model name {name!r} must be letters, digits, '_', '.' or '-' (a folder name)")
    if not engine.is_file():
        raise UserError(f"engine {engine} does not exist: build it first (rmeeto-export build --trt ...)")
    record = read_record(engine)
    if file_sha256(engine) != record.engine_sha256:
        raise UserError(f"{engine} is not the engine its build record describes (sha256 differs): rebuild it")
    config = model_config(name, record)
    library = plugin_library(record)
    target = repository / name
    if target.exists():
        raise UserError(f"{target} exists: remove it or choose another model name")
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repository))
    try:
        (staging / VERSION).mkdir()
        shutil.copyfile(engine, staging / VERSION / PLAN)
        (staging / CONFIG).write_text(config)
        for file in plugin_files(library) if library else ():
            shutil.copyfile(file, staging / file.name)
        (staging / README).write_text(_readme(name, record, library, repository))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the server may run as another user
        files = tuple(sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file()))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TritonModel(target, files, launch_command(repository, name, library))
