"""The `build` job as stages: (retrain) -> load -> schedule -> export -> (calibrate) -> parity -> engine.

Each stage below declares the settings groups it reads, its input and output artifacts and what it
reads outside the folder; pipelines.stages runs them (up-to-date checks, timings, failures) and
pipelines.folder owns the files. `export`, `verify` and `calibrate` run a subset on an existing folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from rmeeto_export.errors import UserError
from rmeeto_export.export.batch import parity_batch_sizes
from rmeeto_export.pipelines import folder as files
from rmeeto_export.pipelines.checks import check_build, check_calibration_images, images_fingerprint
from rmeeto_export.pipelines.folder import BuildFolder, graph_name
from rmeeto_export.pipelines.settings import BuildSettings, CalibrationSettings
from rmeeto_export.pipelines.stages import Log, Runner, Stage, StageContext, StageResult
from rmeeto_export.progress import progress
from rmeeto_export.precision import exported_precision

INT8_PARITY_IMAGES = 64  # see int8_parity_inputs
# A graph with a batch range is checked at MIN, OPT and MAX, each at most this: a CPU run of vim_b at 64
# takes minutes, and a batch-size bug (samples mixed up, a wrong broadcast) shows at any size above 1.
PARITY_BATCH_CAP = 16


# ----------------------------------------------------------------------------------------------
# What the model stages share: the weights they load


def model_groups(settings: BuildSettings) -> tuple[str, ...]:
    return ("model", "retrain") if settings.retraining else ("model",)


def model_inputs(settings: BuildSettings) -> tuple[str, ...]:
    """A re-trained model's weights are an artifact of the folder."""
    return (files.RETRAINED_WEIGHTS,) if settings.retraining else ()


def given_weights_digest(settings: BuildSettings, folder: BuildFolder) -> dict[str, Optional[str]]:
    """The --weights file's sha256: a changed file at the same path redoes what it feeds."""
    if settings.model.weights is None:
        return {}
    from rmeeto_export.models.weights import resolve_path

    return {"weights": folder.digests.of(resolve_path(settings.model.weights))}


def weights_digest(settings: BuildSettings, folder: BuildFolder) -> dict[str, Optional[str]]:
    """What the model stages load from outside the folder (re-trained weights are an input artifact instead)."""
    return {} if settings.retraining else given_weights_digest(settings, folder)


def load_model(settings: BuildSettings, folder: BuildFolder):
    """The merged PyTorch model: the re-trained weights, the given checkpoint, or seeded random weights."""
    from rmeeto_export.models import create_model, load_weights
    from rmeeto_export.models.weights import read_state_dict

    model_settings = settings.model
    torch.manual_seed(model_settings.seed)
    overrides, weights, ema = dict(model_settings.overrides), model_settings.weights, model_settings.ema_weights
    if settings.retraining:
        weights, ema = str(folder.path(files.RETRAINED_WEIGHTS)), False
        overrides["num_classes"] = int(read_state_dict(weights)["head.bias"].shape[0])
    model = create_model(model_settings.name, **model_settings.reduction, **overrides)
    if weights is not None:
        load_weights(model, weights, use_ema=ema)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The stages


def shapes_only_model(settings: BuildSettings):
    """The merged or pruned model on the meta device: its config and schedule, no weights (they depend on the shapes only)."""
    from rmeeto_export.models import create_model

    model_settings = settings.model
    with torch.device("meta"):
        return create_model(model_settings.name, **model_settings.reduction, **model_settings.overrides)


def retrain_stage(settings: BuildSettings) -> Stage:
    from rmeeto_export.pipelines.retrain import RetrainConfig, retrain

    def run(context: StageContext) -> StageResult:
        out = context.staging.path(files.RETRAINED_WEIGHTS).parent
        retrain(RetrainConfig(settings.model, settings.retrain, out=str(out)), log=lambda line: context.log(f"      {line}"))
        return StageResult(note=f"weights {context.folder.path(files.RETRAINED_WEIGHTS)}")

    def external(folder: BuildFolder) -> dict[str, Optional[str]]:
        return {**given_weights_digest(settings, folder), "data": images_fingerprint(settings.retrain.data, folder.digests)}

    return Stage("retrain", f"re-train the {settings.model.method}d model on {settings.retrain.data}", run, groups=("model", "retrain"),
                 outputs=(files.RETRAINED_WEIGHTS, files.RETRAIN_METRICS, files.RETRAIN_CHECKPOINT), external=external)


