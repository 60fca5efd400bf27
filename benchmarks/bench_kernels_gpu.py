"""GPU time of the project's CUDA kernels against the PyTorch references (and mamba-ssm when installed).

    make plugins && python -m benchmarks.bench_kernels_gpu                   # Vim-S/B shapes, batch 1..128
    python -m benchmarks.bench_kernels_gpu --batches 1 8 --dtypes float16 --json kernels.json

Scan: d_inner 768 (Vim-S) and 1536 (Vim-B), d_state 16, 197 tokens (and 76, the last blocks at r = 11),
with D, z and delta_bias as in Vim. Merge: one R-MeeTo step, 197 -> 186 tokens, channels 384 / 768,
next to one Vim block's forward at the same shape (fp16 blocks with these kernels), whose time the
merge adds. Times are medians of CUDA-event timings after warm-up. "GB/s" is the kernel's compulsory
traffic (every input read once, every output written once) over its time; "% peak" holds it against
the GPU's DRAM bandwidth (2 transfers per memory clock times the bus width, from the driver).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
from typing import Callable, Optional

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SCAN_MODELS = {"vim_s": 768, "vim_b": 1536}  # d_inner
MERGE_MODELS = {"vim_s": 384, "vim_b": 768}  # embed_dim
D_STATE = 16
MERGE_TOKENS, MERGE_R, MERGE_CLS_INDEX = 197, 11, 98

SCAN_COLUMNS = ["model", "dtype", "batch", "length", "kernel_ms", "gb_per_s", "peak_pct", "torch_ms", "mamba_ms"]
MERGE_COLUMNS = ["model", "dtype", "batch", "kernel_ms", "gb_per_s", "peak_pct", "torch_ms", "block_ms", "merge_share_pct"]


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


def peak_bandwidth_gb_per_s(device: int = 0) -> Optional[float]:
    """The GPU's theoretical DRAM bandwidth from the driver (CUDA 13's cudaDeviceProp lost the memory
    clock); None when the driver cannot say."""
    attribute_memory_clock_khz, attribute_bus_width_bits = 36, 37  # CUdevice_attribute values in cuda.h
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        handle, clock, width = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        torch.cuda.init()  # the driver is initialised through torch
        if driver.cuDeviceGet(ctypes.byref(handle), device) != 0:
            return None
        if driver.cuDeviceGetAttribute(ctypes.byref(clock), attribute_memory_clock_khz, handle) != 0:
            return None
        if driver.cuDeviceGetAttribute(ctypes.byref(width), attribute_bus_width_bits, handle) != 0:
            return None
    except OSError:
        return None
    return round(2 * clock.value * 1e3 * width.value / 8 / 1e9, 1) or None


def percent_of(value: float, peak: Optional[float]) -> Optional[float]:
    return None if not peak else 100 * value / peak


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


def scan_rows(batches: list[int], dtypes: list[str], lengths: list[int], repeats: int, peak: Optional[float]) -> list[dict]:
    """One row per (model, dtype, length, batch): our kernel, the PyTorch reference, mamba-ssm if importable."""
    from rmeeto_export import kernels
    from rmeeto_export.models.ops import selective_scan_reference

    mamba = mamba_scan()
    rows = []
    for model, d_inner in SCAN_MODELS.items():
        for dtype in dtypes:
            for length in lengths:
                for batch in batches:
                    inputs = scan_inputs(batch, d_inner, length, DTYPES[dtype])
                    ours = median_ms(lambda: kernels.selective_scan(**inputs), repeats)
                    gb_per_s = scan_bytes(inputs) / ours / 1e6
                    row = dict(
                        model=model, dtype=dtype, batch=batch, length=length, kernel_ms=ours, gb_per_s=gb_per_s,
                        peak_pct=percent_of(gb_per_s, peak),
                        torch_ms=median_ms(lambda: selective_scan_reference(**inputs), max(3, repeats // 10)),
                        mamba_ms=None,
                    )  # fmt: skip
                    if mamba is not None:
                        args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
                        row["mamba_ms"] = median_ms(lambda: mamba(*args, delta_softplus=True), repeats)
                    rows.append(row)
                    del inputs
                    torch.cuda.empty_cache()
    return rows


def block_ms(model: str, batch: int, repeats: int) -> float:
    """One fp16 Vim block's forward at the merge's input shape, its ops on our kernels."""
    from rmeeto_export import kernels
    from rmeeto_export.models.vim import Block, resolve_config

    kernels.register_cuda_kernels()
    block = Block(resolve_config(model, scan_backend="reference"), 0.0).half().cuda().eval()
    hidden = torch.randn(batch, MERGE_TOKENS, MERGE_MODELS[model], device="cuda", dtype=torch.float16)
    residual = torch.randn(batch, MERGE_TOKENS, MERGE_MODELS[model], device="cuda")
    return median_ms(lambda: block(hidden, residual), max(3, repeats // 5))


def merge_rows(batches: list[int], dtypes: list[str], repeats: int, peak: Optional[float]) -> list[dict]:
    """One row per (model, dtype, batch): our kernel, the PyTorch reference, and its share of a block."""
    from rmeeto_export import kernels
    from rmeeto_export.merge.rmeeto import merge_tokens

    rows = []
    for model, channels in MERGE_MODELS.items():
        blocks = {batch: block_ms(model, batch, repeats) for batch in batches}
        for dtype in dtypes:
            for batch in batches:
                hidden = torch.randn(batch, MERGE_TOKENS, channels, device="cuda").to(DTYPES[dtype])
                residual = torch.randn(batch, MERGE_TOKENS, channels, device="cuda")
                size = torch.ones(batch, MERGE_TOKENS, 1, device="cuda")
                step = (hidden, residual, size, MERGE_R, MERGE_CLS_INDEX)
                ours = median_ms(lambda: kernels.token_merge(*step), repeats)
                kept = (MERGE_TOKENS - MERGE_R) / MERGE_TOKENS
                traffic = (hidden.numel() * hidden.element_size() + residual.numel() * 4 + size.numel() * 4) * (1 + kept)
                rows.append(dict(
                    model=model, dtype=dtype, batch=batch, kernel_ms=ours, gb_per_s=traffic / ours / 1e6,
                    peak_pct=percent_of(traffic / ours / 1e6, peak), torch_ms=median_ms(lambda: merge_tokens(*step), repeats),
                    block_ms=blocks[batch], merge_share_pct=100 * ours / blocks[batch],
                ))  # fmt: skip
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def format_table(title: str, rows: list[dict], columns: list[str]) -> str:
    """Rows as an aligned text table under a title; missing values print as '-'."""
    cells = [columns] + [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [title] + ["  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 128])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "float16", "bfloat16"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[197, 76], help="scan sequence lengths")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--only", choices=["scan", "merge"], default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("error: bench_kernels_gpu needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")

    from rmeeto_export import kernels
    from rmeeto_export.errors import UserError

    try:
        kernels.load_library()
    except UserError as error:
        sys.exit(f"error: {error}")
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference merge's similarity matmul in true fp32
    peak = peak_bandwidth_gb_per_s()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, peak {_cell(peak)} GB/s")
    results = {}
    with torch.inference_mode():
        if args.only in (None, "scan"):
            results["scan"] = scan_rows(args.batches, args.dtypes, args.lengths, args.repeats, peak)
            print(format_table("\nselective scan forward (D, z, delta_bias, softplus), d_state 16", results["scan"], SCAN_COLUMNS))
        if args.only in (None, "merge"):
            results["merge"] = merge_rows(args.batches, args.dtypes, args.repeats, peak)
            title = f"\ntoken merge, {MERGE_TOKENS} -> {MERGE_TOKENS - MERGE_R} tokens, next to one fp16 block"
            print(format_table(title, results["merge"], MERGE_COLUMNS))
    if args.json:
        from rmeeto_export.files import write_json_atomic

        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
