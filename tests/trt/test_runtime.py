"""Engine loading checks (CPU) and running engines (needs a GPU the engine was built for)."""

import dataclasses
import json

import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.trt.backend import Backend
from rmeeto_export.files import file_sha256
from rmeeto_export.trt.plugins import PluginSource
from rmeeto_export.trt.record import BuildRecord, read_record
from rmeeto_export.trt.runtime import Engine, check_engine_fits, plugin_library_for
from tests.support.handmade_graphs import write_custom_node_graph
from tests.support.backends import runnable_rtx_gpu


class _FakeTensorRT:
    __version__ = "1.7.1.116"


RTX = Backend("tensorrt-rtx", _FakeTensorRT)
ADA = ("NVIDIA L4", (8, 9))


def _record(**changes) -> BuildRecord:
    record = BuildRecord(
        trt_flavour="tensorrt-rtx", trt_version="1.7.1.116", target="sm89", gpu_name=None, precision="fp16",
        batch={"min": 1, "opt": 1, "max": 1}, plugins=PluginSource(None, None),
    )  # fmt: skip
    return dataclasses.replace(record, **changes)


def test_engine_that_fits():
    check_engine_fits(_record(), RTX, ADA)


@pytest.mark.parametrize("flavour, version", [("tensorrt-rtx", "1.6.0.10"), ("tensorrt", "1.7.1.116")])
def test_engine_for_another_tensorrt_is_a_user_error(flavour, version):
    with pytest.raises(UserError, match=f"built with {flavour} {version} but this process has tensorrt-rtx 1.7.1.116"):
        check_engine_fits(_record(trt_flavour=flavour, trt_version=version), RTX, ADA)


def test_engine_for_another_gpu_is_a_user_error():
    record = _record(target="sm86", gpu_name="NVIDIA RTX A6000")
    with pytest.raises(UserError, match=r"built for sm86 \(NVIDIA RTX A6000\) but this GPU is NVIDIA L4 \(sm89\)"):
        check_engine_fits(record, RTX, ADA)


def test_engine_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        check_engine_fits(_record(), RTX, None)


def test_missing_plugin_library_is_a_user_error(no_plugin_library, tmp_path):
    source = PluginSource(str(tmp_path / "gone" / "librmeeto_trt_plugins.so"), "0" * 64)
    with pytest.raises(UserError, match="needs the plugin library .*gone/librmeeto_trt_plugins.so and it is missing"):
        plugin_library_for(source, RTX)


def test_changed_plugin_library_is_a_user_error(no_plugin_library, tmp_path):
    library = tmp_path / "librmeeto_trt_plugins.so"
    library.write_bytes(b"rebuilt since")
    with pytest.raises(UserError, match="not the one the engine was built with"):
        plugin_library_for(PluginSource(str(library), "0" * 64), RTX)
    assert plugin_library_for(PluginSource(str(library), file_sha256(library)), RTX) == library


def test_plugin_library_for_another_tensorrt_is_a_user_error(no_plugin_library, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: its bindings are the ELF under test")
    import shutil

    import tensorrt_rtx_bindings

    library = tmp_path / "librmeeto_trt_plugins.so"
    shutil.copy(tensorrt_rtx_bindings.tensorrt_rtx.__file__, library)  # links libtensorrt_rtx.so.1

    class _TensorRT10:
        __version__ = "10.3.0.26"

    with pytest.raises(UserError, match="built for tensorrt-rtx 1.x but this process uses tensorrt 10.3.0.26"):
        plugin_library_for(PluginSource(str(library), file_sha256(library)), Backend("tensorrt", _TensorRT10))


def test_engine_without_build_record_is_a_user_error(tmp_path):
    (tmp_path / "model.engine").write_bytes(b"engine")
    with pytest.raises(UserError, match="no build record .*model.engine.json"):
        Engine(tmp_path / "model.engine")


def test_malformed_build_record_is_a_user_error(tmp_path):
    (tmp_path / "model.engine.json").write_text(json.dumps({"trt_flavour": "tensorrt-rtx"}))
    with pytest.raises(UserError, match="build record .* is not valid"):
        read_record(tmp_path / "model.engine")


def test_manifest_entry_passed_in_is_checked_before_loading(tmp_path):
    manifest = _record(trt_flavour="tensorrt", trt_version="0.0.0").to_json()
    with pytest.raises(UserError, match="(not installed|built with tensorrt 0.0.0)"):
        Engine(tmp_path / "model.engine", manifest=manifest)


@pytest.mark.gpu
def test_python_plugin_engine_matches_the_torch_ops(tmp_path):
    runnable_rtx_gpu()
    torch = pytest.importorskip("torch")
    kernels = pytest.importorskip("rmeeto_export.kernels")
    try:
        kernels.load_library()
    except UserError as err:
        pytest.skip(f"CUDA kernels library not built: {err}")
    from handmade_graphs import CHANNELS, CLS_INDEX, LENGTH, MERGE_R, STATES, TOKENS, WIDTH
    from rmeeto_export.models.ops import selective_scan_reference
    from rmeeto_export.merge.rmeeto import merge_tokens
    from rmeeto_export.trt import build_engine
    import onnx
    from onnx import numpy_helper

    onnx_path = write_custom_node_graph(tmp_path / "model.onnx")
    build_engine(onnx_path, tmp_path / "model.engine", backend="tensorrt-rtx", plugins="python")
    weights = {w.name: torch.from_numpy(numpy_helper.to_array(w).copy()) for w in onnx.load(str(onnx_path)).graph.initializer}
    gen = torch.Generator().manual_seed(0)
    feeds = {
        "u": torch.randn(1, CHANNELS, LENGTH, generator=gen), "delta": torch.randn(1, CHANNELS, LENGTH, generator=gen),
        "B": torch.randn(1, STATES, LENGTH, generator=gen), "C": torch.randn(1, STATES, LENGTH, generator=gen),
        "z": torch.randn(1, CHANNELS, LENGTH, generator=gen), "hidden": torch.randn(1, TOKENS, WIDTH, generator=gen),
        "residual": torch.randn(1, TOKENS, WIDTH, generator=gen), "size": torch.ones(1, TOKENS, 1),
    }  # fmt: skip
    engine = Engine(tmp_path / "model.engine")
    got = engine(**{k: v.cuda() for k, v in feeds.items()})
    torch.cuda.synchronize()
    scan_args = (feeds["u"], feeds["delta"], weights["A"], feeds["B"], feeds["C"], weights["D"], feeds["z"], weights["delta_bias"])
    expected = {
        "y_forward": selective_scan_reference(*scan_args, delta_softplus=True, reverse=False),
        "y_backward": selective_scan_reference(*scan_args, delta_softplus=True, reverse=True),
    }
    merged = merge_tokens(feeds["hidden"], feeds["residual"], feeds["size"], MERGE_R, CLS_INDEX)
    expected.update(hidden_out=merged[0], residual_out=merged[1], size_out=merged[2])
    for name, reference in expected.items():
        # fp32 kernels vs the fp32 reference: only summation order differs (9 steps, 16 states).
        torch.testing.assert_close(got[name].cpu(), reference, rtol=1e-4, atol=1e-5, msg=name)


def test_build_record_round_trips_through_a_manifest_entry_with_extra_keys():
    record = _record(plugins=PluginSource("/opt/librmeeto_trt_plugins.so", "f" * 64))
    entry = {"file": "model.engine", "from": "model.onnx", **record.to_json()}
    assert BuildRecord.from_json(json.loads(json.dumps(entry))) == record
