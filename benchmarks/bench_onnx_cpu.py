"""CPU latency of Vim, merged vs plain, in four runtimes in one run: PyTorch eager with the reference ops,
PyTorch with the native CPU ops, ONNX Runtime running the rmeeto nodes' function bodies, and ONNX
Runtime with our op library (librmeeto_ort_ops.so); at 1 and 2 threads.

    make native && python benchmarks/bench_onnx_cpu.py          # vim_s, ratio 0.31, batch 1
    python benchmarks/bench_onnx_cpu.py --model vim_t --ratio 0.14 --threads 1

Each runtime gets the same explicit thread count (torch.set_num_threads, ONNX Runtime's intra-op pool,
inter-op 1). Random weights: latency does not depend on them, the merge's token counts are fixed by the
schedule. Figures are medians of --repeats timed runs after --warmup untimed ones, the runtimes taking
turns run by run so that a change in machine load hits all alike; wall ms and the process's CPU ms per
run are both printed (on a shared machine CPU ms is the steadier of the two). The last table gives each
runtime's merged/plain speed-up next to the bound the GFLOPs set (models/complexity.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from rmeeto_export import native
from rmeeto_export.export import export_onnx
from rmeeto_export.export.parity import session_options
from rmeeto_export.models.complexity import model_gflops
from rmeeto_export.models.vim import create_model, with_scan_backend

RUNTIMES = ("torch reference", "torch native", "ort bodies", "ort native")


def medians_taking_turns(runs: list[Callable[[], object]], repeats: int, warmup: int) -> list[tuple[float, float]]:
    """(median wall ms, median process CPU ms) of each of `runs`, timed in turns (run 0, run 1, ..., run 0, ...)."""
    for _ in range(warmup):
        for run in runs:
            run()
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, taken in zip(runs, times):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            taken.append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
    return [(statistics.median(w for w, _ in taken), statistics.median(c for _, c in taken)) for taken in times]


def load_average() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def ort_session(path: Path, threads: int, native_ops: bool) -> ort.InferenceSession:
    options = session_options(native_ops)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runs_of(model, path: Path, images: torch.Tensor, threads: int) -> dict[str, Callable[[], object]]:
    """One callable per runtime, each a forward pass on `images`."""
    feed = {"images": images.numpy()}
    sessions = {name: ort_session(path, threads, native_ops) for name, native_ops in (("ort bodies", False), ("ort native", True))}

    def torch_run(backend: str) -> Callable[[], object]:
        twin = with_scan_backend(model, backend)

        def run():
            with torch.no_grad():
                return twin(images)

        return run

    return {
        "torch reference": torch_run("reference"),
        "torch native": torch_run("native"),
        **{name: (lambda s=session: s.run(None, feed)[0]) for name, session in sessions.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_s")
    parser.add_argument("--ratio", type=float, default=0.31)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if native.ort_ops_library() is None or not native.available():
        raise SystemExit(f"error: {native.ABSENT_NOTE}; this benchmark compares against them")

    print(f"model {args.model}, batch {args.batch}, ONNX Runtime {ort.__version__}, torch {torch.__version__}")
    print(f"native ops: {native.find_library(native.CPU_KERNELS_LIBRARY)}, {native.ort_ops_library()}")
    print(f"native CPU scan variant: {native.scan_variant()}")
    print(f"before: {load_average()}")
    torch.manual_seed(0)
    variants = {"plain": create_model(args.model).eval(), "merged": create_model(args.model, merge_ratio=args.ratio).eval()}
    cfg = variants["plain"].cfg
    images = torch.randn(args.batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    bound = model_gflops(variants["plain"]) / model_gflops(variants["merged"])

    results: dict[tuple[int, str, str], tuple[float, float]] = {}
    print(f"\n{'threads':>7} {'variant':<7} {'runtime':<16} {'wall ms':>8} {'CPU ms':>8} {'max |diff| vs torch reference':>30}")
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: export_onnx(model, Path(folder) / f"{name}.onnx", batch=args.batch) for name, model in variants.items()}
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, model in variants.items():
                runs = runs_of(model, paths[name], images, threads)
                expected = runs["torch reference"]()
                for runtime, figures in zip(runs, medians_taking_turns(list(runs.values()), args.repeats, args.warmup)):
                    results[threads, name, runtime] = figures
                    difference = float(np.abs(np.asarray(runs[runtime]()) - expected.numpy()).max())
                    print(f"{threads:>7} {name:<7} {runtime:<16} {figures[0]:>8.1f} {figures[1]:>8.1f} {difference:>30.2e}")

    print(f"\nmerged/plain speed-up per runtime (GFLOPs bound {bound:.2f}x; wall, CPU)")
    for threads in args.threads:
        for runtime in RUNTIMES:
            (plain_wall, plain_cpu), (merged_wall, merged_cpu) = (results[threads, v, runtime] for v in ("plain", "merged"))
            print(f"  {threads} thread(s) {runtime:<16} {plain_wall / merged_wall:>5.2f}x {plain_cpu / merged_cpu:>5.2f}x")
    print("\nspeed-up of ort native over ort bodies, merged (wall, CPU)")
    for threads in args.threads:
        (bodies_wall, bodies_cpu), (native_wall, native_cpu) = (results[threads, "merged", r] for r in ("ort bodies", "ort native"))
        print(f"  {threads} thread(s) {bodies_wall / native_wall:>5.2f}x {bodies_cpu / native_cpu:>5.2f}x")
    print(f"after: {load_average()}")


if __name__ == "__main__":
    main()
