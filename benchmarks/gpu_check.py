"""Everything a GPU machine can tell us, in one command (`make gpu-check`), without installing anything.

    PYTHONPATH=. python3 -m benchmarks.gpu_check [--out build/gpu-check/gpu_check.json]

Needs a CUDA GPU, PyTorch with CUDA, cmake and nvcc; runs from the source tree. Stages:
  build   librmeeto_kernels.so for this GPU (CMAKE_CUDA_ARCHITECTURES=native) in build/gpu-check/, and
          librmeeto_ort_ops.so with its CUDA ops when ONNX Runtime's headers are in build/ort-headers
  tests   every test marked `gpu`, on those libraries (pytest -m gpu)
  scan    selective scan at Vim-S/B shapes, batch 1, 8, 64, 128: ms, GB/s, % of the GPU's peak
          bandwidth, the PyTorch reference and mamba-ssm's selective_scan_fn when importable
  merge   one token merge step at the same batches, and its share of one block's time
  model   vim_s plain vs merged (ratio 0.31, r = 11) in PyTorch on our kernels, fp16, batch 128: images/s
A failed stage is recorded and the next one runs; every figure goes to one JSON file, then a table
is printed. Exit status 1 when a stage failed, 2 when the machine cannot run the check at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Optional

try:
    import torch

    from benchmarks import bench_kernels_gpu as bench
except ModuleNotFoundError as missing:  # importing would fail anyway: say what is missing, not a traceback
    sys.exit(f"error: gpu-check needs {missing.name} in {sys.executable}; nothing was built or measured")

REPO = Path(__file__).resolve().parent.parent
TEST_TIMEOUT_S = 240  # the whole check must stay under 8 minutes on one H100/H200
MODEL_BATCH = 128
MODEL_COLUMNS = ["model", "r", "batch", "ms", "images_per_s", "speedup"]
THROUGHPUT_FIGURE = "model_throughput.png"  # beside the JSON


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check" / "gpu_check.json")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "gpu-check")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per kernel measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 128])
    parser.add_argument("--skip", nargs="+", default=[], choices=["tests", "scan", "merge", "model"],
                        help="leave stages out (the build always runs)")  # fmt: skip
    return parser.parse_args(argv)


def missing_requirements() -> list[str]:
    """What this machine lacks for the check; empty when it can run."""
    missing = [] if torch.cuda.is_available() else ["a CUDA GPU (torch.cuda.is_available() is False)"]
    return missing + [f"{tool} on PATH" for tool in ("cmake", "nvcc") if shutil.which(tool) is None]


def ort_headers_found(build_dir: Path) -> bool:
    """Whether CMake found ONNX Runtime's headers (build/ort-headers, fetched by `make native`), so that
    the ONNX Runtime op library gets its CUDA ops."""
    cache = (build_dir / "CMakeCache.txt").read_text()
    found = [line.split("=", 1)[1] for line in cache.splitlines() if line.startswith("ONNXRUNTIME_INCLUDE_DIR:")]
    return bool(found) and not found[0].endswith("NOTFOUND")


def build_kernels(args: argparse.Namespace) -> dict:
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not (args.build_dir / "CMakeCache.txt").exists() else []
    configure = ["cmake", "-S", str(REPO / "plugins_trt"), "-B", str(args.build_dir), *generator,
                 "-DCMAKE_CUDA_ARCHITECTURES=native", "-DTENSORRT_ROOT="]  # fmt: skip
    run_command(configure)
    with_ort = ort_headers_found(args.build_dir)
    targets = ["rmeeto_kernels", *(["rmeeto_ort_ops"] if with_ort else [])]
    run_command(["cmake", "--build", str(args.build_dir), "--target", *targets, "-j", str(os.cpu_count())])
    library = args.build_dir / "librmeeto_kernels.so"
    os.environ["RMEETO_KERNELS_LIB"] = str(library)  # for the tests and the measurements below
    if not with_ort:
        return {"library": str(library), "ort_ops": "not built: no ONNX Runtime headers (`make native` fetches them)"}
    from rmeeto_export import native

    os.environ[native.DIR_ENV_VAR] = str(args.build_dir)  # the tests' ONNX Runtime op library, with its CUDA ops
    return {"library": str(library), "ort_ops": str(args.build_dir / native.ORT_OPS_LIBRARY)}


def run_command(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped of a pytest JUnit XML report."""
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed, errors, skipped = (int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped"))
    failing = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]  # fmt: skip
    return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped,
            "failing": failing}  # fmt: skip


def run_gpu_tests(args: argparse.Namespace) -> dict:
    report = args.build_dir / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={report}", "tests"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    counts = junit_counts(report)
    if done.returncode != 0 or counts["failed"] or counts["errors"]:
        raise RuntimeError(f"GPU tests failed: {', '.join(counts['failing']) or done.stdout[-1500:]}")
    return counts


