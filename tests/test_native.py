"""The native CPU ops (plugins_trt/cpu through rmeeto_export.native) against the PyTorch references, on
the shapes and dtypes of the CUDA kernel tests, and the "native" backend of the model's ops."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmeeto_export import native
from rmeeto_export.errors import UserError
from rmeeto_export.merge.rmeeto import merge_tokens
from rmeeto_export.models import create_model, ops
from rmeeto_export.models.vim import with_scan_backend
from tests.support.models import TINY_MERGE_R, TINY_VIM
from tests.support.native_build import native_dir, native_ops  # noqa: F401 - fixtures
from tests.support.kernel_inputs import (
    DTYPES,
    TOLERANCE,
    assert_close_to_scale,
    merge_inputs,
    scan_inputs,
    tie_free_merge_inputs,
)
from tests.test_kernels import GPU_MERGE_CASES, GPU_SCAN_CASES, MERGE_CASES, SCAN_CASES

# The kernel tests' cases, and one full Vim shape of each op (the rest take the CPU reference too long).
NATIVE_SCAN_CASES = SCAN_CASES + GPU_SCAN_CASES[:1]
NATIVE_MERGE_CASES = MERGE_CASES + GPU_MERGE_CASES[:1]


@pytest.fixture(params=native.SCAN_VARIANTS)
def scan_variant(native_ops, request):
    """Every compiled variant of the scan this CPU runs, forced in turn; the default again afterwards."""
    try:
        native_ops.use_scan_variant(request.param)
    except UserError as error:
        pytest.skip(str(error))
    yield request.param
    native_ops.use_scan_variant(None)


def _cpu_flags() -> set[str]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return set(next(line for line in lines if line.startswith("flags")).split(":")[1].split())


def _widest_variant_from_cpuinfo() -> str:
    """What CMakeLists.txt's -march levels need (x86-64-v4 / v3), read from the kernel's CPU flags."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "baseline"
    flags = _cpu_flags()
    if {"avx2", "fma", "bmi2", "f16c", "movbe"} <= flags:
        return "avx512" if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags else "avx2"
    return "baseline"


@functools.cache
def _scan_case_and_reference(case, dtype):
    """Inputs and the reference's output, computed once for every variant (the reference is the slow part)."""
    batch, dim, dstate, length, reverse, softplus, optional = case
    inputs = scan_inputs(batch, dim, dstate, length, optional, dtype, batch * 1000 + length, "cpu", softplus)
    return inputs, ops.selective_scan_reference(**inputs, delta_softplus=softplus, reverse=reverse)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", NATIVE_SCAN_CASES, ids=lambda c: "b{}_d{}_n{}_l{}_rev{}_sp{}_opt{}".format(*c))
def test_selective_scan_matches_reference(native_ops, scan_variant, case, dtype):
    inputs, expected = _scan_case_and_reference(case, dtype)
    reverse, softplus = case[4:6]
    actual = native_ops.selective_scan(**inputs, delta_softplus=softplus, reverse=reverse, num_threads=2)
    assert actual.dtype == dtype and actual.shape == inputs["u"].shape
    # The CUDA kernels' tolerances: same fp32 math in another order (and a polynomial exp, ~1 ulp).
    assert_close_to_scale(actual, expected, TOLERANCE[dtype])


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="the CPU's flags are read from Linux's /proc/cpuinfo")
@pytest.mark.skipif(bool(os.environ.get(native.SCAN_VARIANT_ENV_VAR)), reason=f"{native.SCAN_VARIANT_ENV_VAR} is set")
def test_scan_runs_the_widest_variant_this_cpu_has(native_ops):
    assert native_ops.scan_variant() == _widest_variant_from_cpuinfo()


def test_unknown_scan_variant_is_a_user_error_and_changes_nothing(native_ops):
    before = native_ops.scan_variant()
    with pytest.raises(UserError, match="'sse9': unknown CPU scan variant; the variants are avx512, avx2, baseline"):
        native_ops.use_scan_variant("sse9")
    assert native_ops.scan_variant() == before