def load_stage(settings: BuildSettings) -> Stage:
    def run(context: StageContext) -> StageResult:
        context.values["model"] = load_model(settings, context.folder)
        if settings.retraining:
            source = files.RETRAINED_WEIGHTS
        else:
            source = "random (seeded)" if settings.model.random_weights else settings.model.weights
        return StageResult(note=f"{settings.model.name}, weights {source}")

    return Stage("load", f"load {settings.model.name}", run, groups=model_groups(settings),
                 inputs=model_inputs(settings), provides=("model",))


def schedule_stage(settings: BuildSettings) -> Stage:
    def run(context: StageContext) -> StageResult:
        schedule = shapes_only_model(settings).schedule
        context.output(files.SCHEDULE).write_text(schedule.to_json() + "\n")
        summary = {"method": schedule.method, "summary": schedule.summary(), "effective_ratio": schedule.effective_ratio,
                   "tokens_last_block": schedule.tokens_per_block[-1]}
        return StageResult(note=f"{schedule.summary()}, tokens {schedule.tokens_per_block[0]} -> {schedule.tokens_per_block[-1]}",
                           manifest={"schedule": summary})

    return Stage("schedule", f"freeze the {settings.model.method} schedule", run, groups=("model",), outputs=(files.SCHEDULE,))


def export_stage(settings: BuildSettings) -> Stage:
    """model.onnx (custom nodes + function bodies) and its inlined twin, from one trace."""

    def run(context: StageContext) -> StageResult:
        from rmeeto_export.export import build_onnx
        from rmeeto_export.export.onnx_export import inline_serialized

        export = settings.export
        serialized = {}
        make = {  # the portable graph inlines the first one's functions: one trace, the weights serialized once
            files.ONNX: lambda: [build_onnx(context.model, batch=export.batch,
                                            precision=exported_precision(export.precision)).SerializeToString()],
            files.PORTABLE_ONNX: lambda: inline_serialized(serialized[files.ONNX][0]),
        }
        for name in progress(make, "graphs", log=context.log):
            serialized[name] = make[name]()
            with open(context.output(name), "wb") as stream:
                stream.writelines(serialized[name])
        return StageResult(note=f"{files.ONNX}, {files.PORTABLE_ONNX} (batch {export.batch})")

    return Stage("export", "export ONNX", run, groups=(*model_groups(settings), "export"), inputs=model_inputs(settings),
                 outputs=(files.ONNX, files.PORTABLE_ONNX), uses=("model",),
                 external=lambda folder: weights_digest(settings, folder))


def calibrate_stage(settings: BuildSettings, force: bool = False) -> Stage:
    """INT8 calibration on the fp32 graphs, and their Q/DQ twins; calibration.json keeps the scales."""

    def run(context: StageContext) -> StageResult:
        from rmeeto_export.calibration import quantize_graphs

        calibration = settings.calibration
        cache = context.staging.path_from_previous(files.CALIBRATION)
        twins = {context.input(graph): context.output(twin) for graph, twin in files.INT8_TWINS.items()}
        quantize_graphs(twins, cache, calibration, force=force, log=context.log)
        smoothing = f"smoothing alpha {calibration.smoothing_alpha}" if calibration.smoothing else "no smoothing"
        return StageResult(note=f"{calibration.method} ranges on {calibration.num} images of {calibration.data}, "
                                f"{smoothing}: {', '.join(files.INT8_TWINS.values())}")

    return Stage("calibrate", "calibrate INT8", run, groups=("calibration",), inputs=tuple(files.INT8_TWINS),
                 outputs=(files.CALIBRATION, *files.INT8_TWINS.values()),
                 external=lambda folder: {"images": images_fingerprint(settings.calibration.data, folder.digests)})


def parity_inputs(model, settings: BuildSettings) -> torch.Tensor:
    """(samples, 3, H, W) seeded images with ImageNet-normalised statistics; at least one batch of every
    size parity runs."""
    size = model.cfg.img_size
    generator = torch.Generator().manual_seed(settings.model.seed + 1)
    count = max(settings.parity.samples, *parity_batch_sizes(settings.export.batch_range, PARITY_BATCH_CAP))
    return torch.randn(count, model.cfg.in_chans, size, size, generator=generator)


