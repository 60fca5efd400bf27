import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rmeeto_export.contracts import SELECTIVE_SCAN, TOKEN_MERGE
from rmeeto_export.errors import UserError
from rmeeto_export.files import file_sha256
from rmeeto_export.trt import plugins as plugins_module
from rmeeto_export.trt.backend import Backend, load_backend
from rmeeto_export.trt.plugins import (
    PLUGIN_LIBRARY_ENV,
    PluginSource,
    check_library_matches_backend,
    elf_needed_libraries,
    find_plugin_library,
    linked_tensorrt,
    load_plugins,
)
from rmeeto_export.trt.python_plugins import accepts_type, field_values, python_plugin_creators
from tests.support.backends import tensorrt_rtx_or_skip


class _Field:
    def __init__(self, name, value):
        self.name, self.data = name, np.array([value], dtype=np.int32)


def test_field_values_fill_defaults_and_keep_given_ones():
    assert field_values([_Field("reverse", 1)], SELECTIVE_SCAN) == {"delta_softplus": 1, "reverse": 1}
    assert field_values([_Field("r", 11), _Field("cls_index", 98)], TOKEN_MERGE) == {"r": 11, "cls_index": 98}


def test_field_values_require_the_merge_schedule():
    with pytest.raises(ValueError, match="TokenMerge: missing attribute"):
        field_values([_Field("r", 11)], TOKEN_MERGE)


def test_no_library_found(no_plugin_library):
    assert find_plugin_library() is None


