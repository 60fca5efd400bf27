"""One fresh build of plugins_trt/cpu per test session (the CPU kernels and the ONNX Runtime op
library), so the tests exercise the sources as they are, not a stale build/native."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rmeeto_export import native

REPO = Path(__file__).resolve().parents[2]
ORT_HEADERS = Path(os.environ.get("ONNXRUNTIME_INCLUDE_DIR", REPO / "build" / "ort-headers" / "usr" / "include" / "onnxruntime"))


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory) -> Path:
    """A folder with librmeeto_cpu_kernels.so and, when ONNX Runtime's headers are at hand,
    librmeeto_ort_ops.so (about 30 s on 2 cores)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is needed to build plugins_trt/cpu")
    build = tmp_path_factory.mktemp("native")
    configure = ["cmake", "-S", str(REPO / "plugins_trt" / "cpu"), "-B", str(build)]
    if (ORT_HEADERS / "onnxruntime_cxx_api.h").is_file():
        configure.append(f"-DONNXRUNTIME_INCLUDE_DIR={ORT_HEADERS}")
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", os.environ.get("RMEETO_BUILD_JOBS", "2")], check=True, capture_output=True)
    return build


@pytest.fixture()
def native_ops(native_dir, monkeypatch):
    """rmeeto_export.native loading the session's fresh build."""
    monkeypatch.setenv(native.DIR_ENV_VAR, str(native_dir))
    native._load.cache_clear()
    yield native
    native._load.cache_clear()


@pytest.fixture()
def ort_ops_library(native_ops) -> Path:
    library = native_ops.ort_ops_library()
    if library is None:
        pytest.skip(f"no ONNX Runtime headers at {ORT_HEADERS}: run `make native` (or set ONNXRUNTIME_INCLUDE_DIR)")
    return library