def int8_parity_inputs(model, settings: BuildSettings) -> torch.Tensor:
    """Real images for the INT8 graphs, ones calibration did not use where there are any.

    Gaussian noise suits fp32/fp16 parity, but not INT8: its activations fall outside the ranges
    calibrated on images and clip. 64 images (rounded down to whole batches): the INT8 criteria
    are statistics over images, and at 8 a single near-tied image that swaps is 12.5% agreement.
    """
    from rmeeto_export.calibration.images import held_out_images, load_image

    calibration = settings.calibration
    paths = held_out_images(calibration.data, INT8_PARITY_IMAGES, calibration.num)
    paths = paths[: len(paths) - len(paths) % settings.export.batch_range.max]
    return torch.from_numpy(np.stack([load_image(path, model.cfg.img_size) for path in paths]))


def parity_graphs(settings: BuildSettings) -> dict[str, str]:
    """{graph: the precision its inputs and tolerance are for}."""
    exported = exported_precision(settings.export.precision)
    graphs = {files.ONNX: exported, files.PORTABLE_ONNX: exported}
    if settings.export.int8:
        graphs.update({twin: "int8" for twin in files.INT8_TWINS.values()})
    return graphs


def spot_checked_graphs(settings: BuildSettings) -> set[str]:
    """The portable fp32/fp16 graph, unless the engine is built from it: parity runs it on one batch of
    each size, not on every input.

    Its rmeeto ops are inlined function bodies, whose Scan loop is ONNX Runtime's slow path (one step
    per token per block); one batch shows that the same maths in standard ONNX is right, while the
    graphs that ship as they are (model.onnx, and the engine's graph) are judged on every input. INT8
    graphs are judged on statistics over many images, so their portable twin keeps all of them.
    """
    engine_graph = graph_name(settings, portable=settings.engine.plugins == "off")
    return set() if engine_graph == files.PORTABLE_ONNX else {files.PORTABLE_ONNX}


def parity_stage(settings: BuildSettings) -> Stage:
    """ONNX Runtime (every graph) against PyTorch; parity.json is written whether or not it passes."""

    def run(context: StageContext) -> StageResult:
        from rmeeto_export.calibration.parity import Int8Tolerance, compare_int8_logits
        from rmeeto_export.export.parity import compare_logits, rmeeto_nodes_note, run_onnx, torch_logits
        from rmeeto_export.export.polygraphy_check import save_parity_data

        model = context.model
        # Random weights decide nothing: their logits lie within a few % of each other, so INT8 rounding
        # swaps top-1 on about half the images (vim_t: 52%). The logit-error criteria still judge the graph.
        random_weights = context.folder.manifest.get("random_weights", False)
        int8_tolerance = Int8Tolerance(min_top1_agreement=0.0) if random_weights else Int8Tolerance()
        graphs = parity_graphs(settings)
        inputs = {exported_precision(settings.export.precision): parity_inputs(model, settings)}
        if settings.export.int8:
            inputs["int8"] = int8_parity_inputs(model, settings)
        expected = {precision: torch_logits(model, images) for precision, images in inputs.items()}
        sizes = parity_batch_sizes(settings.export.batch_range, PARITY_BATCH_CAP)
        reference = exported_precision(settings.export.precision)  # Polygraphy re-checks the fp32/fp16 graphs
        save_parity_data(context.output(files.PARITY_INPUTS).parent, inputs[reference].numpy(), expected[reference],
                         sizes[0])
        results = {}
        spot_checked = spot_checked_graphs(settings)
        runs = [(name, precision, size) for name, precision in graphs.items() for size in sizes]
        for name, precision, size in progress(runs, "graph runs", log=context.log):
            count = size if name in spot_checked else len(inputs[precision]) - len(inputs[precision]) % size
            actual, provider = run_onnx(context.input(name), inputs[precision][:count].numpy(), batch=size)
            wanted = expected[precision][:count]
            report = (compare_int8_logits(actual, wanted, provider, int8_tolerance) if precision == "int8"
                      else compare_logits(actual, wanted, precision, provider))
            key = f"onnxruntime:{name}" + (f"@batch{size}" if settings.export.batch_range.dynamic else "")
            results[key] = report.to_dict()
        passed = all(result["passed"] for result in results.values())
        samples = {precision: len(images) for precision, images in inputs.items()}
        context.output(files.PARITY).write_text(json.dumps(
            {"precision": settings.export.precision, "samples": samples, "batch_sizes": list(sizes), "passed": passed,
             "results": results}, indent=2) + "\n")
        summary = {"parity": {key: _parity_summary(result) for key, result in results.items()}}
        if not passed:
            failed = ", ".join(key for key, result in results.items() if not result["passed"])
            return StageResult(failure=f"parity failed for {failed}: see {context.folder.path(files.PARITY)}",
                               manifest=summary)
        worst = max(result["max_rel"] for result in results.values())
        agreement = min(result["top1_agreement"] for result in results.values())
        counts = " and ".join(f"{count} {precision} inputs" for precision, count in samples.items())
        spot = "".join(f" ({name}: one batch)" for name in sorted(spot_checked))
        return StageResult(note=f"max logit error {worst:.2e} of the logit scale, top-1 agreement {agreement:.0%} "
                                f"on {counts}{spot}; {rmeeto_nodes_note()}", manifest=summary)

    def external(folder: BuildFolder) -> dict[str, Optional[str]]:
        images = {"images": images_fingerprint(settings.calibration.data, folder.digests)} if settings.export.int8 else {}
        return {**weights_digest(settings, folder), **images}

    groups = (*model_groups(settings), "export", "parity", *(("calibration",) if settings.export.int8 else ()))
    return Stage("parity", "check ONNX Runtime against PyTorch", run, groups=groups,
                 inputs=(*model_inputs(settings), *parity_graphs(settings)),
                 outputs=(files.PARITY, files.PARITY_INPUTS, files.PARITY_OUTPUTS), uses=("model",),
                 external=external)


