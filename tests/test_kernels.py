"""CUDA kernels (plugins_trt/kernels), their TensorRT glue and the ctypes binding rmeeto_export.kernels.

Without a GPU: the kernels library compiles with nvcc for the default architectures, the plugin glue
compiles against each TensorRT header set present and passes its CPU check, and the binding's
errors are one-line UserErrors. With a GPU: each kernel against its PyTorch reference.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rmeeto_export import kernels
from rmeeto_export.errors import UserError

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DIR = REPO / "plugins_trt"
TRT_HEADER_ROOTS = Path(os.environ.get("RMEETO_TRT_HEADERS_ROOT", "/opt/trt-headers"))
DEFAULT_ARCHS = ("75", "80", "86", "87", "89", "90")
HAS_TOOLCHAIN = shutil.which("cmake") is not None and shutil.which("nvcc") is not None
needs_toolchain = pytest.mark.skipif(not HAS_TOOLCHAIN, reason="cmake and nvcc are needed to build plugins_trt")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cmake_build(build_dir: Path, *options: str, target: str) -> float:
    """Configure plugins_trt into build_dir and build one target; returns the seconds it took."""
    start = time.monotonic()
    subprocess.run(["cmake", "-S", str(PLUGINS_DIR), "-B", str(build_dir), *options], check=True, capture_output=True)
    jobs = os.environ.get("RMEETO_BUILD_JOBS", "2")  # CI machines have 2 shared cores
    subprocess.run(["cmake", "--build", str(build_dir), "--target", target, "-j", jobs], check=True, capture_output=True)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def default_build(tmp_path_factory) -> Path:
    """A fresh build of librmeeto_kernels.so for the default architectures (about 25 s on 2 cores)."""
    if not HAS_TOOLCHAIN:
        pytest.skip("cmake and nvcc are needed to build plugins_trt")
    build_dir = tmp_path_factory.mktemp("plugins_default")
    seconds = _cmake_build(build_dir, "-DTENSORRT_ROOT=", target="rmeeto_kernels")
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


@pytest.mark.slow
@needs_toolchain
@pytest.mark.parametrize("version", ["v10.3.0", "v11.1"])
def test_plugin_glue_compiles_and_passes_cpu_check(tmp_path, version):
    """Compiles the IPluginV3 glue against one TensorRT header set (no libnvinfer needed) and runs
    plugins_trt/tests/plugin_glue_check.cpp: creators, attributes, clone, types, formats, workspace."""
    headers = TRT_HEADER_ROOTS / version
    if not (headers / "include" / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT {version} headers not at {headers} (set RMEETO_TRT_HEADERS_ROOT)")
    _cmake_build(
        tmp_path, f"-DTENSORRT_ROOT={headers}", "-DRMEETO_TRT_COMPILE_ONLY=ON", "-DRMEETO_CUDA_ARCHS=75-real",
        target="rmeeto_plugin_glue_check",
    )  # fmt: skip
    check = subprocess.run([str(tmp_path / "rmeeto_plugin_glue_check")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert check.stdout.strip().endswith("0 failed")


@pytest.mark.slow
@pytest.mark.trt
@needs_toolchain
def test_plugin_library_builds_a_tensorrt_rtx_engine(tmp_path):
    """Links librmeeto_trt_plugins.so against TensorRT-RTX (whose plugin ABI is TensorRT 11's), registers it by
    dlopen and then by load_library, and builds an engine, ahead of time and without a GPU, from ONNX with a
    TokenMerge and two SelectiveScan nodes (8 and 5 inputs; fp16, fp32, bf16): parser attributes, shapes,
    formats, serialisation."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")
    headers = TRT_HEADER_ROOTS / "v11.1" / "include"
    if not (headers / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT 11 headers not at {headers} (set RMEETO_TRT_HEADERS_ROOT)")
    rtx_libs = Path(importlib.util.find_spec("tensorrt_rtx_libs").submodule_search_locations[0])
    if not (rtx_libs / "libtensorrt_rtx.so").exists():
        pytest.skip(f"the parser dlopens {rtx_libs}/libtensorrt_rtx.so, which the wheel lacks: symlink it to .so.1")
    _cmake_build(  # RMEETO_TENSORRT_RTX finds libtensorrt_rtx in this interpreter's tensorrt_rtx_libs
        tmp_path, "-DRMEETO_TENSORRT_RTX=ON", f"-DTENSORRT_ROOT={headers.parent}", f"-DPython3_EXECUTABLE={sys.executable}",
        "-DRMEETO_CUDA_ARCHS=75-real", target="rmeeto_trt_plugins",
    )  # fmt: skip
    script = PLUGINS_DIR / "tests" / "build_rtx_engine.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "librmeeto_trt_plugins.so")], capture_output=True, text=True
    )
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


