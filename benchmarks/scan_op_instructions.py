"""Instructions one rmeeto::SelectiveScan node costs in ONNX Runtime, function body vs librmeeto_ort_ops.so,
counted by valgrind's callgrind: a figure that, unlike a wall time, does not move with the load of a
shared machine.

    make native && python benchmarks/scan_op_instructions.py          # vim_s width, 136 steps (needs valgrind)

The node has a merged vim_s block's shape (batch 1, 768 channels, d_state 16, 136 tokens: the mean of
197 - 11 * floor(l / 2) over the 24 blocks) and random inputs. Each configuration runs under callgrind
twice, with 1 and with 3 inferences after a warm-up one; half the difference is one inference, so
process start-up and session creation cancel out.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BATCH, CHANNELS, DSTATE, STEPS = 1, 768, 16, 136


def write_model(path: Path) -> None:
    """A one-node graph: SelectiveScan with its function body, as export writes it."""
    from onnx import TensorProto, helper, save

    from rmeeto_export.contracts import DOMAIN
    from rmeeto_export.export.functions import ONNX_OPSET, custom_functions

    shapes = {"u": (BATCH, CHANNELS, STEPS), "delta": (BATCH, CHANNELS, STEPS), "A": (CHANNELS, DSTATE),
              "B": (BATCH, DSTATE, STEPS), "C": (BATCH, DSTATE, STEPS), "D": (CHANNELS,),
              "z": (BATCH, CHANNELS, STEPS), "delta_bias": (CHANNELS,)}  # fmt: skip
    node = helper.make_node("SelectiveScan", list(shapes), ["y"], domain=DOMAIN, delta_softplus=1, reverse=0)
    graph = helper.make_graph(
        [node], "scan",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shapes["u"])],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, 1)]
    save(helper.make_model(graph, opset_imports=opsets, functions=custom_functions()), str(path))


def run_model(path: Path, runs: int, library: str) -> None:
    """Session (one intra-op thread) + a warm-up inference + `runs` inferences; imports no torch."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in session.get_inputs()}
    feed["A"] = -np.exp(feed["A"])  # decaying states, as Vim's A = -exp(A_log)
    for _ in range(runs + 1):
        session.run(None, feed)


def instructions(path: Path, runs: int, library: str) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, __file__, "run", str(path), "--runs", str(runs), "--library", library]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", output).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", "run"])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--library", default="")
    args = parser.parse_args()
    if args.mode == "run":
        run_model(Path(args.model), args.runs, args.library)
        return

    from rmeeto_export import native

    library = native.ort_ops_library()
    if library is None:
        raise SystemExit(f"error: {native.ABSENT_NOTE}")
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "scan.onnx"
        write_model(model)
        print(f"SelectiveScan ({BATCH}, {CHANNELS}, {DSTATE}, {STEPS}), 1 thread, instructions per inference:")
        per_run = {}
        for name, lib in (("function body", ""), ("librmeeto_ort_ops", str(library))):
            per_run[name] = (instructions(model, 3, lib) - instructions(model, 1, lib)) // 2
            print(f"  {name:<18} {per_run[name]:>14,}")
        print(f"  ratio              {per_run['function body'] / per_run['librmeeto_ort_ops']:>14.2f}x")


if __name__ == "__main__":
    main()
