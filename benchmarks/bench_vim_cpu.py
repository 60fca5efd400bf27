"""CPU forward latency of a Vim, plain and merged, with the scan's and the merge's share.

    python benchmarks/bench_vim_cpu.py --model vim_t                 # issue: vim_t batch 1 < 1 s
    python benchmarks/bench_vim_cpu.py --model vim_s --ratio 0.31    # merged vs plain in one run

Latency is the median of --repeats timed forwards (no profiler attached); the op shares come
from one extra profiled forward, as the inclusive CPU time of each custom op over the whole
forward. Run it on a quiet machine: figures on shared 2-core VMs swing by tens of percent.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rmeeto_export.contracts import SELECTIVE_SCAN, TOKEN_MERGE
from rmeeto_export.models import create_model

OPS = {"scan": SELECTIVE_SCAN.torch_op, "merge": TOKEN_MERGE.torch_op}


def median_latency_ms(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    model(images)  # warm-up: allocator, oneDNN primitives
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(images)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def op_shares(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(images)
    events = {e.key: e.cpu_time_total for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return {name: events.get(key, 0.0) / total for name, key in OPS.items()}


def measure(name: str, ratio: float | None, batch: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_model(name, merge_ratio=ratio).eval()
    images = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size)
    with torch.inference_mode():
        return {"ms": median_latency_ms(model, images, repeats), **op_shares(model, images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_t")
    parser.add_argument("--ratio", type=float, default=None, help="also measure the model merged at this ratio")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, "
          f"median of {args.repeats}")
    rows = [("plain", measure(args.model, None, args.batch, args.repeats))]
    if args.ratio:
        rows.append((f"merged {args.ratio}", measure(args.model, args.ratio, args.batch, args.repeats)))
    print(f"{'variant':<14}{'forward ms':>12}{'scan share':>12}{'merge share':>13}")
    for label, row in rows:
        print(f"{label:<14}{row['ms']:>12.1f}{row['scan']:>12.1%}{row['merge']:>13.1%}")
    if args.ratio:
        print(f"speed-up merged vs plain: {rows[0][1]['ms'] / rows[1][1]['ms']:.2f}x")


if __name__ == "__main__":
    main()
