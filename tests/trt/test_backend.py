import importlib.util
import os

import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.trt import backend as backend_module
from rmeeto_export.trt.backend import ensure_rtx_unversioned_library, load_backend
from tests.support.backends import tensorrt_rtx_or_skip


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown TensorRT backend 'onnxruntime'"):
        load_backend("onnxruntime")


def _hide_modules(monkeypatch, hidden):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        backend_module.importlib.util, "find_spec", lambda name, *a: None if name in hidden else real_find_spec(name, *a)
    )


def test_no_tensorrt_installed_is_a_user_error_with_the_install_command(monkeypatch):
    _hide_modules(monkeypatch, {"tensorrt", "tensorrt_rtx"})
    with pytest.raises(UserError, match=r"no TensorRT installed: pip install 'rmeeto-export\[rtx\]'"):
        load_backend("auto")


def test_requested_backend_missing_is_a_user_error(monkeypatch):
    _hide_modules(monkeypatch, {"tensorrt"})
    with pytest.raises(UserError, match="TensorRT backend 'tensorrt' is not installed"):
        load_backend("tensorrt")


def test_auto_prefers_full_tensorrt_then_rtx(monkeypatch):
    tensorrt_rtx_or_skip()
    _hide_modules(monkeypatch, {"tensorrt"})
    chosen = load_backend("auto")
    assert chosen.flavour == "tensorrt-rtx" and chosen.is_rtx
    assert chosen.major >= 1


# TensorRT-RTX's parser dlopens "libtensorrt_rtx.so" for plugin nodes and aborts the process when
# it is missing; the wheel ships only libtensorrt_rtx.so.1 (docs/tensorrt.md#tensorrt-rtx).
def test_unversioned_rtx_library_link_is_created_once(tmp_path):
    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"library")
    link = ensure_rtx_unversioned_library(tmp_path)
    assert link == tmp_path / "libtensorrt_rtx.so"
    assert link.is_symlink() and os.readlink(link) == "libtensorrt_rtx.so.1"
    assert link.read_bytes() == b"library"
    assert ensure_rtx_unversioned_library(tmp_path) == link  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libtensorrt_rtx.so", "libtensorrt_rtx.so.1"]


def test_unversioned_rtx_library_link_failure_says_how_to_fix(tmp_path, monkeypatch):
    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"library")

    def refuse(self, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(backend_module.Path, "symlink_to", refuse)
    with pytest.raises(UserError, match=r"run: ln -s libtensorrt_rtx.so.1 .*libtensorrt_rtx.so"):
        ensure_rtx_unversioned_library(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["libtensorrt_rtx.so.1"]  # no stray temp link


def test_folder_without_rtx_library_is_left_alone(tmp_path):
    assert ensure_rtx_unversioned_library(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_loading_tensorrt_rtx_provides_the_unversioned_library():
    tensorrt_rtx_or_skip()
    load_backend("tensorrt-rtx")
    libs = backend_module._rtx_wheel_libs_dir()
    if libs is None:
        pytest.skip("TensorRT-RTX is not the pip wheel (no tensorrt_rtx_libs folder)")
    assert (libs / "libtensorrt_rtx.so").resolve() == sorted(libs.glob("libtensorrt_rtx.so.*"))[0].resolve()
