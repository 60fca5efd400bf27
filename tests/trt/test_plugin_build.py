"""Finding what a plugin build needs, the per-user cache, and `rmeeto-export plugins info|build` errors."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rmeeto_export.cli import main
from rmeeto_export.errors import UserError
from rmeeto_export.trt import plugin_build
from rmeeto_export.trt.plugin_build import (
    BUILD_INFO,
    KERNELS_LIBRARY,
    PLUGIN_LIBRARY,
    Found,
    build_plugins,
    cache_key,
    cache_root,
    find_cached_library,
    inspect_toolchain,
    plugin_sources,
    read_headers_version,
    sources_digest,
)

HEADERS_ROOT = Path(os.environ.get("RMEETO_TRT_HEADERS_ROOT", Path(__file__).resolve().parents[3] / "shared" / "trt-headers"))


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)


def headers(version):
    root = HEADERS_ROOT / version
    if not (root / "include" / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT {version} headers not at {root} (set RMEETO_TRT_HEADERS_ROOT)")
    return root


@pytest.mark.parametrize("version, expected", [("v10.3.0", "10.3.0"), ("v11.1", "11.1.0")])
def test_headers_version_follows_macro_chains(version, expected):
    assert read_headers_version(headers(version) / "include") == expected


def test_cache_honours_xdg_cache_home(tmp_path):
    assert cache_root() == tmp_path / "cache" / "rmeeto-export" / "plugins"


def test_cache_key_names_tensorrt_cuda_and_architectures():
    key = cache_key("tensorrt", "10.3.0.30", "12.6", ((8, 7),), "ab" * 32)
    assert key.startswith("tensorrt-10.3_cuda12.6_sm87_") and key.endswith("_src" + "ab" * 6)


def fake_entry(flavour, trt_version, archs, digest=None):
    folder = cache_root() / f"{flavour}-{trt_version}-{'-'.join(archs)}"
    folder.mkdir(parents=True)
    for name in (PLUGIN_LIBRARY, KERNELS_LIBRARY):
        (folder / name).write_bytes(b"\x7fELF")
    info = {"flavour": flavour, "trt_version": trt_version, "cuda_version": "12.6", "archs": archs,
            "sources_digest": digest or sources_digest(plugin_sources())}
    (folder / BUILD_INFO).write_text(json.dumps(info))
    return folder / PLUGIN_LIBRARY


def test_cached_library_must_match_tensorrt_architecture_and_sources():
    wanted = fake_entry("tensorrt", "10.3.0", ["sm87"])
    fake_entry("tensorrt", "10.4.0", ["sm87"])  # another minor version
    fake_entry("tensorrt-rtx", "10.3.0", ["sm87"])
    assert find_cached_library("tensorrt", "10.3.0.30", (8, 7)) == wanted
    assert find_cached_library("tensorrt", "10.3.0.30", (8, 6)) is None
    assert find_cached_library("tensorrt", "10.5.0", (8, 7)) is None


def test_cached_library_of_other_sources_is_not_used():
    fake_entry("tensorrt", "10.3.0", ["sm87"], digest="0" * 64)
    assert find_cached_library("tensorrt", "10.3.0", (8, 7)) is None


def test_missing_pieces_come_with_their_fix(monkeypatch):
    monkeypatch.setattr(plugin_build, "find_nvcc", lambda: None)
    monkeypatch.setattr(plugin_build, "find_headers", lambda root: None)
    monkeypatch.setattr(plugin_build, "current_gpu", lambda: None)
    toolchain = inspect_toolchain("tensorrt")
    problems = dict(toolchain.problems)
    assert not toolchain.ready
    assert "/usr/local/cuda/bin" in problems["nvcc (the CUDA compiler)"]
    assert "--tensorrt-root" in next(fix for what, fix in toolchain.problems if "headers" in what)
    assert "--arch 87" in problems["a GPU architecture to build for (no GPU visible)"]


def test_tensorrt_rtx_needs_tensorrt_11_headers():
    toolchain = inspect_toolchain("tensorrt-rtx", headers("v10.3.0"))
    assert any(what.startswith("TensorRT 11 headers (found version 10.3.0") for what, _ in toolchain.problems)


def test_plugins_info_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(plugin_build, "find_nvcc", lambda: None)
    result = CliRunner().invoke(main, ["plugins", "info", "--trt", "tensorrt-rtx", "--arch", "86"])
    assert result.exit_code == 0, result.output
    assert "archs     sm86 (--arch)" in result.output
    assert "missing: nvcc (the CUDA compiler)\n  fix: install the CUDA toolkit" in result.output
    assert "not ready" in result.output


def test_plugins_build_without_a_toolchain_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(plugin_build, "find_nvcc", lambda: None)
    result = CliRunner().invoke(main, ["plugins", "build", "--trt", "tensorrt-rtx", "--arch", "89"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot build the plugins, missing: ") and result.output.count("\n") == 1
    assert not cache_root().exists()


def test_bad_architecture_is_a_one_line_error():
    result = CliRunner().invoke(main, ["plugins", "info", "--arch", "ampere"])
    assert result.exit_code == 1 and result.output.startswith("error: target compute capability 'ampere'")


def test_failed_compile_leaves_no_cache_entry(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx)")
    toolchain = inspect_toolchain("tensorrt-rtx", headers("v11.1"), ((8, 9),))
    if toolchain.cmake is None:
        pytest.skip("cmake is needed to configure plugins_trt")
    broken = tmp_path / "nvcc"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    toolchain = dataclasses.replace(toolchain, nvcc=Found(broken, "12.6", "test"), problems=())
    with pytest.raises(UserError, match="compiling the plugins failed .*the full log is .*last-build.log"):
        build_plugins(toolchain, log=lambda _: None)
    assert [p.name for p in cache_root().iterdir()] == ["last-build.log"]


def test_jetpack_layout_is_found_and_builds_for_orin(monkeypatch, tmp_path):
    """JetPack 6: TensorRT 10.3 in /usr/lib/aarch64-linux-gnu, headers in /usr/include/aarch64-linux-gnu."""
    system = tmp_path / "usr"
    (system / "lib" / "aarch64-linux-gnu").mkdir(parents=True)
    (system / "include").mkdir()
    (system / "include" / "aarch64-linux-gnu").symlink_to(headers("v10.3.0") / "include")
    real = system / "lib" / "aarch64-linux-gnu" / "libnvinfer.so.10.3.0"
    real.write_bytes(b"\x7fELF")
    (real.parent / "libnvinfer.so.10").symlink_to(real.name)
    monkeypatch.setattr(plugin_build, "SYSTEM_PREFIX", system)
    monkeypatch.setattr(plugin_build.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(plugin_build, "_pip_libs_dir", lambda flavour: None)
    toolchain = inspect_toolchain("auto", archs=((8, 7),))
    assert toolchain.flavour == "tensorrt"
    assert toolchain.library == Found(real.parent / "libnvinfer.so.10", "10.3.0", "system")
    assert toolchain.headers.version == "10.3.0" and toolchain.headers.source == "system"
    assert not [what for what, _ in toolchain.problems if "TensorRT" in what or "libnvinfer" in what]
    jetson = dataclasses.replace(toolchain, nvcc=Found(Path("/usr/local/cuda/bin/nvcc"), "12.6", "/usr/local/cuda"),
                                 cmake=Found(Path("cmake"), "3.28.0", "PATH"))
    arguments = plugin_build._cmake_arguments(jetson, plugin_sources(), tmp_path / "build")
    assert "-DCMAKE_CUDA_ARCHITECTURES=87-real" in arguments and "-DRMEETO_TENSORRT_RTX=OFF" in arguments
    assert f"-DTENSORRT_NVINFER_LIBRARY={real.parent / 'libnvinfer.so.10'}" in arguments