def _run_with_variant_variable(value: str, code: str, native_dir: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh process (the library reads the variable once), with RMEETO_CPU_SCAN_VARIANT=value."""
    env = dict(os.environ, **{native.SCAN_VARIANT_ENV_VAR: value, native.DIR_ENV_VAR: str(native_dir)})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_forces_the_scan_variant(native_dir):
    library = native_dir / native.CPU_KERNELS_LIBRARY  # plain ctypes: no torch to import
    code = (
        f"import ctypes; f = ctypes.CDLL({str(library)!r}).rmeeto_cpu_scan_variant; f.restype = ctypes.c_char_p;"
        " print(f())"
    )
    assert _run_with_variant_variable("baseline", code, native_dir).stdout.strip() == "b'baseline'"
    refused = _run_with_variant_variable("sse9", code, native_dir)
    assert refused.stdout.strip() == "None"
    assert "rmeeto: error: RMEETO_CPU_SCAN_VARIANT=sse9: unknown variant" in refused.stderr


def test_wrong_environment_variable_fails_the_scan_with_a_user_error(native_dir):
    code = (
        "import torch; from rmeeto_export import native; from rmeeto_export.errors import UserError\n"
        "try: native.selective_scan(*(torch.ones(1, 2, 3),) * 2, -torch.ones(2, 4), *(torch.ones(1, 4, 3),) * 2)\n"
        "except UserError as error: print(error)"
    )
    result = _run_with_variant_variable("avx9000", code, native_dir)
    assert result.stdout.strip() == "RMEETO_CPU_SCAN_VARIANT=avx9000: unknown CPU scan variant; the variants are avx512, avx2, baseline"


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) lists the variants' symbols")
def test_scan_variants_share_no_code(native_dir):
    """Each variant's object defines its entry point alone: a shared (weak) copy of a helper compiled for
    AVX-512 could otherwise stand in for the baseline's and fault on CPUs without it."""
    objects = sorted(native_dir.glob("CMakeFiles/rmeeto_scan_block_*.dir/*.o"))
    assert objects
    for obj in objects:
        listing = subprocess.run(["nm", "-C", "--defined-only", "--extern-only", str(obj)], capture_output=True, text=True, check=True)
        variant = obj.parent.name.removeprefix("rmeeto_scan_block_").removesuffix(".dir")
        assert [line.split(" ", 2)[2] for line in listing.stdout.splitlines()] == [
            f"rmeeto_cpu::{variant}::scanBlock(rmeeto_cpu::ChannelBlock const&)"
        ]


def test_thread_count_does_not_change_the_scan(native_ops):
    inputs = scan_inputs(3, 100, 16, 76, True, torch.float32, 5, "cpu")
    one, two = (native_ops.selective_scan(**inputs, num_threads=n) for n in (1, 2))
    assert torch.equal(one, two)  # channels are independent tasks: no sum depends on the split


def test_reverse_scan_is_the_flipped_forward_scan(native_ops):
    inputs = scan_inputs(2, 96, 16, 197, True, torch.float32, 7, "cpu")
    flipped = {k: v.flip(-1) if v.dim() == 3 else v for k, v in inputs.items()}
    backward = native_ops.selective_scan(**inputs, reverse=True)
    torch.testing.assert_close(backward, native_ops.selective_scan(**flipped).flip(-1), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", NATIVE_MERGE_CASES, ids=lambda c: "b{}_t{}_c{}_r{}_cls{}".format(*c))
def test_token_merge_is_bit_exact_on_tie_free_inputs(native_ops, case, dtype):
    batch, tokens, channels, r, cls_index = case
    hidden, residual, size = tie_free_merge_inputs(batch, tokens, channels, dtype, r, cls_index)
    expected = merge_tokens(hidden, residual, size, r, cls_index)[:3]
    actual = native_ops.token_merge(hidden, residual, size, r, cls_index, num_threads=2)
    for got, want in zip(actual, expected):  # same decisions, same order of every sum: same bits
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_token_merge_breaks_exact_ties_like_the_reference(native_ops):
    hidden = torch.ones(2, 21, 16)  # identical tokens: every score ties, only the index rules decide
    residual = torch.arange(2 * 21 * 16, dtype=torch.float32).reshape(2, 21, 16)
    size = torch.ones(2, 21, 1)
    expected = merge_tokens(hidden, residual, size, 6, 10)[:3]
    for got, want in zip(native_ops.token_merge(hidden, residual, size, 6, 10), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_nan_tokens_rank_last_like_the_reference(native_ops):
    hidden, residual, size = merge_inputs(1, 31, 16, torch.float32, 3)
    hidden[0, 4] = float("nan")  # its scores are NaN, counted as -inf
    expected = merge_tokens(hidden, residual, size, 5, 15)[:3]
    for got, want in zip(native_ops.token_merge(hidden, residual, size, 5, 15), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_r_zero_returns_copies(native_ops):
    hidden, residual, size = merge_inputs(2, 9, 8, torch.float16, 0)
    for got, given in zip(native_ops.token_merge(hidden, residual, size, 0, 4), (hidden, residual, size)):
        assert torch.equal(got, given) and got.data_ptr() != given.data_ptr()


def test_bad_merge_arguments_are_user_errors(native_ops):
    hidden, residual, size = merge_inputs(1, 9, 8, torch.float32, 0)
    with pytest.raises(UserError, match="impossible"):
        native_ops.token_merge(hidden, residual, size, 5, 4)
    with pytest.raises(UserError, match="cls_index"):
        native_ops.token_merge(hidden, residual, size, 1, 9)


def test_native_backend_model_matches_the_reference_model(native_ops):
    reference = create_model("vim_t", merge_r=TINY_MERGE_R, scan_backend="reference", **TINY_VIM).eval()
    fast = with_scan_backend(reference, "native")
    images = torch.randn(2, 3, TINY_VIM["img_size"], TINY_VIM["img_size"])
    with torch.no_grad():
        expected, actual = reference(images), fast(images)
    # fp32 scans in another order through 4 blocks: 1e-5 of the logit scale, as the fp32 parity check.
    assert_close_to_scale(actual, expected, 1e-5)


def test_native_backend_leaves_autograd_and_tracing_to_the_ops(native_ops, monkeypatch):
    calls = []
    monkeypatch.setattr(native_ops, "selective_scan", lambda *a, **k: calls.append(1))
    inputs = scan_inputs(1, 8, 4, 5, True, torch.float32, 1, "cpu")
    inputs["u"].requires_grad_(True)
    ops.selective_scan(**inputs, backend="native").sum().backward()  # the op's VJP of the reference
    assert inputs["u"].grad is not None and not calls


def test_native_backend_without_the_library_is_a_user_error(monkeypatch, tmp_path):
    from rmeeto_export import native

    monkeypatch.setenv(native.DIR_ENV_VAR, str(tmp_path))
    native._load.cache_clear()
    try:
        inputs = scan_inputs(1, 8, 4, 5, True, torch.float32, 1, "cpu")
        with pytest.raises(UserError, match="make native"):
            ops.selective_scan(**inputs, backend="native")
    finally:
        native._load.cache_clear()
