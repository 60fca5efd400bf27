"""The emulated CUDA device itself (plugins_trt/tests/emulation): what it reports and what it computes.

rmeeto_emulation_selftest runs one small kernel per case (selftest.cu); the kernel tests in
test_kernels.py trust the emulation only as far as these checks show it catches what a GPU would.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support.kernel_device import PLUGINS_DIR

EMULATION_DIR = PLUGINS_DIR / "tests" / "emulation"
ORDERS = ["forward", "reverse", "random:1", "random:2"]


def _selftest(emulated_build, case: str, order: str = "forward") -> subprocess.CompletedProcess:
    env = {**os.environ, "RMEETO_EMULATION_ORDER": order}
    return subprocess.run(
        [str(emulated_build / "rmeeto_emulation_selftest"), case], capture_output=True, text=True, env=env, timeout=60
    )


def _values(run: subprocess.CompletedProcess) -> list[float]:
    assert run.returncode == 0, run.stdout + run.stderr
    return [float(v) for v in run.stdout.split()]


@pytest.mark.parametrize("order", ORDERS)
def test_block_reduction_is_right_in_every_thread_order(emulated_build, order):
    # Inputs (i % 97) / 4 are exact, and so are their partial sums: the order of additions cannot show.
    expected = [sum((i % 97) * 0.25 for i in range(block * 256, (block + 1) * 256)) for block in range(4)]
    assert _values(_selftest(emulated_build, "block_sum", order)) == expected


def test_a_missing_barrier_changes_the_result_with_thread_order(emulated_build):
    """Each thread reads its neighbour's shared value with no barrier in between: the result depends
    on which ran first, and a value not yet written reads as the NaN poison."""
    results = {order: _values(_selftest(emulated_build, "missing_barrier", order)) for order in ORDERS}
    written = [float(i + 1) for i in range(255)]
    forward, reverse = results["forward"], results["reverse"]
    assert all(math.isnan(v) for v in forward[:-1]) and forward[-1] == 0.0  # i ran before i + 1 wrote: poison
    assert reverse[:-1] == written and math.isnan(reverse[-1])  # each neighbour ran first, but for thread 0
    assert results["random:1"] != results["random:2"]
    assert len({tuple(map(str, r)) for r in results.values()}) == len(ORDERS)


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "divergent_barrier",
            r"kernel divergentBarrier block \(0,0,0\) thread \(\d+,0,0\): __syncthreads reached by only some "
            r"threads of the block: thread \(\d+,0,0\) has exited",
        ),
        ("shuffle_after_exit", r"kernel shuffleAfterExit block \(0,0,0\) thread \(0,0,0\): shuffle mask 0xffffffff "
         r"names lane 16, which has exited"),
        ("divergent_shuffle", r"kernel divergentShuffle block \(0,0,0\) thread \(0,0,0\): shuffle mask 0xffffffff "
         r"names lane 16, which has diverged \(it waits at __syncthreads\)"),
        ("too_much_shared", r"kernel tooMuchShared block \(0,0,0\) thread \(0,0,0\): __shared__ big@\d+ takes the "
         r"block's shared memory to 53248 static \+ 0 dynamic bytes, over 49152"),
        ("block_too_large", r"kernel noop: a block of 32 x 33 x 1 threads is over the limit of 1024"),
        ("grid_too_large", r"kernel noop: grid dimension y = 65536 is outside 1\.\.65535"),
    ],
)  # fmt: skip
def test_what_a_gpu_would_reject_fails_the_launch_naming_kernel_and_thread(emulated_build, case, message):
    run = _selftest(emulated_build, case)
    assert run.returncode == 3, run.stdout + run.stderr  # the launch's cudaGetLastError() was an error
    assert run.stdout.startswith("cudaErrorLaunchFailure: rmeeto CUDA emulation: ")
    assert re.search(message, run.stdout), run.stdout
    assert "rmeeto CUDA emulation" in run.stderr  # also said where a test runner shows it


def test_a_partial_warp_mask_is_legal(emulated_build):
    # Lanes 0-15 shuffle among themselves (mask 0xffff, width 16) while 16-31 skip the shuffle.
    assert _values(_selftest(emulated_build, "half_warp_shuffle")) == [0.0] * 16


def test_a_cuda_feature_it_does_not_emulate_is_a_compile_error(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    kernel = tmp_path / "vote.cu"
    kernel.write_text("__global__ void vote(int* out) { out[threadIdx.x] = __ballot_sync(0xffffffffu, 1); }\n")
    rewritten = tmp_path / "vote.cpp"
    subprocess.run([sys.executable, str(EMULATION_DIR / "rewrite.py"), str(kernel), str(rewritten)], check=True)
    compile_ = subprocess.run(
        [compiler, "-std=c++17", "-fsyntax-only", "-include", str(EMULATION_DIR / "cuda_emulation.h"), str(rewritten)],
        capture_output=True,
        text=True,
    )
    assert compile_.returncode != 0
    assert "rmeeto CUDA emulation: __ballot_sync is not emulated" in compile_.stderr
    assert f"{kernel}:1" in compile_.stderr  # #line: the message points at the .cu source
