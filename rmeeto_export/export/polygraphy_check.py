"""Our parity check in Polygraphy's terms, so its CLI repeats it anywhere, on the target GPU too.

`verify` saves the parity images and the PyTorch model's logits in Polygraphy's JSON formats:
parity_inputs.json (one feed dict per batch, for `polygraphy run --load-inputs`) and
parity_outputs.json (a RunResults of a runner named "pytorch", for `--load-outputs`). Our
tolerances, relative to the logit scale, become Polygraphy comparator options with the scale of
these very logits: `simple` on the max error (atol = max_rel * scale, no relative criterion) and
`cosine_similarity` per batch. ``check_command`` and ``target_commands`` write the command lines.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import numpy as np

from rmeeto_export.export.batch import BatchRange
from rmeeto_export.export.onnx_export import INPUT_NAME, OUTPUT_NAME
from rmeeto_export.export.parity import TOLERANCES
from rmeeto_export.files import atomic_open

INPUTS = "parity_inputs.json"
OUTPUTS = "parity_outputs.json"
REFERENCE_RUNNER = "pytorch"


def _quiet():
    """Polygraphy logs every load and save; a build's output has its own progress lines."""
    from polygraphy.logger import G_LOGGER

    return G_LOGGER.verbosity(G_LOGGER.ERROR)


def save_parity_data(folder: Path, images: np.ndarray, logits: np.ndarray, batch: int) -> list[str]:
    """Writes INPUTS and OUTPUTS (atomically) for ``images`` cut into batches of ``batch`` (a size the graph takes)."""
    with _quiet():
        from polygraphy.comparator import IterationResult, RunResults
        from polygraphy.json import to_json

    starts = range(0, len(images) - len(images) % batch, batch)  # whole batches: a graph's batch may be fixed
    feeds = [{INPUT_NAME: np.ascontiguousarray(images[i:i + batch], dtype=np.float32)} for i in starts]
    iterations = [IterationResult({OUTPUT_NAME: np.ascontiguousarray(logits[i:i + batch], dtype=np.float32)},
                                  runner_name=REFERENCE_RUNNER) for i in starts]
    for name, obj in ((INPUTS, feeds), (OUTPUTS, RunResults([(REFERENCE_RUNNER, iterations)]))):
        with atomic_open(folder / name) as stream:
            stream.write(to_json(obj).encode())
    return [INPUTS, OUTPUTS]


def logit_scale(folder: Path) -> float:
    """max |logit| of the saved PyTorch outputs: what our relative tolerances are relative to."""
    with _quiet():
        from polygraphy.comparator import RunResults

        results = RunResults.load(str(folder / OUTPUTS))
    return max(float(np.abs(it[OUTPUT_NAME]).max()) for _, iterations in results.items() for it in iterations)


def tolerance_options(precision: str, scale: float) -> list[str]:
    """Polygraphy comparator options equal to our ``precision`` tolerance for logits of ``scale``."""
    tolerance = TOLERANCES[precision]
    return ["--compare", "simple", "cosine_similarity", "--check-error-stat", "max",
            "--atol", f"{tolerance.max_rel * scale:.3g}", "--rtol", "0",
            "--cosine-similarity-threshold", f"{tolerance.min_cosine}"]


def check_command(onnx_name: str, precision: str, scale: float) -> list[str]:
    """`polygraphy run` of an ONNX graph in ONNX Runtime against the saved PyTorch outputs."""
    return ["polygraphy", "run", onnx_name, "--onnxrt", "--load-inputs", INPUTS, "--load-outputs", OUTPUTS,
            *tolerance_options(precision, scale)]


def profile_options(image_shape: tuple[int, ...], batch: BatchRange) -> list[str]:
    """Polygraphy's options for a TensorRT build of a graph with a batch range: the engine's profile."""
    if not batch.dynamic:
        return []
    shape = lambda size: f"{INPUT_NAME}:[{','.join(map(str, (size, *image_shape)))}]"  # noqa: E731
    return ["--trt-min-shapes", shape(batch.min), "--trt-opt-shapes", shape(batch.opt), "--trt-max-shapes", shape(batch.max)]


def target_commands(*, onnx_name: str, engine_graph: str, engine_name: Optional[str], plugin_library: Optional[str],
                    flavour: Optional[str], precision: str, scale: float, image_shape: tuple[int, ...],
                    batch: BatchRange) -> list[tuple[str, str]]:
    """(what it checks, command line) for the report: run them in the build folder, on any machine or the target.

    engine_graph: the graph the engine was built from; image_shape: one image's (channels, height, width).
    """
    tolerance = tolerance_options(precision, scale)
    commands = [("ONNX Runtime vs PyTorch (any machine)", check_command(onnx_name, precision, scale))]
    if engine_name is not None:
        prefix = ["POLYGRAPHY_USE_TENSORRT_RTX=1"] if flavour == "tensorrt-rtx" else []
        plugins = ["--plugins", f"./{plugin_library}"] if plugin_library else []
        commands += [
            ("the engine vs PyTorch (target GPU)",
             [*prefix, "polygraphy", "run", engine_name, "--model-type", "engine", "--trt", *plugins,
              "--load-inputs", INPUTS, "--load-outputs", OUTPUTS, *tolerance]),
            ("a TensorRT build vs ONNX Runtime (target GPU)",
             [*prefix, "polygraphy", "run", engine_graph, "--trt", *plugins, *profile_options(image_shape, batch),
              "--onnxrt", "--load-inputs", INPUTS, *tolerance]),
        ]
        if flavour == "tensorrt":  # trtexec is full TensorRT's tool
            dynamic = [f"--dynamicPlugins=./{plugin_library}"] if plugin_library else []
            shapes = [f"--shapes={INPUT_NAME}:{'x'.join(map(str, (batch.opt, *image_shape)))}"] if batch.dynamic else []
            commands.append(("latency and throughput (target GPU)", ["trtexec", f"--loadEngine={engine_name}", *dynamic, *shapes]))
    return [(what, shlex.join(command)) for what, command in commands]