def _parity_summary(result: dict) -> dict:
    """Figures every parity report has (INT8 reports give the median cosine, the others the lowest)."""
    cosine = result["min_cosine"] if "min_cosine" in result else result["median_cosine"]
    return {"passed": result["passed"], "max_rel": result["max_rel"], "cosine": cosine,
            "top1_agreement": result["top1_agreement"]}


REDUCED_LABELS = {"merge": "merged", "prune": "pruned"}  # what the figures call the reduced model, per --method


def figures_stage(settings: BuildSettings) -> Stage:
    """The report's PNG figures: tokens and GFLOPs per block, plain vs reduced; parity error per input and graph."""

    def run(context: StageContext) -> StageResult:
        from rmeeto_export.models.complexity import block_gflops
        from rmeeto_export.pipelines import figures

        plt = figures.pyplot()
        if plt is None:
            return StageResult(status="skipped", note=figures.MISSING_MATPLOTLIB)
        model = shapes_only_model(settings)
        cfg, reduced = model.cfg, list(model.schedule.tokens_per_block)
        label = REDUCED_LABELS[settings.model.method]
        plain = [cfg.num_tokens] * cfg.depth
        figures.tokens_figure(plt, plain, reduced, label, model.schedule.summary(), context.output(files.TOKENS_FIGURE))
        figures.gflops_figure(plt, block_gflops(cfg, plain), block_gflops(cfg, reduced), label,
                              context.output(files.GFLOPS_FIGURE))
        written = [files.TOKENS_FIGURE, files.GFLOPS_FIGURE]
        errors, limits = figures.parity_errors(json.loads(context.input(files.PARITY).read_text()))
        if errors:
            figures.parity_figure(plt, errors, limits, context.output(files.PARITY_FIGURE))
            written.append(files.PARITY_FIGURE)
        return StageResult(note=", ".join(written))

    return Stage("figures", "draw the report's figures", run, groups=("model",), inputs=(files.PARITY,),
                 outputs=tuple(files.FIGURES))


