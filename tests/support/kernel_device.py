"""The device the kernel tests run on, and builds of plugins_trt for the tests.

``kernel_device`` gives one test body both devices: with a CUDA GPU, the CUDA build of
librmeeto_kernels.so and CUDA tensors; without one (CI), the build for the emulated device
(plugins_trt/tests/emulation, made once per session) and CPU tensors. Either way the kernels are the
same .cu sources, called through rmeeto_export.kernels.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rmeeto_export import kernels
from tests.support.backends import tensorrt_rtx_or_skip

REPO = Path(__file__).resolve().parents[2]
PLUGINS_DIR = REPO / "plugins_trt"
HAS_CMAKE = shutil.which("cmake") is not None
HAS_TOOLCHAIN = HAS_CMAKE and shutil.which("nvcc") is not None
EMULATED_BUILD_ENV_VAR = "RMEETO_EMULATED_BUILD"
# TensorRT's public headers, one folder per version (v10.3.0, v11.1); CI points this beside the clone.
TRT_HEADER_ROOTS = Path(os.environ.get("RMEETO_TRT_HEADERS_ROOT", "/opt/trt-headers"))


def cmake_build(build_dir: Path, *options: str, target: str | None = None) -> float:
    """Configure plugins_trt into build_dir and build one target (all without one); returns the seconds it took."""
    start = time.monotonic()
    subprocess.run(["cmake", "-S", str(PLUGINS_DIR), "-B", str(build_dir), *options], check=True, capture_output=True)
    jobs = os.environ.get("RMEETO_BUILD_JOBS", "2")  # CI machines have 2 shared cores
    build = ["cmake", "--build", str(build_dir), "-j", jobs] + (["--target", target] if target else [])
    subprocess.run(build, check=True, capture_output=True)
    return time.monotonic() - start


@dataclass(frozen=True)
class KernelDevice:
    """Where the kernels run: the torch device of their tensors and the library that runs them there."""

    device: torch.device
    library: Path

    @property
    def emulated(self) -> bool:
        return self.device.type == "cpu"


@pytest.fixture(scope="session")
def emulated_build(tmp_path_factory) -> Path:
    """plugins_trt built for the emulated device: librmeeto_kernels.so and rmeeto_emulation_selftest.

    $RMEETO_EMULATED_BUILD names a build to use instead (`make kernels-emulated`: build/emulated),
    e.g. one with sanitizers."""
    if os.environ.get(EMULATED_BUILD_ENV_VAR):
        return Path(os.environ[EMULATED_BUILD_ENV_VAR]).resolve()
    if not HAS_CMAKE:
        pytest.skip("cmake is needed to build the emulated kernels")
    build_dir = tmp_path_factory.mktemp("plugins_emulated")
    seconds = cmake_build(build_dir, "-DRMEETO_EMULATED_DEVICE=ON", "-DTENSORRT_ROOT=")
    print(f"plugins_trt for the emulated device built in {seconds:.1f} s")
    return build_dir


def _cuda_library(tmp_path_factory) -> Path:
    """The CUDA build `make plugins` made, if it is current, else a fresh one for this GPU."""
    built = next((path for path in kernels.library_candidates() if path.is_file()), None)
    if built is not None:
        try:
            if ctypes.CDLL(str(built)).rmeeto_kernels_emulated() == 0:
                return built
        except (OSError, AttributeError):  # built from older sources: make a fresh one
            pass
    if not HAS_TOOLCHAIN:
        pytest.skip("a GPU but no current CUDA librmeeto_kernels.so, and no cmake/nvcc to build one")
    build_dir = tmp_path_factory.mktemp("plugins_native")
    cmake_build(build_dir, "-DTENSORRT_ROOT=", "-DRMEETO_CUDA_ARCHS=native", target="rmeeto_kernels")
    return build_dir / kernels.LIBRARY_NAME


@pytest.fixture(scope="session")
def rtx_plugin_library(tmp_path_factory) -> Path:
    """librmeeto_trt_plugins.so linked against TensorRT-RTX (whose plugin ABI is TensorRT 11's) for sm75
    only, built once per session for the tests that load it; no GPU needed."""
    tensorrt_rtx_or_skip()
    if not HAS_TOOLCHAIN:
        pytest.skip("cmake and nvcc are needed to build plugins_trt")
    headers = TRT_HEADER_ROOTS / "v11.1"
    if not (headers / "include" / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT 11 headers not at {headers}/include (set RMEETO_TRT_HEADERS_ROOT)")
    build_dir = tmp_path_factory.mktemp("plugins_rtx")
    seconds = cmake_build(  # RMEETO_TENSORRT_RTX finds libtensorrt_rtx in this interpreter's tensorrt_rtx_libs
        build_dir, "-DRMEETO_TENSORRT_RTX=ON", f"-DTENSORRT_ROOT={headers}", f"-DPython3_EXECUTABLE={sys.executable}",
        "-DRMEETO_CUDA_ARCHS=75-real", target="rmeeto_trt_plugins",
    )  # fmt: skip
    print(f"librmeeto_trt_plugins.so for TensorRT-RTX built in {seconds:.1f} s")
    return build_dir / "librmeeto_trt_plugins.so"


@pytest.fixture(scope="session")
def kernel_library(request, tmp_path_factory) -> KernelDevice:
    """The real GPU when there is one, else the emulated device."""
    if torch.cuda.is_available():
        return KernelDevice(torch.device("cuda"), _cuda_library(tmp_path_factory))
    return KernelDevice(torch.device("cpu"), request.getfixturevalue("emulated_build") / kernels.LIBRARY_NAME)


@pytest.fixture
def kernel_device(kernel_library, monkeypatch) -> KernelDevice:
    """rmeeto_export.kernels loads kernel_library's library for this test (and only this test)."""
    monkeypatch.setenv(kernels.LIBRARY_ENV_VAR, str(kernel_library.library))
    kernels.load_library.cache_clear()
    if kernel_library.device.type == "cuda":
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the references' matmuls: true fp32
    yield kernel_library
    kernels.load_library.cache_clear()