def test_library_from_the_environment_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(plugins_module.PLUGIN_LIBRARY_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(UserError, match="RMEETO_TRT_PLUGINS=.*missing.so is not a file"):
        find_plugin_library()


def test_library_from_the_environment(monkeypatch, tmp_path):
    library = tmp_path / "librmeeto_trt_plugins.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv(plugins_module.PLUGIN_LIBRARY_ENV, str(library))
    assert find_plugin_library() == library.resolve()


def test_plugins_on_without_the_library_is_a_user_error(no_plugin_library):
    rtx = tensorrt_rtx_or_skip()
    with pytest.raises(UserError, match="cannot build the plugins, missing: .*nvcc"):
        load_plugins(Backend("tensorrt-rtx", rtx), "on")


def test_plugins_auto_without_the_library_uses_the_python_plugins(no_plugin_library):
    rtx = tensorrt_rtx_or_skip()
    backend = Backend("tensorrt-rtx", rtx)
    assert load_plugins(backend, "auto") == PluginSource(None, None)
    creators = python_plugin_creators(rtx)
    assert [rtx.get_plugin_registry().get_creator(c.name, "1", "rmeeto") for c in creators] == list(creators)


def test_unknown_plugin_mode_is_a_user_error():
    with pytest.raises(UserError, match="unknown plugin mode 'maybe'"):
        load_plugins(None, "maybe")


def test_plugins_off_registers_nothing():
    assert load_plugins(None, "off") is None


def test_plugin_source_json_round_trip():
    for source in (PluginSource(None, None), PluginSource("/x/librmeeto_trt_plugins.so", "ab" * 32)):
        assert PluginSource.from_json(source.to_json()) == source
    assert PluginSource(None, None).to_json()["library"] == "python-plugins"


@pytest.fixture
def rtx_linked_elf():
    """A real shared library that links TensorRT-RTX: the tensorrt_rtx Python bindings."""
    tensorrt_rtx_or_skip()
    import tensorrt_rtx_bindings

    return Path(tensorrt_rtx_bindings.tensorrt_rtx.__file__)


def test_elf_needed_entries_name_the_tensorrt_a_library_links(rtx_linked_elf):
    needed = elf_needed_libraries(rtx_linked_elf)
    assert "libtensorrt_rtx.so.1" in needed and "libc.so.6" in needed
    assert linked_tensorrt(rtx_linked_elf) == ("tensorrt-rtx", 1)


def test_not_an_elf_file_links_nothing(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a library")
    assert elf_needed_libraries(text) == [] and linked_tensorrt(text) is None


class _FakeTensorRT:
    __version__ = "10.3.0.26"


def test_plugin_library_for_another_tensorrt_is_a_user_error(rtx_linked_elf, tmp_path):
    library = tmp_path / "librmeeto_trt_plugins.so"
    shutil.copy(rtx_linked_elf, library)
    with pytest.raises(UserError, match="was built for tensorrt-rtx 1.x but this process uses tensorrt 10.3.0.26"):
        check_library_matches_backend(library, Backend("tensorrt", _FakeTensorRT))
    check_library_matches_backend(library, load_backend("tensorrt-rtx"))  # same TensorRT: accepted


# In a fresh interpreter: once loaded, the library's creators stay in this process's registry and would
# take the place of the Python plugins the other tests register.
_REGISTER_LIBRARY = """
import json
from rmeeto_export.trt.backend import load_backend
from rmeeto_export.trt.plugins import find_plugin_library, linked_tensorrt, load_plugins
from rmeeto_export.trt.python_plugins import python_plugin_creators

library = find_plugin_library()
backend = load_backend(linked_tensorrt(library)[0])
source = load_plugins(backend, "on")
registry, python_creators = backend.trt.get_plugin_registry(), python_plugin_creators(backend.trt)
creators = {name: registry.get_creator(name, "1", "rmeeto") for name in ("SelectiveScan", "TokenMerge")}
print(json.dumps({"found": str(library), "loaded": source.library, "sha256": source.sha256, "ours": {
    name: creator is not None and all(creator is not python for python in python_creators)
    for name, creator in creators.items()}}))
"""


@pytest.mark.slow  # the library's build (shared with test_kernels)
@pytest.mark.trt
def test_cpp_plugin_library_registers_our_creators(rtx_plugin_library):
    """$RMEETO_TRT_PLUGINS names the library; load_plugins("on") loads it and its C++ creators are registered."""
    env = {**os.environ, PLUGIN_LIBRARY_ENV: str(rtx_plugin_library)}
    run = subprocess.run([sys.executable, "-c", _REGISTER_LIBRARY], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["found"] == result["loaded"] == str(rtx_plugin_library.resolve())
    assert result["sha256"] == file_sha256(rtx_plugin_library)
    assert result["ours"] == {"SelectiveScan": True, "TokenMerge": True}


def _types(rtx, names):
    return [getattr(rtx, name) for name in names]


@pytest.mark.parametrize(
    "plugin, names, accepted",
    [
        ("SelectiveScan", ["bfloat16"] * 2 + ["float32"] + ["bfloat16"] * 2 + ["float32", "bfloat16", "float32"], True),
        ("SelectiveScan", ["float16", "float16", "float32", "float16", "float16"], True),  # without D, z, delta_bias
        ("SelectiveScan", ["float16", "float32"], False),  # delta must share u's type
        ("SelectiveScan", ["float16", "float16", "float16"], False),  # A stays fp32
        ("TokenMerge", ["float16", "float32", "float32", "float16", "float32", "float32"], True),
        ("TokenMerge", ["int32"], False),
        ("TokenMerge", ["float16", "float16"], False),  # the residual stream stays fp32
    ],
)
def test_plugin_type_rule(plugin, names, accepted):
    rtx = tensorrt_rtx_or_skip()
    types = _types(rtx, names)
    num_inputs = (8 if len(types) > 5 else 5) if plugin == "SelectiveScan" else 3
    verdicts = [accepts_type(rtx, plugin, pos, num_inputs, types) for pos in range(len(types))]
    assert all(verdicts) == accepted
    assert accepted or not verdicts[-1]  # the last type listed is the one rejected


@pytest.mark.parametrize("num_inputs", [5, 8])
@pytest.mark.parametrize("activation", ["float32", "float16", "bfloat16"])
def test_selective_scan_output_takes_the_activation_type(num_inputs, activation):
    """y sits at position num_inputs: with 5 inputs that is position 5, D's position in an 8-input node."""
    rtx = tensorrt_rtx_or_skip()
    names = [activation] * 2 + ["float32"] + [activation] * 2 + (["float32", activation, "float32"] if num_inputs == 8 else [])
    types = _types(rtx, names + [activation])
    assert all(accepts_type(rtx, "SelectiveScan", pos, num_inputs, types) for pos in range(num_inputs + 1))
    other = "float16" if activation != "float16" else "float32"
    assert not accepts_type(rtx, "SelectiveScan", num_inputs, num_inputs, types[:-1] + _types(rtx, [other]))
