"""`rmeeto-export native info|build`: where the native ops' cache entry is, where ONNX Runtime's headers
come from, and the build's cache handling, on a fake CMake (the real compile is tests/deploy's)."""

import dataclasses
import json
import platform
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rmeeto_export import native, native_build
from rmeeto_export.cli import main
from rmeeto_export.cmake_build import Found, plugin_sources, sources_digest
from rmeeto_export.errors import UserError

# A CMake that compiles nothing: configure notes whether it was given ONNX Runtime's headers, --build
# makes the libraries CMakeLists.txt would make (the ONNX Runtime one only with headers) and logs each call.
FAKE_CMAKE = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
if [ "$1" = "--build" ]; then
  [ -n "$FAKE_CMAKE_FAIL" ] && { echo "error: the compiler broke"; exit 1; }
  touch "$2/librmeeto_cpu_kernels.so"
  [ -f "$2/with-ort" ] && touch "$2/librmeeto_ort_ops.so"
  exit 0
fi
mkdir -p "$4"
case "$*" in *-DONNXRUNTIME_INCLUDE_DIR=*) touch "$4/with-ort";; esac
"""


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """An empty per-user cache, no configured headers or libraries, and no build/native to find."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in (native.DIR_ENV_VAR, native_build.HEADERS_ENV_VAR, "CXX", native.SCAN_VARIANT_ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(native, "_SOURCE_ROOT", tmp_path / "no-checkout")
    monkeypatch.setattr(native_build, "SYSTEM_HEADERS", ())
    monkeypatch.chdir(tmp_path)
    native._load.cache_clear()
    yield
    native._load.cache_clear()


def make_headers(folder: Path, api_version: int = 21) -> Path:
    folder.mkdir(parents=True)
    (folder / "onnxruntime_cxx_api.h").write_text("// test\n")
    (folder / "onnxruntime_c_api.h").write_text(f"#define ORT_API_VERSION {api_version}\n")
    return folder