# ---------------------------------------------------------------- binding errors, no GPU needed


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


def test_cpu_tensors_are_a_user_error():
    u = torch.zeros(1, 4, 5)
    with pytest.raises(UserError, match="CUDA tensors"):
        kernels.selective_scan(u, u, torch.zeros(4, 16), torch.zeros(1, 16, 5), torch.zeros(1, 16, 5))
    hidden = torch.zeros(1, 5, 4)
    with pytest.raises(UserError, match="CUDA tensors"):
        kernels.token_merge(hidden, hidden, torch.ones(1, 5, 1), 1, 2)


def test_bad_shapes_are_a_user_error():
    u = torch.zeros(1, 4, 5)
    with pytest.raises(UserError, match="A must have shape"):
        kernels.selective_scan(u, u, torch.zeros(3, 16), torch.zeros(1, 16, 5), torch.zeros(1, 16, 5))
    hidden = torch.zeros(1, 5, 4)
    with pytest.raises(UserError, match="size must have shape"):
        kernels.token_merge(hidden, hidden, torch.ones(1, 5, 4), 1, 2)


# ---------------------------------------------------------------- GPU: kernels vs references


@pytest.fixture(scope="module")
def gpu_kernels(tmp_path_factory):
    """The kernels library: the one `make plugins` built, else a fresh build for this GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    kernels.load_library.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        try:
            kernels.load_library()
        except UserError:
            if not HAS_TOOLCHAIN:
                pytest.skip("no librmeeto_kernels.so and no cmake/nvcc to build it")
            build_dir = tmp_path_factory.mktemp("plugins_native")
            _cmake_build(build_dir, "-DTENSORRT_ROOT=", "-DRMEETO_CUDA_ARCHS=native", target="rmeeto_kernels")
            patch.setenv(kernels.LIBRARY_ENV_VAR, str(build_dir / kernels.LIBRARY_NAME))
            kernels.load_library.cache_clear()
            kernels.load_library()
        patch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the references' matmuls: true fp32
        yield kernels
    kernels.load_library.cache_clear()


# Largest |error| allowed, as a fraction of the output's largest |value|. fp32: both sides do the same
# fp32 math in another order (the kernel uses exp2 with a pre-scaled A), about 1e-6 over 197 steps.
# fp16 / bf16: both compute in fp32 and round the output once, so up to one output ulp (2^-11, 2^-8)
# plus a rounding flip on either side: two ulps.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}

SCAN_CASES = [
    # batch, dim, d_state, length, reverse, delta_softplus, optional inputs (D, z, delta_bias)
    (1, 768, 16, 197, False, True, True),  # Vim-S, one image
    (8, 1536, 16, 197, True, True, True),  # Vim-B, backward direction
    (64, 384, 16, 120, False, True, True),
    (3, 100, 16, 76, True, True, True),  # channels not a multiple of the 32 per block
    (2, 64, 16, 131, False, False, False),  # odd length, no softplus, no optional inputs
    (5, 40, 8, 1, True, True, True),
    (4, 48, 32, 65, False, True, True),
    (2, 36, 64, 33, True, True, False),
]


def _scan_inputs(batch, dim, dstate, length, optional, dtype, seed, softplus=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, device="cuda")  # noqa: E731
    act = lambda t: t.to(dtype)  # noqa: E731
    # Without softplus, delta itself is the step: keep it positive, or exp(dt * A) > 1 and the states explode.
    delta = 0.5 * randn(batch, dim, length) if softplus else 0.1 + 0.4 * randn(batch, dim, length).sigmoid()
    inputs = dict(
        u=act(randn(batch, dim, length)),
        delta=act(delta),
        A=-torch.exp(0.5 * randn(dim, dstate)),  # Vim's A = -exp(A_log): decaying states
        B=act(randn(batch, dstate, length)),
        C=act(randn(batch, dstate, length)),
    )
    if optional:
        inputs.update(D=randn(dim), z=act(randn(batch, dim, length)), delta_bias=0.1 * randn(dim))
    return inputs


def _assert_close_to_scale(actual, expected, tolerance):
    scale = expected.float().abs().max().clamp_min(1e-6)
    error = (actual.float() - expected.float()).abs().max()
    assert error <= tolerance * scale, f"max |error| {error:.3g} > {tolerance:.2g} x output scale {scale:.3g}"


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SCAN_CASES, ids=lambda c: "b{}_d{}_n{}_l{}_rev{}_sp{}_opt{}".format(*c))
def test_selective_scan_matches_reference(gpu_kernels, case, dtype):
    from rmeeto_export.models.ops import selective_scan_reference

    batch, dim, dstate, length, reverse, softplus, optional = case
    inputs = _scan_inputs(batch, dim, dstate, length, optional, dtype, seed=batch * 1000 + length, softplus=softplus)
    expected = selective_scan_reference(**inputs, delta_softplus=softplus, reverse=reverse)
    actual = gpu_kernels.selective_scan(**inputs, delta_softplus=softplus, reverse=reverse)
    assert actual.dtype == dtype and actual.shape == inputs["u"].shape
    _assert_close_to_scale(actual, expected, TOLERANCE[dtype])


@needs_gpu
@pytest.mark.gpu
def test_reverse_scan_is_the_flipped_forward_scan(gpu_kernels):
    inputs = _scan_inputs(2, 96, 16, 197, True, torch.float32, seed=7)
    flipped = {k: v.flip(-1) if v.dim() == 3 else v for k, v in inputs.items()}
    backward = gpu_kernels.selective_scan(**inputs, reverse=True)
    forward_of_flipped = gpu_kernels.selective_scan(**flipped, reverse=False)
    torch.testing.assert_close(backward, forward_of_flipped.flip(-1), rtol=0, atol=0)  # same math, mirrored


def _merge_inputs(batch, tokens, channels, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, tokens, channels, generator=g).to(dtype)
    residual = torch.randn(batch, tokens, channels, generator=g)
    size = torch.randint(1, 4, (batch, tokens, 1), generator=g).float()  # integer sizes add exactly
    return hidden, residual, size


def _decision_margin(hidden, cls_index, r):
    """Smallest gap, in float64, that decides the reference's matching: best vs second-best destination
    of every source, and the r-th vs (r+1)-th ranked source. Tie-free inputs have a clear margin."""
    free = torch.cat([hidden[:, :cls_index], hidden[:, cls_index + 1 :]], 1).double()
    metric = torch.nn.functional.normalize(free, dim=-1)
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)
    margin = float("inf")
    if scores.shape[-1] > 1:
        top2 = scores.topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min().item()
    best = scores.max(-1).values.sort(dim=-1, descending=True).values
    if 0 < r < best.shape[-1]:
        margin = min(margin, (best[:, r - 1] - best[:, r]).min().item())
    return margin


MERGE_CASES = [
    # batch, tokens, channels, r, cls_index
    (1, 197, 384, 11, 98),  # Vim-S, first merge
    (8, 186, 768, 11, 93),  # Vim-B, second merge
    (64, 87, 192, 11, 43),  # Vim-Ti shapes late in the network
    (3, 76, 100, 5, 0),  # class token first
    (2, 31, 64, 7, 30),  # class token last, odd channels per warp stride
    (3, 198, 64, 99, 50),  # even token count: every source merges
    (2, 40, 1537, 9, 20),  # wide tokens: one source per scoring block
    (1, 3, 8, 1, 1),  # smallest merge
]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", MERGE_CASES, ids=lambda c: "b{}_t{}_c{}_r{}_cls{}".format(*c))
def test_token_merge_matches_reference_on_tie_free_inputs(gpu_kernels, case, dtype):
    from rmeeto_export.merge.rmeeto import merge_tokens

    batch, tokens, channels, r, cls_index = case
    for seed in range(200):
        hidden, residual, size = _merge_inputs(batch, tokens, channels, dtype, seed)
        # 1e-5 is about 100x the fp32 rounding of a cosine summed in another order.
        if _decision_margin(hidden, cls_index, r) > 1e-5:
            break
    else:
        pytest.fail("no tie-free input found")
    expected = merge_tokens(hidden, residual, size, r, cls_index)[:3]  # CPU: deterministic sums
    actual = gpu_kernels.token_merge(hidden.cuda(), residual.cuda(), size.cuda(), r, cls_index)
    new_cls = (cls_index * (tokens - r)) // tokens

    assert [tuple(t.shape) for t in actual] == [tuple(t.shape) for t in expected]
    assert actual[0].dtype == dtype
    # Sizes are sums of integers: equal exactly iff every token got the same sources.
    torch.testing.assert_close(actual[2].cpu(), expected[2], rtol=0, atol=0)
    _assert_close_to_scale(actual[1].cpu(), expected[1], 1e-6)  # a different match would be O(1) off
    _assert_close_to_scale(actual[0].cpu(), expected[0], TOLERANCE[dtype] if dtype != torch.float32 else 1e-6)
    for got, want in zip(actual, expected):  # the class token passes through bit-exact
        torch.testing.assert_close(got[:, new_cls].cpu(), want[:, new_cls], rtol=0, atol=0)


@needs_gpu
@pytest.mark.gpu
def test_token_merge_breaks_exact_ties_like_the_reference(gpu_kernels):
    from rmeeto_export.merge.rmeeto import merge_tokens

    # Identical tokens: every score is equal, so only the lowest-index tie-breaks decide.
    hidden = torch.ones(2, 21, 16)
    residual = torch.arange(2 * 21 * 16, dtype=torch.float32).reshape(2, 21, 16)
    size = torch.ones(2, 21, 1)
    expected = merge_tokens(hidden, residual, size, 6, 10)[:3]
    actual = gpu_kernels.token_merge(hidden.cuda(), residual.cuda(), size.cuda(), 6, 10)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=0)


@needs_gpu
@pytest.mark.gpu
def test_r_zero_returns_copies(gpu_kernels):
    hidden, residual, size = (t.cuda() for t in _merge_inputs(2, 9, 8, torch.float16, 0))
    out = gpu_kernels.token_merge(hidden, residual, size, 0, 4)
    for got, given in zip(out, (hidden, residual, size)):
        assert torch.equal(got, given) and got.data_ptr() != given.data_ptr()


@needs_gpu
@pytest.mark.gpu
def test_registered_ops_run_the_kernels(gpu_kernels):
    gpu_kernels.register_cuda_kernels()
    inputs = _scan_inputs(2, 64, 16, 50, True, torch.float16, seed=3)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    via_op = torch.ops.rmeeto.selective_scan(*args, True, False)
    direct = gpu_kernels.selective_scan(*args, delta_softplus=True, reverse=False)
    assert torch.equal(via_op, direct)

    hidden, residual, size = (t.cuda() for t in _merge_inputs(2, 21, 32, torch.float32, 1))
    via_op = torch.ops.rmeeto.token_merge(hidden, residual, size, 4, 10)
    direct = gpu_kernels.token_merge(hidden, residual, size, 4, 10)
    assert all(torch.equal(a, b) for a, b in zip(via_op, direct))
