"""`pip install` of the wheel, then the plugins compiled on the user's machine and an engine built with them."""

import json
from pathlib import Path

import pytest

from rmeeto_export.files import file_sha256

from .conftest import ARCH, REPO, run, wheel_names

pytestmark = pytest.mark.slow


def test_wheel_ships_the_plugin_sources(wheel):
    names = wheel_names(wheel)
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "plugins_trt").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {f"rmeeto_export/{name}" for name in sources} <= names
    assert "rmeeto_export/plugins_trt/CMakeLists.txt" in names and "rmeeto_export/trt/plugin_build.py" in names


def test_installed_package_runs_from_the_wheel_not_the_checkout(fresh_venv, wheel_env, tmp_path):
    result = run([fresh_venv / "python", "-c", "import rmeeto_export.trt.plugin_build as b; print(b.plugin_sources())"],
                 env=wheel_env, cwd=tmp_path)
    sources = Path(result.stdout.strip())
    assert result.returncode == 0, result.stderr
    assert sources.is_relative_to(fresh_venv.parent) and (sources / "CMakeLists.txt").is_file()


def test_plugins_build_compiles_into_the_per_user_cache(plugins_built, wheel_env):
    library = Path(plugins_built.stdout.strip().splitlines()[-1])
    cache = Path(wheel_env["XDG_CACHE_HOME"]) / "rmeeto-export" / "plugins"
    assert library.is_file() and library.parent.parent == cache
    assert library.parent.name.startswith("tensorrt-rtx-") and f"_sm{ARCH}_" in library.parent.name
    info = json.loads((library.parent / "build.json").read_text())
    assert info["flavour"] == "tensorrt-rtx" and info["archs"] == [f"sm{ARCH}"]
    assert info["toolchain"]["headers"]["version"].startswith("11.")


def test_plugins_build_twice_reuses_the_cache(plugins_built, fresh_venv, wheel_env, tmp_path):
    again = run([fresh_venv / "rmeeto-export", "plugins", "build", "--trt", "tensorrt-rtx", "--tensorrt-root",
                 plugins_built.args[6], "--arch", ARCH], env=wheel_env, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("already built")


def test_build_with_plugins_auto_uses_the_cpp_library(wheel_build, plugins_built):
    library = plugins_built.stdout.strip().splitlines()[-1]
    manifest = json.loads((wheel_build / "manifest.json").read_text())
    plugins = manifest["engine"]["plugins"]
    assert plugins["library"] == library  # not "python-plugins"
    for name in ("librmeeto_trt_plugins.so", "librmeeto_kernels.so"):  # the folder deploys as it is
        assert manifest["artifacts"][name]["sha256"] == file_sha256(wheel_build / name)
    assert manifest["artifacts"]["librmeeto_trt_plugins.so"]["sha256"] == plugins["sha256"]
    report = (wheel_build / "report.md").read_text()
    assert "--plugins ./librmeeto_trt_plugins.so" in report and "POLYGRAPHY_USE_TENSORRT_RTX=1" in report
