"""Wall time of one native CPU SelectiveScan call per compiled variant (librmeeto_cpu_kernels.so).

    make native && nice python benchmarks/bench_scan_cpu.py

The calls have merged vim_s's shapes (batch 1, 768 channels, d_state 16, with D, z, delta_bias and
softplus; 197 tokens before the first merge, 76 after the last), fp32, 1 thread. Each figure is the
minimum and the median of --repeats calls through rmeeto_export.native (its ctypes call adds tens
of microseconds); ns per update divides the minimum by batch x channels x d_state x tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rmeeto_export import native
from rmeeto_export.errors import UserError

CHANNELS, DSTATE, TOKENS = 768, 16, (197, 76)


def inputs(tokens: int, generator: torch.Generator) -> dict:
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    return dict(u=randn(1, CHANNELS, tokens), delta=0.5 * randn(1, CHANNELS, tokens),
                A=-torch.exp(0.5 * randn(CHANNELS, DSTATE)), B=randn(1, DSTATE, tokens), C=randn(1, DSTATE, tokens),
                D=randn(CHANNELS), z=randn(1, CHANNELS, tokens), delta_bias=0.1 * randn(CHANNELS))  # fmt: skip


def seconds(call, repeats: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    if not native.available():
        raise SystemExit(f"error: {native.ABSENT_NOTE}")
    generator = torch.Generator().manual_seed(0)
    cases = {tokens: inputs(tokens, generator) for tokens in TOKENS}
    print(f"SelectiveScan (1, {CHANNELS}, {DSTATE}, tokens), fp32, 1 thread, {args.repeats} calls; default variant "
          f"{native.scan_variant()}")
    print(f"{'variant':<10}{'tokens':>7}{'min ms':>9}{'median ms':>11}{'ns/update':>11}")
    for variant in native.SCAN_VARIANTS:
        try:
            native.use_scan_variant(variant)
        except UserError as error:
            print(f"{variant:<10} skipped: {error}")
            continue
        for tokens, case in cases.items():
            times = seconds(lambda: native.selective_scan(**case, delta_softplus=True, num_threads=1), args.repeats)
            updates = CHANNELS * DSTATE * tokens
            print(f"{variant:<10}{tokens:>7}{min(times) * 1e3:>9.3f}{statistics.median(times) * 1e3:>11.3f}"
                  f"{min(times) * 1e9 / updates:>11.3f}")  # fmt: skip
    native.use_scan_variant(None)


if __name__ == "__main__":
    main()
