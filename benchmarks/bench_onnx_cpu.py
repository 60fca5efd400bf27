"""CPU latency of an exported Vim in ONNX Runtime, merged vs unmerged, against PyTorch eager, in one run.

    python benchmarks/bench_onnx_cpu.py                          # vim_s, ratio 0.31, batch 1, 1 thread
    python benchmarks/bench_onnx_cpu.py --model vim_t --ratio 0.14 --threads 2

Both runtimes get the same explicit thread count (--threads; printed): torch.set_num_threads and
ONNX Runtime's intra-op pool, inter-op 1. The ONNX graphs are the fp32 custom-op exports (ONNX Runtime
inlines the rmeeto function bodies when it loads them). Random weights: latency does not depend on
them, the merge's token counts are fixed by the schedule. Figures are medians of --repeats timed
runs after --warmup untimed ones, the two runtimes taking turns run by run, so that a change in
machine load hits both alike; the load average is printed before and after. Run on a quiet machine:
shared 2-core VMs swing by tens of percent.
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

from rmeeto_export.export import export_onnx
from rmeeto_export.models.vim import create_model


def median_ms_taking_turns(runs: list[Callable[[], object]], repeats: int, warmup: int) -> list[float]:
    """Median milliseconds of each of `runs`, timed in turns (run 0, run 1, ..., run 0, ...)."""
    for _ in range(warmup):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, taken in zip(runs, times):
            start = time.perf_counter()
            run()
            taken.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(taken) for taken in times]


def load_average() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_s")
    parser.add_argument("--ratio", type=float, default=0.31)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, onnxruntime intra-op {args.threads} / inter-op 1")
    print(f"model {args.model}, batch {args.batch}, ONNX Runtime {ort.__version__}, torch {torch.__version__}")
    print(f"before: {load_average()}")
    torch.manual_seed(0)
    variants = {"unmerged": create_model(args.model).eval(), f"merged {args.ratio}": create_model(args.model, merge_ratio=args.ratio).eval()}
    cfg = next(iter(variants.values())).cfg
    images = torch.randn(args.batch, cfg.in_chans, cfg.img_size, cfg.img_size)

    print(f"{'variant':<14} {'r':>3} {'last tokens':>11} {'torch ms':>9} {'ort ms':>8} {'ort/torch':>9} {'max |diff|':>11}")
    with tempfile.TemporaryDirectory() as folder:
        for name, model in variants.items():
            path = export_onnx(model, Path(folder) / "model.onnx", batch=args.batch)
            session = ort_session(path, args.threads)
            feed = {"images": images.numpy()}
            with torch.no_grad():
                torch_ms, ort_ms = median_ms_taking_turns(
                    [lambda: model(images), lambda: session.run(None, feed)], args.repeats, args.warmup
                )
                expected = model(images).numpy()
            difference = float(np.abs(session.run(None, feed)[0] - expected).max())
            schedule = model.schedule
            print(
                f"{name:<14} {schedule.r:>3} {schedule.tokens_per_block[-1]:>11} "
                f"{torch_ms:>9.1f} {ort_ms:>8.1f} {ort_ms / torch_ms:>9.2f} {difference:>11.2e}"
            )
    print(f"after: {load_average()}")


if __name__ == "__main__":
    main()
