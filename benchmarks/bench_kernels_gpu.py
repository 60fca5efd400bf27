"""GPU time of the project's CUDA kernels against the PyTorch references (and mamba-ssm when installed).

    make plugins && python benchmarks/bench_kernels_gpu.py                  # Vim-S/B shapes, batch 1..128
    python benchmarks/bench_kernels_gpu.py --batches 1 8 --dtypes float16   # a subset

Scan: d_inner 768 (Vim-S) and 1536 (Vim-B), d_state 16, 197 tokens (and 76, the last blocks at r = 11),
with D, z and delta_bias as in Vim. Merge: one R-MeeTo step, 197 -> 186 tokens, channels 384 / 768.
Times are medians of CUDA-event timings after warm-up. "GB/s" is the kernel's compulsory traffic
(every input read once, every output written once) over its time: the figure to hold against the
GPU's memory bandwidth (about 3.3 TB/s on H100 SXM, 4.8 TB/s on H200).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SCAN_MODELS = {"vim_s": 768, "vim_b": 1536}  # d_inner
MERGE_MODELS = {"vim_s": 384, "vim_b": 768}  # embed_dim
D_STATE = 16


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def scan_inputs(batch: int, d_inner: int, length: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    def act(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda").to(dtype)

    return dict(
        u=act(batch, d_inner, length),
        delta=0.5 * act(batch, d_inner, length),
        A=-torch.exp(0.5 * torch.randn(d_inner, D_STATE, device="cuda")),
        B=act(batch, D_STATE, length),
        C=act(batch, D_STATE, length),
        D=torch.randn(d_inner, device="cuda"),
        z=act(batch, d_inner, length),
        delta_bias=0.1 * torch.randn(d_inner, device="cuda"),
    )


def scan_bytes(inputs: dict[str, torch.Tensor]) -> int:
    read = sum(t.numel() * t.element_size() for t in inputs.values())
    return read + inputs["u"].numel() * inputs["u"].element_size()  # + the output


def mamba_scan() -> Callable | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - fails in many ways without its CUDA extension
        return None
    return selective_scan_fn


def bench_scan(batches: list[int], dtypes: list[torch.dtype], lengths: list[int], repeats: int) -> None:
    from rmeeto_export import kernels
    from rmeeto_export.models.ops import selective_scan_reference

    mamba = mamba_scan()
    print("\nselective scan forward (D, z, delta_bias, softplus), d_state 16")
    header = f"{'model':6} {'dtype':9} {'batch':>5} {'L':>4} {'kernel ms':>10} {'GB/s':>7} {'torch ms':>9} {'x':>6}"
    print(header + (f" {'mamba ms':>9} {'x':>5}" if mamba else "  (mamba-ssm not importable)"))
    for model, d_inner in SCAN_MODELS.items():
        for dtype in dtypes:
            for length in lengths:
                for batch in batches:
                    inputs = scan_inputs(batch, d_inner, length, dtype)
                    ours = median_ms(lambda: kernels.selective_scan(**inputs), repeats)
                    ref = median_ms(lambda: selective_scan_reference(**inputs), max(3, repeats // 10))
                    row = (
                        f"{model:6} {str(dtype)[6:]:9} {batch:5d} {length:4d} {ours:10.4f} "
                        f"{scan_bytes(inputs) / ours / 1e6:7.0f} {ref:9.3f} {ref / ours:6.1f}"
                    )
                    if mamba is not None:
                        args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
                        theirs = median_ms(lambda: mamba(*args, delta_softplus=True), repeats)
                        row += f" {theirs:9.4f} {theirs / ours:5.2f}"
                    print(row)
                    del inputs
                    torch.cuda.empty_cache()


def bench_merge(batches: list[int], dtypes: list[torch.dtype], repeats: int, r: int = 11) -> None:
    from rmeeto_export import kernels
    from rmeeto_export.merge.rmeeto import merge_tokens

    tokens, cls_index = 197, 98
    print(f"\ntoken merge, {tokens} -> {tokens - r} tokens (r = {r}, class token at {cls_index})")
    print(f"{'model':6} {'dtype':9} {'batch':>5} {'kernel ms':>10} {'GB/s':>7} {'torch ms':>9} {'x':>6}")
    for model, channels in MERGE_MODELS.items():
        for dtype in dtypes:
            for batch in batches:
                hidden = torch.randn(batch, tokens, channels, device="cuda").to(dtype)
                residual = torch.randn(batch, tokens, channels, device="cuda")
                size = torch.ones(batch, tokens, 1, device="cuda")
                ours = median_ms(lambda: kernels.token_merge(hidden, residual, size, r, cls_index), repeats)
                ref = median_ms(lambda: merge_tokens(hidden, residual, size, r, cls_index), repeats)
                kept = (tokens - r) / tokens
                traffic = (hidden.numel() * hidden.element_size() + residual.numel() * 4 + size.numel() * 4) * (1 + kept)
                print(
                    f"{model:6} {str(dtype)[6:]:9} {batch:5d} {ours:10.4f} {traffic / ours / 1e6:7.0f} "
                    f"{ref:9.3f} {ref / ours:6.1f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 128])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "float16"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[197, 76], help="scan sequence lengths")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--only", choices=["scan", "merge"], default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")

    from rmeeto_export import kernels
    from rmeeto_export.errors import UserError

    try:
        kernels.load_library()
    except UserError as error:
        sys.exit(f"bench_kernels_gpu: {error}")
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference merge's similarity matmul in true fp32
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    dtypes = [DTYPES[name] for name in args.dtypes]
    with torch.inference_mode():
        if args.only in (None, "scan"):
            bench_scan(args.batches, dtypes, args.lengths, args.repeats)
        if args.only in (None, "merge"):
            bench_merge(args.batches, dtypes, args.repeats)


if __name__ == "__main__":
    main()