def engine_stage(settings: BuildSettings) -> Stage:
    """A TensorRT engine when TensorRT or TensorRT-RTX is installed; with --trt auto, skipped with the reason otherwise."""
    engine = settings.engine
    onnx_name = graph_name(settings, portable=engine.plugins == "off")

    def run(context: StageContext) -> StageResult:
        from rmeeto_export.trt import build_engine
        from rmeeto_export.trt.backend import BackendNotInstalled, load_backend
        from rmeeto_export.trt.plugins import copy_plugin_library

        try:
            load_backend(engine.trt)
        except BackendNotInstalled as err:
            if engine.trt != "auto":
                raise
            return StageResult(status="skipped", note=str(err))
        record = build_engine(context.input(onnx_name), context.output(files.ENGINE), backend=engine.trt,
                              plugins=engine.plugins, precision=settings.export.precision, batch=settings.export.batch,
                              target_cc=engine.target_cc,
                              timing_cache=context.staging.path_from_previous(files.TIMING_CACHE))
        if record.plugins is None:
            plugins = "no plugins (portable graph)"
        elif record.plugins.is_python:
            plugins = "Python plugins"
        else:
            copy_plugin_library(record.plugins, context.output(files.PLUGIN_LIBRARY).parent)
            plugins = f"plugin library {record.plugins.library}"
        return StageResult(
            note=f"{record.trt_flavour} {record.trt_version} for {record.target}, {plugins}, "
                 f"{record.engine_bytes / 1e6:.1f} MB in {record.build_seconds:.1f} s",
            manifest={"engine": {"file": files.ENGINE, "from": onnx_name, **record.to_json()}},
        )

    def external(folder: BuildFolder) -> dict[str, Optional[str]]:
        from rmeeto_export.pipelines.checks import plugin_library_digest
        from rmeeto_export.pipelines.folder import versions

        installed = versions()
        return {"tensorrt": installed["tensorrt"], "tensorrt-rtx": installed["tensorrt-rtx"],
                "plugin library": plugin_library_digest(engine, folder.digests)}

    return Stage("engine", "build the TensorRT engine", run, groups=("export", "engine"), inputs=(onnx_name,),
                 outputs=(files.ENGINE, files.ENGINE_RECORD, files.TIMING_CACHE, files.PLUGIN_LIBRARY, files.KERNELS_LIBRARY),
                 external=external)


def build_stages(settings: BuildSettings) -> list[Stage]:
    stages = [retrain_stage(settings)] if settings.retraining else []
    stages += [load_stage(settings), schedule_stage(settings), export_stage(settings)]
    if settings.calibrating:
        stages.append(calibrate_stage(settings))
    return stages + [parity_stage(settings), figures_stage(settings), engine_stage(settings)]


# ----------------------------------------------------------------------------------------------
# Commands


def build(settings: BuildSettings, out: Path, log: Log = print, force: tuple[str, ...] = ()) -> BuildFolder:
    """The whole job into `out`: every input is checked before the first stage; stages that are up to date are kept."""
    decoded = check_build(settings, out)
    if decoded:
        log(f"inputs checked; decoded {', '.join(decoded)}")
    if settings.model.random_weights and not settings.retraining:
        log("WARNING: no --weights given: using RANDOM weights (seeded); the result is for checking the "
            "pipeline, not for deployment")
    folder = BuildFolder.for_build(out, settings)
    Runner(folder, build_stages(settings), log, force).run()
    log(f"done: {out}")
    return folder


def rerun_export(out: Path, log: Log = print, force: bool = False) -> BuildFolder:
    """The export stage on a build folder (and calibration after it, with the folder's calibration settings)."""
    folder = BuildFolder.open(out)
    settings = folder.settings
    stages = [load_stage(settings), export_stage(settings)]
    if settings.calibrating:
        stages.append(calibrate_stage(settings))
    return Runner(folder, stages, log, force=("export",) if force else ()).run()


def rerun_verify(out: Path, log: Log = print, force: bool = False) -> BuildFolder:
    """The parity stage on a build folder."""
    folder = BuildFolder.open(out)
    settings = folder.settings
    stages = [load_stage(settings), parity_stage(settings), figures_stage(settings)]
    return Runner(folder, stages, log, force=("parity",) if force else ()).run()


def calibrate_folder(out: Path, changes: dict, log: Log = print, recalibrate: bool = False) -> BuildFolder:
    """The calibrate stage on a build folder with its calibration settings changed by `changes`; the manifest keeps them."""
    folder = BuildFolder.open(out)
    settings = folder.settings
    calibration: CalibrationSettings = dataclasses.replace(settings.calibration, **changes)
    if calibration.data is None:
        raise UserError(f"{out} was built without calibration images: give --data DIR")
    calibration.check()
    check_calibration_images(calibration, settings.export.batch_range.max)
    folder.settings = settings.replace(calibration=calibration)
    stage = calibrate_stage(folder.settings, force=recalibrate)
    return Runner(folder, [stage], log, force=("calibrate",) if recalibrate else ()).run()
