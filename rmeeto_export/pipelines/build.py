"""The `build` job: load -> (re-train) -> merge schedule -> ONNX -> parity -> TensorRT engine.

Every stage reads and writes files in one output folder, each written atomically, so any stage
can be re-run alone (`rmeeto-export export`, `rmeeto-export verify`) and a failed stage leaves
no partial file. manifest.json records the build settings (enough to rebuild the PyTorch model),
tool versions, stage timings and the sha256 of every artifact; report.md summarises it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from rmeeto_export.calibration.collect import DEFAULT_NUM_IMAGES
from rmeeto_export.errors import UserError, first_line
from rmeeto_export.files import file_sha256, write_bytes_atomic, write_json_atomic
from rmeeto_export.merge.schedule import MergeSchedule
from rmeeto_export.models import Vim, create_model, load_weights
from rmeeto_export.pipelines.retrain import RetrainConfig, retrain

MANIFEST = "manifest.json"
SCHEDULE = "schedule.json"
ONNX = "model.onnx"
PORTABLE_ONNX = "model.portable.onnx"
PARITY = "parity.json"
ENGINE = "model.engine"
REPORT = "report.md"
MANIFEST_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
INT8_PARITY_IMAGES = 64  # see int8_parity_inputs

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the artifacts; stored in the manifest so stages can re-run alone."""

    model: str = "vim_b"
    ratio: Optional[float] = None
    r: Optional[int] = None
    weights: Optional[str] = None
    use_ema: bool = False
    precision: str = "fp32"
    batch: int = 1
    seed: int = 0  # random weights (no --weights) and parity inputs
    parity_samples: int = 8
    trt: str = "auto"
    plugins: str = "auto"
    target_cc: Optional[str] = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # create_model overrides (small test models)
    data: Optional[str] = None  # ImageFolder root: re-train the merged model first
    epochs: int = RetrainConfig.epochs
    batch_size: int = RetrainConfig.batch_size
    calib_data: Optional[str] = None  # images for INT8 calibration (a folder, or an ImageFolder's train/)
    calib_num: int = DEFAULT_NUM_IMAGES
    calib_method: str = "percentile"

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    @property
    def export_precision(self) -> str:
        """INT8 graphs are the fp32 export with Q/DQ inserted around the linear layers."""
        return "fp32" if self.int8 else self.precision

    def graph_name(self, portable: bool) -> str:
        """The graph a stage consumes: the INT8 twin when building INT8."""
        from rmeeto_export.calibration import int8_name

        name = PORTABLE_ONNX if portable else ONNX
        return int8_name(name) if self.int8 else name

    @property
    def random_weights(self) -> bool:
        return self.weights is None


class ParityFailure(UserError):
    """Outputs differ beyond the precision's tolerance; parity.json and the report are written."""


class BuildFailure(UserError):
    """A stage failed on valid input (an exporter or TensorRT error); the message names the stage."""


