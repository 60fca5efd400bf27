"""Instructions one rmeeto::SelectiveScan node costs in ONNX Runtime, function body vs librmeeto_ort_ops.so,
counted by valgrind's callgrind: a figure that, unlike a wall time, does not move with the load of a
shared machine.

    make native && python benchmarks/scan_op_instructions.py          # vim_s width, 136 steps (needs valgrind and a C++ compiler)

The node has a merged vim_s block's shape (batch 1, 768 channels, d_state 16, 136 tokens: the mean of
197 - 11 * floor(l / 2) over the 24 blocks) and random inputs. Each configuration runs in a small C++
runner (ort_node_runs.cpp) under callgrind, which counts only its 3 inferences after a warm-up one.
valgrind does not emulate AVX-512, so the library's scan runs its avx2 variant here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

BATCH, CHANNELS, DSTATE, STEPS = 1, 768, 16, 136
ORT_HEADERS = Path(__file__).resolve().parents[1] / "build" / "ort-headers" / "usr" / "include" / "onnxruntime"


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


def build_runner(folder: Path) -> Path:
    """ort_node_runs.cpp compiled against the ONNX Runtime headers of `make native` and this
    interpreter's onnxruntime library."""
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    library = next(capi.glob("libonnxruntime.so.*"))
    (folder / "libonnxruntime.so.1").symlink_to(library)  # the soname the runner links
    runner = folder / "ort_node_runs"
    subprocess.run(["c++", "-O2", "-std=c++17", f"-I{ORT_HEADERS}", str(Path(__file__).with_name("ort_node_runs.cpp")),
                    str(library), f"-Wl,-rpath,{folder}", "-o", str(runner)], check=True)  # fmt: skip
    return runner


def instructions_per_run(runner: Path, model: Path, library: str, runs: int = 3) -> int:
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
               str(runner), str(model), str(runs)] + ([library] if library else [])  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", output).group(1)) // runs


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from rmeeto_export import native

    library = native.ort_ops_library()
    if library is None:
        raise SystemExit(f"error: {native.ABSENT_NOTE}")
    if not (ORT_HEADERS / "onnxruntime_cxx_api.h").is_file():
        raise SystemExit(f"error: the runner needs ONNX Runtime's headers at {ORT_HEADERS}: run `make native`")
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "scan.onnx"
        write_model(model)
        runner = build_runner(Path(folder))
        print(f"SelectiveScan ({BATCH}, {CHANNELS}, {DSTATE}, {STEPS}), 1 thread, instructions per inference:")
        per_run = {}
        for name, lib in (("function body", ""), ("librmeeto_ort_ops", str(library))):
            per_run[name] = instructions_per_run(runner, model, lib)
            print(f"  {name:<18} {per_run[name]:>14,}")
        print(f"  ratio              {per_run['function body'] / per_run['librmeeto_ort_ops']:>14.2f}x")


if __name__ == "__main__":
    main()
