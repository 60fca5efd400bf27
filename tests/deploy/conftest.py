"""The package as a user gets it: a wheel installed into a fresh virtual environment.

The environment reuses this interpreter's installed dependencies through a .pth line (installing
torch again would take minutes), but imports rmeeto_export only from the wheel: a .pth path line
does not run the editable install's own .pth hooks, and the commands run outside the checkout.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.native_build import ORT_HEADERS

REPO = Path(__file__).resolve().parents[2]
# What the wheel is built from (setup.py copies plugins_trt/ into the package).
PACKAGE_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "rmeeto_export", "plugins_trt")
HEADERS_ROOT = Path(os.environ.get("RMEETO_TRT_HEADERS_ROOT", REPO.parent / "shared" / "trt-headers"))
TRT11_HEADERS = HEADERS_ROOT / "v11.1"
# One architecture keeps the compile short; sm89 is TensorRT-RTX's target without a GPU.
ARCH = "89"


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the package files (pip builds in the source tree; the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in PACKAGE_FILES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    dist = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-q", "-w", dist])
    assert built.returncode == 0, built.stderr
    (wheel_file,) = dist.glob("*.whl")
    return wheel_file


def wheel_names(wheel_file: Path) -> set[str]:
    with zipfile.ZipFile(wheel_file) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="session")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed (not editable); returns its bin/ folder."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(purelib) / "reuse_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", wheel], cwd=root)
    assert installed.returncode == 0, installed.stderr
    return root / "bin"


def toolchain_skip_reason() -> str | None:
    """Why the plugin library cannot be compiled here, or None."""
    if importlib.util.find_spec("tensorrt_rtx") is None:
        return "TensorRT-RTX not installed (pip install tensorrt-rtx; CI installs it)"
    if shutil.which("nvcc") is None or shutil.which("cmake") is None:
        return "nvcc and cmake are needed to compile the plugins"
    if not (TRT11_HEADERS / "include" / "NvInferRuntime.h").is_file():
        return f"TensorRT 11 headers not at {TRT11_HEADERS} (set RMEETO_TRT_HEADERS_ROOT)"
    return None


@pytest.fixture(scope="session")
def wheel_env(fresh_venv, tmp_path_factory) -> dict[str, str]:
    """Environment of the fresh venv's commands: their own per-user cache, no plugin or native library
    or headers configured."""
    configured = ("RMEETO_TRT_PLUGINS", "TENSORRT_ROOT", "RMEETO_NATIVE_DIR", "ONNXRUNTIME_INCLUDE_DIR")
    env = {key: value for key, value in os.environ.items() if key not in configured}
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    env["PATH"] = f"{fresh_venv}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture(scope="session")
def plugins_built(fresh_venv, wheel_env, tmp_path_factory) -> subprocess.CompletedProcess:
    """`rmeeto-export plugins build` from the installed wheel, against the TensorRT 11 headers."""
    reason = toolchain_skip_reason()
    if reason:
        pytest.skip(reason)
    result = run([fresh_venv / "rmeeto-export", "plugins", "build", "--trt", "tensorrt-rtx",
                  "--tensorrt-root", TRT11_HEADERS, "--arch", ARCH, "--jobs", os.environ.get("RMEETO_BUILD_JOBS", "2")],
                 env=wheel_env, cwd=tmp_path_factory.mktemp("cwd"))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="session")
def wheel_build(fresh_venv, wheel_env, plugins_built, tmp_path_factory) -> Path:
    """The README's vim_t build with `--plugins auto`, run by the installed wheel; returns the folder."""
    work = tmp_path_factory.mktemp("wheel-build")
    result = run([fresh_venv / "rmeeto-export", "build", "--model", "vim_t", "--ratio", "0.14", "--trt", "tensorrt-rtx",
                  "--plugins", "auto", "--target-cc", f"sm{ARCH}", "--parity-samples", "2", "--out", work / "out"], env=wheel_env, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "out"


@pytest.fixture(scope="session")
def native_built(fresh_venv, wheel_env, tmp_path_factory) -> subprocess.CompletedProcess:
    """`rmeeto-export native build` from the installed wheel, with the ONNX Runtime headers of the checkout."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is needed to compile the native ops")
    if not (ORT_HEADERS / "onnxruntime_cxx_api.h").is_file():
        pytest.skip(f"no ONNX Runtime headers at {ORT_HEADERS} (`make native` fetches them; CI has them), and "
                    "without them `native build` would fetch them from the network")
    result = run([fresh_venv / "rmeeto-export", "native", "build", "--onnxruntime-include", ORT_HEADERS,
                  "--jobs", os.environ.get("RMEETO_BUILD_JOBS", "2")], env=wheel_env, cwd=tmp_path_factory.mktemp("cwd"))
    assert result.returncode == 0, result.stdout + result.stderr
    return result