def check_config(config: BuildConfig) -> None:
    if config.precision not in PRECISIONS:
        raise UserError(f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if config.batch < 1:
        raise UserError(f"batch must be at least 1, got {config.batch}")
    if config.parity_samples < 1:
        raise UserError(f"parity samples must be at least 1, got {config.parity_samples}")
    if config.ratio is not None and config.r is not None:
        raise UserError("give --ratio or --r, not both")
    if config.data is not None and config.weights is None:
        raise UserError("--data re-trains a checkpoint (it is also the distillation teacher): add --weights")
    if config.int8 and config.calib_data is None:
        raise UserError("--precision int8 needs calibration images: add --calib-data DIR")


def check_out_dir(out: Path) -> None:
    """Fail before any slow stage if ``out`` cannot be created or written; create nothing yet.

    The folder itself is made by the first artifact written, so bad input (a missing or
    mismatched weights file) leaves no folder behind.
    """
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write to output folder {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output folder {out}: {existing} is not writable")


def load_model(config: BuildConfig) -> Vim:
    """The merged PyTorch model: checkpoint weights, or seeded random weights."""
    torch.manual_seed(config.seed)
    model = create_model(config.model, merge_ratio=config.ratio, merge_r=config.r, **config.overrides)
    if config.weights is not None:
        load_weights(model, config.weights, use_ema=config.use_ema)
    return model.eval()


def parity_inputs(model: Vim, config: BuildConfig) -> torch.Tensor:
    """(samples, 3, H, W) seeded images with ImageNet-normalised statistics."""
    size = model.cfg.img_size
    generator = torch.Generator().manual_seed(config.seed + 1)
    return torch.randn(config.parity_samples, model.cfg.in_chans, size, size, generator=generator)


def versions() -> dict[str, Optional[str]]:
    def version_of(package: str) -> Optional[str]:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    packages = ("torch", "onnx", "onnxruntime", "onnxscript", "tensorrt", "tensorrt-rtx", "rmeeto-export")
    return {"python": platform.python_version(), **{p: version_of(p) for p in packages}}


class Manifest:
    """manifest.json of an output folder: config, stage records, artifacts with their sha256."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out = out
        self.data = data

    @classmethod
    def new(cls, out: Path, config: BuildConfig) -> "Manifest":
        return cls(out, {
            "manifest_version": MANIFEST_VERSION,
            "config": dataclasses.asdict(config),
            "random_weights": config.random_weights,
            "stages": {},
            "artifacts": {},
        })

    @classmethod
    def read(cls, out: Path) -> "Manifest":
        path = out / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{out} has no {MANIFEST}: run `rmeeto-export build --out {out}` first") from None
        except ValueError as err:
            raise UserError(f"{path} is not valid JSON ({err})") from None
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise UserError(f"{path} has manifest version {data.get('manifest_version')!r}, expected {MANIFEST_VERSION}")
        return cls(out, data)

    @property
    def config(self) -> BuildConfig:
        return BuildConfig(**self.data["config"])

    def record_stage(self, name: str, seconds: float, **details: Any) -> None:
        self.data["stages"][name] = {"seconds": round(seconds, 3), **details}

    def record_artifact(self, name: str) -> None:
        path = self.out / name
        self.data["artifacts"][name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}

    def write(self) -> None:
        self.data["versions"] = versions()
        write_json_atomic(self.out / MANIFEST, self.data)


class Stages:
    """Runs named stages with numbered progress lines and records their timings in the manifest."""

    def __init__(self, manifest: Manifest, total: int, log: Log) -> None:
        self.manifest, self.total, self.log, self.done = manifest, total, log, 0

    def run(self, name: str, title: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.done += 1
        self.log(f"[{self.done}/{self.total}] {title} ...")
        started = time.perf_counter()
        try:
            details = work() or {}
        except ParityFailure:
            self.manifest.record_stage(name, time.perf_counter() - started, status="failed")
            raise
        except UserError:
            raise
        except Exception as err:  # an exporter / TensorRT error on valid input: name the stage, no traceback
            self.manifest.record_stage(name, time.perf_counter() - started, status="failed")
            self.manifest.write()
            raise BuildFailure(f"stage '{name}' failed: {type(err).__name__}: {first_line(err)}") from err
        seconds = time.perf_counter() - started
        status = details.pop("status", "ok")
        self.manifest.record_stage(name, seconds, status=status, **details)
        self.manifest.write()
        note = details.get("note")
        self.log(f"      {status} in {seconds:.1f} s" + (f": {note}" if note else ""))
        return details


def schedule_stage(model: Vim, manifest: Manifest) -> dict[str, Any]:
    schedule: MergeSchedule = model.schedule
    write_bytes_atomic(manifest.out / SCHEDULE, (schedule.to_json() + "\n").encode())
    manifest.record_artifact(SCHEDULE)
    manifest.data["schedule"] = {
        "r": schedule.r,
        "effective_ratio": schedule.effective_ratio,
        "tokens_last_block": schedule.tokens_per_block[-1],
    }
    return {"note": f"r={schedule.r}, tokens {schedule.tokens_per_block[0]} -> {schedule.tokens_per_block[-1]}"}


def export_stage(model: Vim, manifest: Manifest) -> dict[str, Any]:
    """model.onnx (custom nodes + function bodies) and its inlined twin, from one trace; INT8 twins too."""
    from rmeeto_export.export import build_onnx
    from rmeeto_export.export.onnx_export import inline_custom_ops

    config = manifest.config
    graph = build_onnx(model, batch=config.batch, precision=config.export_precision)
    write_bytes_atomic(manifest.out / ONNX, graph.SerializeToString())
    write_bytes_atomic(manifest.out / PORTABLE_ONNX, inline_custom_ops(graph).SerializeToString())
    written = [ONNX, PORTABLE_ONNX]
    if config.int8:
        from rmeeto_export.calibration import CACHE_NAME, quantize_build_folder

        quantized = quantize_build_folder(manifest.out, config.calib_data, config.calib_num, config.calib_method)
        written += [CACHE_NAME, *(path.name for path in quantized)]
    for name in written:
        manifest.record_artifact(name)
    return {"note": f"{', '.join(written)} (batch {config.batch})"}


def int8_parity_inputs(model: Vim, config: BuildConfig) -> torch.Tensor:
    """Real images for the INT8 graphs, ones calibration did not use where there are any.

    Gaussian noise suits fp32/fp16 parity, but not INT8: its activations fall outside the ranges
    calibrated on images and clip. 64 images (rounded down to whole batches): the INT8 criteria
    are statistics over images, and at 8 a single near-tied image that swaps is 12.5% agreement.
    """
    from rmeeto_export.calibration.images import held_out_images, load_image

    files = held_out_images(config.calib_data, INT8_PARITY_IMAGES, config.calib_num)
    files = files[: len(files) - len(files) % config.batch]
    return torch.from_numpy(np.stack([load_image(path, model.cfg.img_size) for path in files]))


def parity_stage(model: Vim, manifest: Manifest) -> dict[str, Any]:
    """ONNX Runtime (both graphs) against PyTorch; parity.json is written before any failure is raised."""
    from rmeeto_export.calibration.parity import Int8Tolerance, compare_int8_logits
    from rmeeto_export.export.parity import compare_logits, run_onnx, torch_logits

    config = manifest.config
    # Random weights decide nothing: their logits lie within a few % of each other, so INT8 rounding
    # swaps top-1 on about half the images (vim_t: 52%). The logit-error criteria still judge the graph.
    int8_tolerance = Int8Tolerance(min_top1_agreement=0.0) if config.random_weights else Int8Tolerance()
    inputs = {config.export_precision: parity_inputs(model, config)}
    if config.int8:
        inputs["int8"] = int8_parity_inputs(model, config)
    expected = {precision: torch_logits(model, images) for precision, images in inputs.items()}
    precision_of = {ONNX: config.export_precision, PORTABLE_ONNX: config.export_precision}
    if config.int8:
        precision_of.update({config.graph_name(portable): "int8" for portable in (False, True)})
    results = {}
    for name, precision in precision_of.items():
        actual, provider = run_onnx(manifest.out / name, inputs[precision].numpy())
        report = (compare_int8_logits(actual, expected[precision], provider, int8_tolerance) if precision == "int8"
                  else compare_logits(actual, expected[precision], precision, provider))
        results[f"onnxruntime:{name}"] = report.to_dict()
    passed = all(result["passed"] for result in results.values())
    samples = {precision: len(images) for precision, images in inputs.items()}
    write_json_atomic(manifest.out / PARITY, {"precision": config.precision, "samples": samples,
                                              "passed": passed, "results": results})
    manifest.record_artifact(PARITY)
    manifest.data["parity"] = {key: _parity_summary(result) for key, result in results.items()}
    if not passed:
        failed = ", ".join(key for key, result in results.items() if not result["passed"])
        raise ParityFailure(f"parity failed for {failed}: see {manifest.out / PARITY}")
    worst = max(result["max_rel"] for result in results.values())
    agreement = min(result["top1_agreement"] for result in results.values())
    counts = " and ".join(f"{count} {precision} inputs" for precision, count in samples.items())
    return {"note": f"max logit error {worst:.2e} of the logit scale, top-1 agreement {agreement:.0%} on {counts}"}


def _parity_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Figures every parity report has (INT8 reports give the median cosine, the others the lowest)."""
    cosine = result["min_cosine"] if "min_cosine" in result else result["median_cosine"]
    return {"passed": result["passed"], "max_rel": result["max_rel"], "cosine": cosine,
            "top1_agreement": result["top1_agreement"]}


def engine_stage(manifest: Manifest, log: Log) -> dict[str, Any]:
    """Build a TensorRT engine when TensorRT or TensorRT-RTX is importable; skip with the reason otherwise."""
    from rmeeto_export.trt import build_engine
    from rmeeto_export.trt.backend import load_backend

    config = manifest.config
    try:
        load_backend(config.trt)
    except UserError as err:
        if config.trt != "auto":
            raise
        return {"status": "skipped", "note": str(err)}
    onnx_name = config.graph_name(portable=config.plugins == "off")
    record = build_engine(
        manifest.out / onnx_name,
        manifest.out / ENGINE,
        backend=config.trt,
        plugins=config.plugins,
        precision=config.precision,
        batch=config.batch,
        target_cc=config.target_cc,
        timing_cache=manifest.out / "timing.cache",
    )
    manifest.record_artifact(ENGINE)
    manifest.data["engine"] = {"file": ENGINE, "from": onnx_name, **record.to_json()}
    if record.plugins is None:
        plugins = "no plugins (portable graph)"
    else:
        plugins = "Python plugins" if record.plugins.is_python else f"plugin library {record.plugins.library}"
    return {
        "note": f"{record.trt_flavour} {record.trt_version} for {record.target}, {plugins}, "
                f"{record.engine_bytes / 1e6:.1f} MB in {record.build_seconds:.1f} s",
    }


def write_report(manifest: Manifest) -> None:
    data, config = manifest.data, manifest.config
    lines = [f"# rmeeto-export build: {config.model}", ""]
    if config.random_weights:
        not_judged = " (INT8: top-1 agreement is not judged, only the logit error)" if config.int8 else ""
        lines += ["**Random weights** (no --weights given): the engine computes nothing useful; "
                  f"parity still checks the graph{not_judged}.", ""]
    schedule = data.get("schedule")
    if schedule:
        lines += [f"Merge: r={schedule['r']} (effective ratio {schedule['effective_ratio']:.3f}), "
                  f"{schedule['tokens_last_block']} tokens in the last block. Precision {config.precision}, "
                  f"batch {config.batch}.", ""]
    lines += ["| stage | status | seconds | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {s.get('status', 'ok')} | {s['seconds']:.1f} | {s.get('note', '')} |"
              for name, s in data["stages"].items()]
    if data.get("parity"):
        lines += ["", "| parity | passed | max error / logit scale | cosine | top-1 agreement |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {key} | {p['passed']} | {p['max_rel']:.2e} | {p['cosine']:.6f} | "
                  f"{p['top1_agreement']:.0%} |" for key, p in data["parity"].items()]
    lines += ["", "| artifact | bytes | sha256 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {a['bytes']} | `{a['sha256'][:16]}` |" for name, a in data["artifacts"].items()]
    write_bytes_atomic(manifest.out / REPORT, ("\n".join(lines) + "\n").encode())


def _finish(manifest: Manifest) -> None:
    write_report(manifest)
    manifest.write()


def retrain_stage(config: BuildConfig, out: Path, log: Log) -> BuildConfig:
    """Re-train the merged model on ``config.data``; the rest of the build uses the result's weights."""
    result = retrain(RetrainConfig(
        model=config.model, data=config.data, weights=config.weights, ratio=config.ratio, merge_r=config.r,
        epochs=config.epochs, batch_size=config.batch_size, out=str(out / "retrain"), seed=config.seed,
        model_overrides=config.overrides,
    ), log=lambda line: log(f"      {line}"))
    num_classes = result_num_classes(result.weights)
    return dataclasses.replace(config, weights=str(result.weights), use_ema=False,
                               overrides={**config.overrides, "num_classes": num_classes})


def result_num_classes(weights: Path) -> int:
    from rmeeto_export.models.weights import read_state_dict

    return int(read_state_dict(str(weights))["head.bias"].shape[0])


def build(config: BuildConfig, out: Path, log: Log = print) -> Manifest:
    """The whole job into ``out``; raises ParityFailure after writing parity.json and the report."""
    check_config(config)
    check_out_dir(out)
    if config.random_weights:
        log("WARNING: no --weights given: using RANDOM weights (seeded); the result is for checking the "
            "pipeline, not for deployment")
    manifest = Manifest.new(out, config)
    stages = Stages(manifest, total=5 if config.data is None else 6, log=log)
    model = None

    def retrain() -> dict[str, Any]:
        nonlocal config
        config = retrain_stage(config, out, log)
        manifest.data.update(config=dataclasses.asdict(config), random_weights=False)
        return {"note": f"weights {config.weights}"}

    if config.data is not None:
        stages.run("retrain", f"re-train the merged model on {config.data}", retrain)

    def load() -> dict[str, Any]:
        nonlocal model
        model = load_model(config)
        source = "random (seeded)" if config.random_weights else config.weights
        return {"note": f"{config.model}, weights {source}"}

    stages.run("load", f"load {config.model}", load)
    stages.run("schedule", "freeze the merge schedule", lambda: schedule_stage(model, manifest))
    stages.run("export", "export ONNX", lambda: export_stage(model, manifest))
    try:
        stages.run("parity", "check ONNX Runtime against PyTorch", lambda: parity_stage(model, manifest))
    except ParityFailure:
        _finish(manifest)
        raise
    stages.run("engine", "build the TensorRT engine", lambda: engine_stage(manifest, log))
    _finish(manifest)
    log(f"done: {out}")
    return manifest


def rerun_export(out: Path, log: Log = print) -> Manifest:
    """The export stage alone, on a folder made by `build` (same settings, same model)."""
    manifest = Manifest.read(out)
    model = load_model(manifest.config)
    stages = Stages(manifest, total=1, log=log)
    stages.run("export", "export ONNX", lambda: export_stage(model, manifest))
    _finish(manifest)
    return manifest


def rerun_verify(out: Path, log: Log = print) -> Manifest:
    """The parity stage alone, on a folder made by `build`."""
    manifest = Manifest.read(out)
    missing = [name for name in (ONNX, PORTABLE_ONNX) if not (out / name).is_file()]
    if missing:
        raise UserError(f"{out} lacks {', '.join(missing)}: run `rmeeto-export export --out {out}` first")
    model = load_model(manifest.config)
    stages = Stages(manifest, total=1, log=log)
    try:
        stages.run("parity", "check ONNX Runtime against PyTorch", lambda: parity_stage(model, manifest))
    finally:
        _finish(manifest)
    return manifest
