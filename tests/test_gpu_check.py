"""make gpu-check's CPU-side logic: arguments, the refusal without a GPU, stage bookkeeping, JSON and table."""

import json

import pytest
import torch

from benchmarks import bench_kernels_gpu, gpu_check


def test_defaults_cover_the_vim_batches_and_write_under_build():
    args = gpu_check.parse_args([])
    assert args.batches == [1, 8, 64, 128] and args.skip == []
    assert args.out == gpu_check.REPO / "build" / "gpu-check" / "gpu_check.json"
    assert gpu_check.parse_args(["--skip", "scan", "model"]).skip == ["scan", "model"]
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--skip", "build"])  # every other stage needs the build


def test_refuses_without_a_gpu_before_doing_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out), "--build-dir", str(tmp_path / "build")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: gpu-check needs a CUDA GPU") and "nothing was built" in error
    assert not out.exists() and not (tmp_path / "build").exists()


def _fake_stages(calls):
    def build(args):
        calls.append("build")
        return {"library": "/fake/librmeeto_kernels.so"}

    def tests(args):
        calls.append("tests")
        return {"passed": 40, "failed": 0, "errors": 0, "skipped": 2, "failing": []}

    def scan(args):
        calls.append("scan")
        return [{"model": "vim_s", "dtype": "float16", "batch": b, "length": 197, "kernel_ms": 0.01 * b,
                 "gb_per_s": 1234.5, "peak_pct": 25.7, "torch_ms": 3.0, "mamba_ms": None} for b in args.batches]

    def model(args):
        raise RuntimeError("out of memory")

    return [("build", build, None), ("tests", tests, None), ("scan", scan, bench_kernels_gpu.SCAN_COLUMNS),
            ("model", model, gpu_check.MODEL_COLUMNS)]


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(gpu_check, "missing_requirements", lambda: [])
    monkeypatch.setattr(gpu_check, "gpu_description", lambda: {
        "name": "NVIDIA H200", "capability": "9.0", "torch": "2.11", "cuda": "13.0", "peak_gb_per_s": 4800.0})


def test_every_stage_lands_in_the_json_and_the_table(fake_gpu, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(gpu_check, "STAGES", _fake_stages(calls))
    out = tmp_path / "report.json"
    status = gpu_check.main(["--out", str(out), "--build-dir", str(tmp_path), "--batches", "1", "128"])
    assert status == 1  # the model stage failed
    assert calls == ["build", "tests", "scan"]
    report = json.loads(out.read_text())
    assert report["gpu"]["name"] == "NVIDIA H200"
    assert report["stages"]["tests"]["result"]["passed"] == 40
    assert [row["batch"] for row in report["stages"]["scan"]["result"]] == [1, 128]
    assert report["stages"]["model"]["error"] == "RuntimeError: out of memory"
    printed = capsys.readouterr().out
    assert "tests: ok in" in printed and "passed 40, failed 0, errors 0, skipped 2" in printed
    header = next(line for line in printed.splitlines() if "kernel_ms" in line)
    assert header.split() == bench_kernels_gpu.SCAN_COLUMNS
    assert any(line.split()[:3] == ["vim_s", "float16", "128"] and line.split()[-1] == "-" for line in printed.splitlines())
    assert "model: FAILED after" in printed and "out of memory" in printed


def test_a_failed_build_stops_the_stages_that_need_it(fake_gpu, monkeypatch, tmp_path):
    calls = []
    stages = _fake_stages(calls)

    def broken_build(args):
        raise RuntimeError("cmake --build failed")

    monkeypatch.setattr(gpu_check, "STAGES", [("build", broken_build, None)] + stages[1:])
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out), "--build-dir", str(tmp_path), "--skip", "model"]) == 1
    report = json.loads(out.read_text())["stages"]
    assert calls == [] and set(report) == {"build", "tests", "scan"}
    assert report["tests"]["error"] == "not run: the build failed"


def test_junit_counts(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_kernels" name="test_a"/>'
        '<testcase classname="tests.test_kernels" name="test_b"><failure message="x"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert gpu_check.junit_counts(report) == {
        "passed": 3, "failed": 1, "errors": 0, "skipped": 1, "failing": ["tests.test_kernels::test_b"]}


def test_format_table_aligns_columns_and_marks_missing_values():
    table = bench_kernels_gpu.format_table("title", [{"a": 1, "b": 0.123456}, {"a": 100, "b": None}], ["a", "b"])
    assert table.splitlines() == ["title", "  a       b", "  1  0.1235", "100       -"]


def test_model_rows_become_the_plain_vs_merged_figure(tmp_path):
    rows = [{"model": "vim_s", "r": 0, "batch": 128, "ms": 80.0, "images_per_s": 1600.0},
            {"model": "vim_s merged", "r": 11, "batch": 128, "ms": 56.0, "images_per_s": 2285.7}]
    line = gpu_check.throughput_plot(rows, tmp_path / "gpu_check.json")
    assert line == f"figure: {tmp_path / gpu_check.THROUGHPUT_FIGURE}"
    assert (tmp_path / gpu_check.THROUGHPUT_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert gpu_check.throughput_plot(None, tmp_path / "gpu_check.json") is None  # the model stage failed or was skipped


@pytest.mark.parametrize("value, found", [("/repo/build/ort-headers/usr/include/onnxruntime", True),
                                          ("ONNXRUNTIME_INCLUDE_DIR-NOTFOUND", False)])
def test_the_onnx_runtime_ops_are_built_only_where_cmake_found_the_headers(tmp_path, value, found):
    (tmp_path / "CMakeCache.txt").write_text(f"CMAKE_BUILD_TYPE:STRING=Release\nONNXRUNTIME_INCLUDE_DIR:PATH={value}\n")
    assert gpu_check.ort_headers_found(tmp_path) is found
