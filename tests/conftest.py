"""Fixtures shared across the test folders."""

import pytest


@pytest.fixture(scope="session")
def rtx():
    """TensorRT-RTX with our Python plugins registered: it builds engines on this GPU-less machine."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx; CI installs it)")
    from rmeeto_export.trt import load_backend
    from rmeeto_export.trt.plugins import register_python_plugins

    backend = load_backend("tensorrt-rtx")
    register_python_plugins(backend)
    return backend