@pytest.fixture()
def fake_toolchain(monkeypatch, tmp_path):
    """The real discovery with CMake replaced by FAKE_CMAKE; returns (toolchain without headers, calls file)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    cmake = tools / "cmake"
    cmake.write_text(FAKE_CMAKE)
    cmake.chmod(0o755)
    monkeypatch.setattr(native_build, "find_cmake", lambda: Found(cmake, "3.28.0", "test"))
    monkeypatch.setattr(native_build, "fetch_headers", lambda log_file: None)  # as without apt-get or network
    toolchain = native_build.inspect_toolchain()
    if toolchain.compiler is None:
        pytest.skip("no C++ compiler (c++) on PATH to be found")
    return toolchain, tools / "calls"


def build(toolchain, **kwargs) -> list[str]:
    lines = []
    native_build.build_native(toolchain, log=lines.append, **kwargs)
    return "\n".join(lines).splitlines()


def compiles(calls: Path) -> int:
    return sum(line.startswith("--build") for line in calls.read_text().splitlines()) if calls.exists() else 0


def test_cache_entry_is_keyed_by_machine_and_sources(tmp_path):
    entry = native.cache_entry()
    digest = sources_digest(plugin_sources(), native.SOURCE_PATTERNS)
    assert entry == tmp_path / "cache" / "rmeeto-export" / "native" / f"{platform.machine()}_src{digest[:12]}"
    assert native.library_dirs()[-1] == entry == native.user_cache_dir() / entry.name


def test_digest_covers_the_cpu_sources_and_kernel_headers_only(tmp_path):
    copy = tmp_path / "plugins_trt"
    shutil.copytree(plugin_sources(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = sources_digest(copy, native.SOURCE_PATTERNS)
    for changed, counts in (("cpu/threads.cpp", True), ("kernels/rmeeto_types.h", True), ("CMakeLists.txt", False)):
        with open(copy / changed, "a") as stream:
            stream.write("\n// changed\n")
        after = sources_digest(copy, native.SOURCE_PATTERNS)
        assert (after != before) == counts, changed
        before = after


def test_libraries_in_the_cache_entry_are_found_and_the_hints_name_both_builds():
    assert native.find_library(native.CPU_KERNELS_LIBRARY) is None
    native.cache_entry().mkdir(parents=True)
    (native.cache_entry() / native.ORT_OPS_LIBRARY).write_bytes(b"\x7fELF")
    assert native.ort_ops_library() == native.cache_entry() / native.ORT_OPS_LIBRARY
    for hint in (native.ABSENT_NOTE, native.BUILD_HINT):
        assert "`rmeeto-export native build`" in hint and "`make native`" in hint


def test_headers_come_from_the_option_the_variable_the_cache_then_the_system(monkeypatch, tmp_path):
    system = make_headers(tmp_path / "system", 20)
    monkeypatch.setattr(native_build, "SYSTEM_HEADERS", (system,))
    assert native_build.find_headers(None) == Found(system, "C API 20", "system")
    fetched = make_headers(native.user_cache_dir() / native_build.FETCHED_HEADERS)
    assert native_build.find_headers(None) == Found(fetched, "C API 21", "fetched into the cache")
    variable = make_headers(tmp_path / "variable")
    monkeypatch.setenv(native_build.HEADERS_ENV_VAR, str(variable))
    assert native_build.find_headers(None).source == native_build.HEADERS_ENV_VAR
    option = make_headers(tmp_path / "option")
    assert native_build.find_headers(option) == Found(option, "C API 21", "--onnxruntime-include")


@pytest.mark.parametrize("command", ["build", "info"])
def test_named_headers_that_are_not_there_are_a_one_line_error(command, tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "missing", "not a folder"), (tmp_path / "empty", "no onnxruntime_cxx_api.h there")):
        result = CliRunner().invoke(main, ["native", command, "--onnxruntime-include", str(folder)])
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"error: --onnxruntime-include {folder}: {message}") and result.output.count("\n") == 1
    assert not native.user_cache_dir().exists()


def test_a_wrong_headers_variable_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(native_build.HEADERS_ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(UserError, match=f"^{native_build.HEADERS_ENV_VAR} .*missing: not a folder"):
        native_build.inspect_toolchain()


def test_no_cmake_or_no_compiler_is_a_one_line_error_and_leaves_no_cache(monkeypatch):
    monkeypatch.setattr(native_build, "find_cmake", lambda: None)
    monkeypatch.setenv("CXX", "no-such-compiler++")
    result = CliRunner().invoke(main, ["native", "build"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: cannot build the native ops, missing: CMake 3.25 or newer (fix: pip install")
    assert "a C++ compiler (CXX=no-such-compiler++ not found) (fix: install one" in result.output
    assert not native.user_cache_dir().exists()


def test_info_says_what_a_build_would_use(tmp_path):
    headers = make_headers(tmp_path / "headers")
    result = CliRunner().invoke(main, ["native", "info", "--onnxruntime-include", str(headers)])
    assert result.exit_code == 0, result.output
    assert f"headers   C API 21 at {headers} (--onnxruntime-include)\n" in result.output
    assert f"cache     {native.cache_entry()}: nothing built yet\n" in result.output
    assert f"loads     {native.ABSENT_NOTE}\n" in result.output
    assert f"sources   {plugin_sources() / 'cpu'}\n" in result.output


def test_info_json_says_the_same(tmp_path):
    headers = make_headers(tmp_path / "headers")
    result = CliRunner().invoke(main, ["native", "info", "--onnxruntime-include", str(headers), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["onnxruntime_headers"]["path"] == str(headers) and info["onnxruntime_headers"]["version"] == "C API 21"
    assert info["cache_entry"] == str(native.cache_entry()) and info["built_libraries"] == []
    assert info["up_to_date"] is False and info["loads"] is None and info["scan_variant"] is None
    assert info["sources"] == str(plugin_sources() / "cpu")


def test_info_without_cmake_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(native_build, "find_cmake", lambda: None)
    result = CliRunner().invoke(main, ["native", "info"])
    assert result.exit_code == 0, result.output
    assert "cmake     not found\n" in result.output and "headers   ONNX Runtime's not found: " in result.output
    assert "missing: CMake 3.25 or newer\n  fix: pip install 'cmake>=3.25'\n" in result.output
    assert result.output.endswith("not ready: fix the above, then run `rmeeto-export native build`\n")


def test_without_headers_the_cpu_kernels_are_built_and_the_note_says_how_to_add_the_ort_library(fake_toolchain):
    toolchain, calls = fake_toolchain
    lines = build(toolchain)
    entry = native.cache_entry()
    assert native_build.ORT_NEEDS_HEADERS in lines and lines[-1] == f"built: {entry}"
    assert "--onnxruntime-include DIR" in native_build.ORT_NEEDS_HEADERS
    assert sorted(p.name for p in entry.iterdir()) == ["build.json", native.CPU_KERNELS_LIBRARY]
    assert json.loads((entry / "build.json").read_text())["libraries"] == [native.CPU_KERNELS_LIBRARY]
    assert native.find_library(native.CPU_KERNELS_LIBRARY) == entry / native.CPU_KERNELS_LIBRARY
    again = build(toolchain)  # tries the fetch again; still no headers: nothing to add
    assert again[-2:] == [f"already built: {entry}", native_build.ORT_NEEDS_HEADERS] and compiles(calls) == 1


def test_headers_given_later_rebuild_the_entry_with_the_ort_library(fake_toolchain, tmp_path):
    toolchain, calls = fake_toolchain
    build(toolchain)
    with_headers = dataclasses.replace(toolchain, headers=Found(make_headers(tmp_path / "headers"), "C API 21", "test"))
    assert build(with_headers)[-1] == f"built: {native.cache_entry()}"
    assert json.loads((native.cache_entry() / "build.json").read_text())["libraries"] == [
        native.CPU_KERNELS_LIBRARY, native.ORT_OPS_LIBRARY]
    assert build(with_headers) == [f"already built: {native.cache_entry()}"] and compiles(calls) == 2
    assert build(with_headers, force=True)[-1] == f"built: {native.cache_entry()}" and compiles(calls) == 3
    assert [p.name for p in native.user_cache_dir().iterdir() if p.name.startswith(".")] == []


def test_a_failed_compile_leaves_no_cache_entry(fake_toolchain, monkeypatch):
    toolchain, _ = fake_toolchain
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(UserError, match=r"^compiling the native ops failed \(error: the compiler broke\); the full log is .*last-build.log$"):
        build(toolchain)
    assert [p.name for p in native.user_cache_dir().iterdir()] == ["last-build.log"]


def test_a_failed_rebuild_keeps_the_entry_there_was(fake_toolchain, monkeypatch):
    toolchain, _ = fake_toolchain
    build(toolchain)
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(UserError, match="compiling the native ops failed"):
        build(toolchain, force=True)
    assert native_build.read_entry(native.cache_entry())["libraries"] == [native.CPU_KERNELS_LIBRARY]


def fake_fetch_script(monkeypatch, tmp_path, then: str) -> None:
    """A fetch_headers.sh that unpacks headers (C API 22) under its relative destination $1, then runs `then`."""
    sources = tmp_path / "cpu"
    (sources / "ort").mkdir(parents=True)
    (sources / "ort" / "fetch_headers.sh").write_text(
        'mkdir -p "$1/usr/include/onnxruntime" && echo "#define ORT_API_VERSION 22" > "$1/usr/include/onnxruntime/onnxruntime_c_api.h"'
        f' && touch "$1/usr/include/onnxruntime/onnxruntime_cxx_api.h"\n{then}\n')
    monkeypatch.setattr(native_build, "sources", lambda: sources)
    native.user_cache_dir().mkdir(parents=True)


def test_fetch_runs_the_script_in_the_cache_and_finds_what_it_unpacked(monkeypatch, tmp_path):
    fake_fetch_script(monkeypatch, tmp_path, then="exit 0")
    found = native_build.fetch_headers(native.user_cache_dir() / "log")
    assert found == Found(native.user_cache_dir() / native_build.FETCHED_HEADERS, "C API 22", "fetched into the cache")
    assert native_build.find_headers(None) == found


def test_a_fetch_that_fails_halfway_leaves_no_headers(monkeypatch, tmp_path):
    fake_fetch_script(monkeypatch, tmp_path, then='echo "dpkg-deb: error: unexpected end of file"; exit 2')
    assert native_build.fetch_headers(native.user_cache_dir() / "log") is None
    assert sorted(p.name for p in native.user_cache_dir().iterdir()) == ["log"]
    assert native_build.find_headers(None) is None
