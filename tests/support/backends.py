"""TensorRT backends for the tests: what is installed, the skip reasons, and the backend fixtures."""

from __future__ import annotations

import importlib.util

import pytest

RTX_MISSING = "TensorRT-RTX not installed (pip install tensorrt-rtx; CI installs it)"
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
HAS_TENSORRT = HAS_RTX or importlib.util.find_spec("tensorrt") is not None

# For test modules that build engines: `pytestmark = needs_rtx`.
needs_rtx = [pytest.mark.trt, pytest.mark.skipif(not HAS_RTX, reason=RTX_MISSING)]


def tensorrt_rtx_or_skip():
    """The tensorrt_rtx module, or a skip saying how to install it."""
    return pytest.importorskip("tensorrt_rtx", reason=RTX_MISSING)


def runnable_rtx_gpu() -> tuple:
    """(name, compute capability) of the CUDA GPU here, or a skip: none, or one TensorRT-RTX cannot build for."""
    from rmeeto_export.trt.targets import current_gpu

    gpu = current_gpu()
    if gpu is None:
        pytest.skip("no CUDA GPU: running an engine needs one")
    rtx = tensorrt_rtx_or_skip()
    if getattr(rtx.ComputeCapability, f"SM{gpu[1][0]}{gpu[1][1]}", None) is None:
        pytest.skip(f"TensorRT-RTX {rtx.__version__} cannot build for this GPU ({gpu[0]}, sm{gpu[1][0]}{gpu[1][1]})")
    return gpu


@pytest.fixture(scope="session")
def rtx():
    """TensorRT-RTX with our Python plugins registered: it builds engines on this GPU-less machine."""
    tensorrt_rtx_or_skip()
    from rmeeto_export.trt import load_backend
    from rmeeto_export.trt.plugins import register_python_plugins

    backend = load_backend("tensorrt-rtx")
    register_python_plugins(backend)
    return backend


@pytest.fixture
def no_plugin_library(monkeypatch, tmp_path):
    """No $RMEETO_TRT_PLUGINS, no build/ folder, an empty per-user cache and no CUDA compiler to fill it."""
    from rmeeto_export import libraries
    from rmeeto_export.trt import plugin_build
    from rmeeto_export.trt.plugins import PLUGIN_LIBRARY_ENV

    monkeypatch.delenv(PLUGIN_LIBRARY_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(libraries, "SOURCE_ROOT", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(plugin_build, "find_nvcc", lambda: None)