def bench_scan(args: argparse.Namespace) -> list[dict]:
    return bench.scan_rows(args.batches, list(bench.DTYPES), [197, 76], args.repeats, args.peak)


def bench_merge(args: argparse.Namespace) -> list[dict]:
    return bench.merge_rows(args.batches, list(bench.DTYPES), args.repeats, args.peak)


def model_throughput(args: argparse.Namespace) -> list[dict]:
    """vim_s with random weights, plain and merged, fp16, in PyTorch with our kernels behind the ops."""
    from rmeeto_export import kernels
    from rmeeto_export.models import create_model

    kernels.register_cuda_kernels()
    images = torch.randn(MODEL_BATCH, 3, 224, 224, device="cuda", dtype=torch.float16)
    rows = []
    for merge in ({}, {"merge_ratio": 0.31}):
        model = create_model("vim_s", scan_backend="reference", **merge).half().cuda().eval()
        ms = bench.median_ms(lambda: model(images), repeats=10)
        label = "vim_s merged" if merge else "vim_s"
        rows.append({"model": label, "r": model.schedule.r, "batch": MODEL_BATCH, "ms": ms, "images_per_s": MODEL_BATCH / ms * 1e3,
                     "speedup": rows[0]["ms"] / ms if rows else 1.0})  # fmt: skip
        del model
    return rows


# name, what it runs, the columns its rows print in (None: one summary line)
STAGES: list[tuple[str, Callable[[argparse.Namespace], object], Optional[list[str]]]] = [
    ("build", build_kernels, None),
    ("tests", run_gpu_tests, None),
    ("scan", bench_scan, bench.SCAN_COLUMNS),
    ("merge", bench_merge, bench.MERGE_COLUMNS),
    ("model", model_throughput, MODEL_COLUMNS),
]


def run_stages(stages, args: argparse.Namespace) -> dict:
    """Runs the stages in order; a failing stage records its error and the rest still run,
    except after a failed build, which every later stage needs."""
    results: dict = {}
    for name, run, _ in stages:
        if name in args.skip:
            continue
        if "error" in results.get("build", {}):
            results[name] = {"error": "not run: the build failed"}
            continue
        print(f"[gpu-check] {name} ...", flush=True)
        start = time.monotonic()
        try:
            with torch.inference_mode():
                results[name] = {"result": run(args)}
        except Exception as error:  # noqa: BLE001 - recorded in the report, the next stage still runs
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results[name]["seconds"] = round(time.monotonic() - start, 1)
    return results


def render(report: dict, stages) -> str:
    lines = [f"gpu-check on {report['gpu']}"]
    for name, _, columns in stages:
        stage = report["stages"].get(name)
        if stage is None:
            continue
        if "error" in stage:
            timing = f" after {stage['seconds']} s" if "seconds" in stage else ""
            lines.append(f"{name}: FAILED{timing}: {stage['error']}")
        elif columns is None:
            summary = ", ".join(f"{key} {value}" for key, value in stage["result"].items() if key != "failing")
            lines.append(f"{name}: ok in {stage['seconds']} s ({summary})")
        else:
            lines.append(bench.format_table(f"\n{name} ({stage['seconds']} s)", stage["result"], columns))
    return "\n".join(lines)


def throughput_plot(rows: Optional[list[dict]], out: Path) -> Optional[str]:
    """The plain vs merged latency/throughput figure beside the JSON; a line saying what was drawn, or why not."""
    from rmeeto_export.pipelines import figures

    if not rows:
        return None
    plt = figures.pyplot()
    if plt is None:
        return f"no figure: {figures.MISSING_MATPLOTLIB}"
    return f"figure: {figures.throughput_figure(plt, rows, out.with_name(THROUGHPUT_FIGURE))}"


def gpu_description() -> dict:
    return {"name": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "torch": torch.__version__, "cuda": torch.version.cuda, "peak_gb_per_s": bench.peak_bandwidth_gb_per_s()}  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        print(f"error: gpu-check needs {', '.join(missing)}; nothing was built or measured", file=sys.stderr)
        return 2
    gpu = gpu_description()
    args.peak = gpu["peak_gb_per_s"]
    args.build_dir.mkdir(parents=True, exist_ok=True)
    report = {"gpu": gpu, "stages": run_stages(STAGES, args)}
    from rmeeto_export.files import write_json_atomic

    write_json_atomic(args.out, report)
    print(render({**report, "gpu": f"{gpu['name']} (sm {gpu['capability']}, peak {gpu['peak_gb_per_s']} GB/s)"}, STAGES))
    print(f"\nfigures: {args.out}")
    plot = throughput_plot(report["stages"].get("model", {}).get("result"), args.out)
    if plot:
        print(plot)
    return 1 if any("error" in stage for stage in report["stages"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
