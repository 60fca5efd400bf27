"""CUDA kernels (plugins_trt/kernels), their TensorRT glue and the ctypes binding rmeeto_export.kernels.

Builds: the kernels library compiles with nvcc for the default architectures, and the plugin glue
against each TensorRT header set present, passing its CPU check. Kernels against their PyTorch
references: on a real GPU when there is one, else on the emulated device (CI), with the same test
bodies (the kernel_device fixture, tests/support/kernel_device.py). The binding's errors are
one-line UserErrors.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmeeto_export import kernels
from rmeeto_export.errors import UserError
from tests.support.kernel_device import HAS_TOOLCHAIN, PLUGINS_DIR, cmake_build
from tests.support.kernel_inputs import (
    DTYPES,
    TOLERANCE,
    assert_close_to_scale,
    merge_inputs,
    scan_inputs,
    tie_free_merge_inputs,
)

DEFAULT_ARCHS = ("75", "80", "86", "87", "89", "90")
needs_toolchain = pytest.mark.skipif(not HAS_TOOLCHAIN, reason="cmake and nvcc are needed to build plugins_trt")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Kernel tests on the kernel_device fixture: a real GPU when there is one (so `make gpu-check`, which
# runs `pytest -m gpu`, includes them), else the emulated device.
on_kernel_device = pytest.mark.gpu


@pytest.fixture(scope="module")
def default_build(tmp_path_factory) -> Path:
    """A fresh build of librmeeto_kernels.so for the default architectures (about 25 s on 2 cores)."""
    if not HAS_TOOLCHAIN:
        pytest.skip("cmake and nvcc are needed to build plugins_trt")
    build_dir = tmp_path_factory.mktemp("plugins_default")
    seconds = cmake_build(build_dir, "-DTENSORRT_ROOT=", target="rmeeto_kernels")
    print(f"librmeeto_kernels.so for the default architectures built in {seconds:.1f} s")
    return build_dir


# ---------------------------------------------------------------- CI: builds, no GPU needed


@pytest.mark.slow
@needs_toolchain
def test_kernels_library_builds_for_default_architectures(default_build):
    # What nvcc was actually asked to generate: SASS for every default target, PTX for the newest.
    flags = (default_build / "CMakeFiles" / "rmeeto_kernels.dir" / "flags.make").read_text()
    assert set(re.findall(r"\bsm_(\d+)", flags)) >= set(DEFAULT_ARCHS)
    assert re.search(rf"code=\[?compute_{DEFAULT_ARCHS[-1]}\b", flags)

    lib = ctypes.CDLL(str(default_build / kernels.LIBRARY_NAME))  # loads without a GPU: cudart is static
    lib.rmeeto_token_merge_max_r.restype = ctypes.c_int32
    lib.rmeeto_token_merge_workspace_size.restype = ctypes.c_size_t
    assert lib.rmeeto_token_merge_max_r(197) == 98  # 196 class-free tokens, 98 even-position sources
    assert lib.rmeeto_token_merge_max_r(198) == 99
    assert lib.rmeeto_token_merge_workspace_size(8, 197, 11) > 0
    assert lib.rmeeto_token_merge_workspace_size(8, 197, 99) == 0  # impossible r: no size
    assert [lib.rmeeto_selective_scan_supports_dstate(n) for n in (8, 12, 16, 32, 64)] == [1, 0, 1, 1, 1]
    assert lib.rmeeto_kernels_emulated() == 0


@pytest.mark.slow
@needs_toolchain
def test_onnxruntime_op_library_builds_with_the_cuda_ops(default_build):
    """librmeeto_ort_ops.so as plugins_trt builds it: the CPU ops plus the CUDA execution provider's, on
    the kernels just built. Here it is compiled, linked and registered in a CPU session; the CUDA ops
    themselves need onnxruntime-gpu and a GPU."""
    import onnxruntime as ort

    configured = (default_build / "CMakeCache.txt").read_text()
    if "ONNXRUNTIME_INCLUDE_DIR:PATH=ONNXRUNTIME_INCLUDE_DIR-NOTFOUND" in configured:
        pytest.skip("ONNX Runtime headers not found: `make native` fetches them into build/ort-headers")
    subprocess.run(["cmake", "--build", str(default_build), "--target", "rmeeto_ort_ops", "-j", "2"], check=True, capture_output=True)
    flags = (default_build / "cpu" / "ort" / "CMakeFiles" / "rmeeto_ort_ops.dir" / "flags.make").read_text()
    assert "RMEETO_ORT_WITH_CUDA" in flags
    library = default_build / "librmeeto_ort_ops.so"
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert kernels.LIBRARY_NAME in needed and "librmeeto_cpu_kernels.so" in needed
    ort.SessionOptions().register_custom_ops_library(str(library))  # RegisterCustomOps with both providers


@pytest.mark.slow
@pytest.mark.trt
@needs_toolchain
def test_plugin_library_builds_a_tensorrt_rtx_engine(rtx_plugin_library):
    """librmeeto_trt_plugins.so linked against TensorRT-RTX (whose plugin ABI is TensorRT 11's), registered by
    dlopen and then by load_library, builds an engine, ahead of time and without a GPU, from ONNX with a
    TokenMerge and two SelectiveScan nodes (8 and 5 inputs; fp16, fp32, bf16): parser attributes, shapes,
    formats, serialisation."""
    rtx_libs = Path(importlib.util.find_spec("tensorrt_rtx_libs").submodule_search_locations[0])
    if not (rtx_libs / "libtensorrt_rtx.so").exists():
        pytest.skip(f"the parser dlopens {rtx_libs}/libtensorrt_rtx.so, which the wheel lacks: symlink it to .so.1")
    script = PLUGINS_DIR / "tests" / "build_rtx_engine.py"
    run = subprocess.run([sys.executable, str(script), str(rtx_plugin_library)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["static_creators"] == [["SelectiveScan", "1"], ["TokenMerge", "1"]]  # dlopen alone registers
    assert report["loaded"] and report["creators"] == report["static_creators"]  # load_library on top: no duplicates
    assert report["outputs"]["hidden_out"] == {"shape": [2, 186, 384], "dtype": "HALF"}  # 197 - r tokens
    assert report["outputs"]["size_out"] == {"shape": [2, 186, 1], "dtype": "FLOAT"}
    assert report["outputs"]["y2"] == {"shape": [2, 64, 197], "dtype": "BF16"}
    assert report["engine_bytes"] > 0


@pytest.mark.slow
@needs_toolchain
def test_c_api_rejects_bad_arguments_before_any_launch(default_build, monkeypatch):
    """Through the binding's own ctypes declarations (a wrong argument count would raise TypeError).
    Fake device pointers are never dereferenced: validation refuses first, or, without a GPU, the launch
    fails and comes back as a status instead of a crash."""
    monkeypatch.setenv(kernels.LIBRARY_ENV_VAR, str(default_build / kernels.LIBRARY_NAME))
    kernels.load_library.cache_clear()
    try:
        lib = kernels.load_library()
        fake = 256
        scan = lambda dtype, dstate, u: lib.rmeeto_selective_scan_fwd(  # noqa: E731
            dtype, 1, 4, dstate, 5, u, fake, fake, fake, fake, None, None, None, 1, 0, fake, None
        )
        assert scan(0, 16, None) == 1  # INVALID_ARGUMENT: u missing
        assert scan(0, 12, fake) == 2  # UNSUPPORTED: d_state 12
        assert scan(7, 16, fake) == 2  # UNSUPPORTED: unknown dtype
        workspace = lib.rmeeto_token_merge_workspace_size(2, 197, 11)
        merge = lambda r, cls_index, workspace_bytes: lib.rmeeto_token_merge(  # noqa: E731
            0, 2, 197, 8, r, cls_index, *[fake] * 7, workspace_bytes, None
        )
        assert merge(99, 98, workspace) == 1  # r above the 98 sources
        assert merge(11, 197, workspace) == 1  # class token outside the sequence
        assert merge(11, 98, workspace - 1) == 3  # WORKSPACE_TOO_SMALL
        if not torch.cuda.is_available():
            assert scan(1, 16, fake) == 4 and merge(11, 98, workspace) == 4  # CUDA_ERROR: no device
            # The failed launch's cudaError_t, although the call has already cleared cudaGetLastError().
            assert re.fullmatch(r"CUDA kernel launch failed: cudaError\w+: .+", lib.rmeeto_status_string(4).decode())
        assert "workspace" in lib.rmeeto_status_string(3).decode()
    finally:
        kernels.load_library.cache_clear()


# ---------------------------------------------------------------- binding errors


def test_missing_library_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv(kernels.LIBRARY_ENV_VAR, str(tmp_path / "nowhere.so"))
    kernels.load_library.cache_clear()
    try:
        with pytest.raises(UserError, match="not found.*make plugins"):
            kernels.load_library()
    finally:
        kernels.load_library.cache_clear()


def test_registering_the_cuda_kernels_needs_the_library(monkeypatch, tmp_path):
    monkeypatch.setenv(kernels.LIBRARY_ENV_VAR, str(tmp_path / "nowhere.so"))
    kernels.load_library.cache_clear()
    try:
        with pytest.raises(UserError, match="not found"):  # never a silent fallback to the reference
            kernels.register_cuda_kernels()
    finally:
        kernels.load_library.cache_clear()


@on_kernel_device
def test_tensors_off_the_kernels_device_are_a_user_error(kernel_device):
    assert kernels.emulated() == kernel_device.emulated
    wanted = "emulated CUDA kernels need CPU tensors" if kernel_device.emulated else "CUDA kernels need CUDA tensors"
    u = torch.zeros(1, 4, 5, device="meta")
    with pytest.raises(UserError, match=wanted):
        kernels.selective_scan(u, u, torch.zeros(4, 16), torch.zeros(1, 16, 5), torch.zeros(1, 16, 5))
    hidden = torch.zeros(1, 5, 4, device=kernel_device.device)
    with pytest.raises(UserError, match="size is on meta"):
        kernels.token_merge(hidden, hidden, torch.ones(1, 5, 1, device="meta"), 1, 2)


def test_bad_shapes_are_a_user_error():
    u = torch.zeros(1, 4, 5)
    with pytest.raises(UserError, match="A must have shape"):
        kernels.selective_scan(u, u, torch.zeros(3, 16), torch.zeros(1, 16, 5), torch.zeros(1, 16, 5))
    hidden = torch.zeros(1, 5, 4)
    with pytest.raises(UserError, match="size must have shape"):
        kernels.token_merge(hidden, hidden, torch.ones(1, 5, 4), 1, 2)


# ---------------------------------------------------------------- kernels vs references (GPU or emulated)

# Sized for both devices: the emulated one runs a CUDA thread's step in about 0.3 us.
SCAN_CASES = [
    # batch, dim, d_state, length, reverse, delta_softplus, optional inputs (D, z, delta_bias)
    (1, 192, 16, 197, False, True, True),  # Vim-Ti, one image
    (1, 384, 16, 197, True, True, True),  # Vim-S width, backward direction
    (128, 32, 16, 20, False, True, True),  # batch 128
    (3, 100, 16, 76, True, True, True),  # channels not a multiple of the 32 per block
    (2, 64, 16, 131, False, False, False),  # odd length, no softplus, no optional inputs
    (5, 40, 8, 1, True, True, True),  # one step
    (4, 48, 32, 65, False, True, True),
    (2, 36, 64, 33, True, True, False),
]
# Full Vim shapes, where only a real GPU is fast enough.
GPU_SCAN_CASES = [
    (1, 768, 16, 197, False, True, True),  # Vim-S, one image
    (8, 1536, 16, 197, True, True, True),  # Vim-B, backward direction
    (64, 384, 16, 120, False, True, True),
    (128, 384, 16, 197, True, True, True),
]


def _check_scan(case, dtype, device):
    from rmeeto_export.models.ops import selective_scan_reference

    batch, dim, dstate, length, reverse, softplus, optional = case
    inputs = scan_inputs(batch, dim, dstate, length, optional, dtype, batch * 1000 + length, device, softplus)
    expected = selective_scan_reference(**inputs, delta_softplus=softplus, reverse=reverse)
    actual = kernels.selective_scan(**inputs, delta_softplus=softplus, reverse=reverse)
    assert actual.dtype == dtype and actual.shape == inputs["u"].shape and actual.device == device
    assert_close_to_scale(actual, expected, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "case",
    SCAN_CASES + (GPU_SCAN_CASES if torch.cuda.is_available() else []),
    ids=lambda c: "b{}_d{}_n{}_l{}_rev{}_sp{}_opt{}".format(*c),
)
@on_kernel_device
def test_selective_scan_matches_reference(kernel_device, case, dtype):
    _check_scan(case, dtype, kernel_device.device)


# selective_scan.cu stages time in chunks of 64 steps for d_state <= 16 and of 32 above.
def _scan_chunk(dstate: int) -> int:
    return 64 if dstate <= 16 else 32


@on_kernel_device
def test_selective_scan_every_dstate_around_chunk_bounds(kernel_device):
    """Every d_state the C API accepts, at lengths around its chunk: one short of it, exactly one
    chunk, one over, and two chunks plus one, in both directions."""
    lib = kernels.load_library()
    accepted = [n for n in range(1, 257) if lib.rmeeto_selective_scan_supports_dstate(n)]
    assert accepted == [8, 16, 32, 64]
    for dstate in accepted:
        chunk = _scan_chunk(dstate)
        for length, reverse in ((chunk - 1, False), (chunk, True), (chunk + 1, False), (2 * chunk + 1, True)):
            _check_scan((2, 40, dstate, length, reverse, True, True), torch.float32, kernel_device.device)


@on_kernel_device
def test_reverse_scan_is_the_flipped_forward_scan(kernel_device):
    inputs = scan_inputs(2, 64, 16, 131, True, torch.float32, 7, kernel_device.device)
    flipped = {k: v.flip(-1) if v.dim() == 3 else v for k, v in inputs.items()}
    backward = kernels.selective_scan(**inputs, reverse=True)
    forward_of_flipped = kernels.selective_scan(**flipped, reverse=False)
    torch.testing.assert_close(backward, forward_of_flipped.flip(-1), rtol=0, atol=0)  # same math, mirrored


def _assert_merge_is_the_reference(hidden, residual, size, r, cls_index, device):
    """Bit for bit, every dtype: both sides form the same rounded products x * size in fp32, add them
    in position order, divide once and round once to hidden's dtype."""
    from rmeeto_export.merge.rmeeto import merge_tokens

    expected = merge_tokens(hidden, residual, size, r, cls_index)[:3]  # CPU: sums in position order
    actual = kernels.token_merge(hidden.to(device), residual.to(device), size.to(device), r, cls_index)
    assert [tuple(t.shape) for t in actual] == [tuple(t.shape) for t in expected]
    assert actual[0].dtype == hidden.dtype and actual[0].device == device
    for name, got, want in zip(("hidden", "residual", "size"), actual, expected):
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


MERGE_CASES = [
    # batch, tokens, channels, r, cls_index
    (1, 197, 384, 11, 98),  # Vim-S, first merge; class token in the middle
    (3, 76, 100, 5, 0),  # class token first
    (2, 31, 64, 7, 30),  # class token last, channels not a multiple of the 32 lanes
    (2, 31, 64, 15, 11),  # largest r for an odd token count (15 sources)
    (2, 64, 32, 32, 20),  # largest r for an even token count: every source merges
    (128, 13, 32, 3, 6),  # batch 128
    (2, 40, 1537, 9, 20),  # wide tokens: one source per scoring block
    (1, 3, 8, 1, 1),  # smallest merge
]
GPU_MERGE_CASES = [
    (8, 186, 768, 11, 93),  # Vim-B, second merge
    (64, 87, 192, 11, 43),  # Vim-Ti shapes late in the network
    (3, 198, 64, 99, 50),  # even token count: every source merges
    (128, 197, 384, 11, 98),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "case",
    MERGE_CASES + (GPU_MERGE_CASES if torch.cuda.is_available() else []),
    ids=lambda c: "b{}_t{}_c{}_r{}_cls{}".format(*c),
)
@on_kernel_device
def test_token_merge_matches_reference_on_tie_free_inputs(kernel_device, case, dtype):
    batch, tokens, channels, r, cls_index = case
    hidden, residual, size = tie_free_merge_inputs(batch, tokens, channels, dtype, r, cls_index)
    _assert_merge_is_the_reference(hidden, residual, size, r, cls_index, kernel_device.device)


# Three directions whose cosines (1, 1/2, 0, -1/4, ...) and normalised entries (0, +-1/2) are exact in
# fp32 whatever the summation order, so equal scores are equal on both sides.
TIE_PROTOTYPES = torch.zeros(3, 16)
TIE_PROTOTYPES[0, [0, 1, 2, 3]] = 1.0
TIE_PROTOTYPES[1, [0, 1, 4, 5]] = 1.0
TIE_PROTOTYPES[2, [0, 6, 7, 8]] = torch.tensor([-1.0, 1.0, 1.0, 1.0])


@on_kernel_device
@pytest.mark.parametrize("cls_index", [0, 10, 20])
@pytest.mark.parametrize("r", [1, 6, 10])
def test_token_merge_breaks_exact_ties_like_the_reference(kernel_device, r, cls_index):
    """Tokens along three directions, scaled by powers of two: many sources tie for their best
    destination and for their rank, so the lowest-index tie-breaks decide, and the averages differ."""
    g = torch.Generator().manual_seed(r * 100 + cls_index)
    scale = 2.0 ** torch.randint(-2, 3, (2, 21, 1), generator=g)
    hidden = TIE_PROTOTYPES[torch.randint(0, 3, (2, 21), generator=g)] * scale
    residual = torch.randn(2, 21, 16, generator=g)
    size = 0.5 + 3 * torch.rand(2, 21, 1, generator=g)
    _assert_merge_is_the_reference(hidden, residual, size, r, cls_index, kernel_device.device)


@on_kernel_device
def test_token_merge_of_identical_tokens(kernel_device):
    # Every score equal: only the tie-breaks decide.
    hidden = torch.ones(2, 21, 16)
    residual = torch.arange(2 * 21 * 16, dtype=torch.float32).reshape(2, 21, 16)
    _assert_merge_is_the_reference(hidden, residual, torch.ones(2, 21, 1), 6, 10, kernel_device.device)


@on_kernel_device
def test_r_zero_returns_copies(kernel_device):
    hidden, residual, size = (t.to(kernel_device.device) for t in merge_inputs(2, 9, 8, torch.float16, 0))
    out = kernels.token_merge(hidden, residual, size, 0, 4)
    for got, given in zip(out, (hidden, residual, size)):
        assert torch.equal(got, given) and got.data_ptr() != given.data_ptr()


@on_kernel_device
def test_c_api_with_r_zero_is_an_identity(kernel_device):
    """The op's contract for r = 0 (what the TensorRT plugin relies on): outputs equal the inputs bit
    for bit, although (x * size) / size is not always x for sizes that are not integers."""
    lib = kernels.load_library()
    device = kernel_device.device
    hidden, residual, size = (t.to(device) for t in merge_inputs(2, 9, 64, torch.float32, 0))
    outputs = [torch.empty_like(t) for t in (hidden, residual, size)]
    workspace_bytes = lib.rmeeto_token_merge_workspace_size(2, 9, 0)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream().cuda_stream if device.type == "cuda" else None
    status = lib.rmeeto_token_merge(
        0, 2, 9, 64, 0, 4, *(t.data_ptr() for t in (hidden, residual, size, *outputs, workspace)), workspace_bytes, stream
    )
    assert status == 0, lib.rmeeto_status_string(status).decode()
    for got, given in zip(outputs, (hidden, residual, size)):
        torch.testing.assert_close(got, given, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["reverse", "random:1"])
def test_kernels_agree_in_other_thread_orders(kernel_device, monkeypatch, order):
    """The emulator runs threads between barriers in this order instead of forward: a missing barrier
    or a shared-memory race that forward order happens to hide shows here."""
    if not kernel_device.emulated:
        pytest.skip("the thread order is the emulated device's setting")
    monkeypatch.setenv("RMEETO_EMULATION_ORDER", order)
    for dtype in DTYPES:
        _check_scan((2, 40, 16, 65, True, True, True), dtype, kernel_device.device)
        _check_scan((2, 36, 64, 33, False, True, False), dtype, kernel_device.device)
    for batch, tokens, channels, r, cls_index in [(2, 31, 64, 7, 30), (2, 40, 1537, 9, 20)]:
        hidden, residual, size = tie_free_merge_inputs(batch, tokens, channels, torch.float32, r, cls_index)
        _assert_merge_is_the_reference(hidden, residual, size, r, cls_index, kernel_device.device)


@needs_gpu  # the ops' CUDA dispatch
@pytest.mark.gpu
def test_registered_ops_run_the_kernels(kernel_device):
    kernels.register_cuda_kernels()
    inputs = scan_inputs(2, 64, 16, 50, True, torch.float16, 3, kernel_device.device)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    via_op = torch.ops.rmeeto.selective_scan(*args, True, False)
    direct = kernels.selective_scan(*args, delta_softplus=True, reverse=False)
    assert torch.equal(via_op, direct)

    hidden, residual, size = (t.cuda() for t in merge_inputs(2, 21, 32, torch.float32, 1))
    via_op = torch.ops.rmeeto.token_merge(hidden, residual, size, 4, 10)
    direct = kernels.token_merge(hidden, residual, size, 4, 10)
    assert all(torch.equal(a, b) for a, b in zip(via_op, direct))
