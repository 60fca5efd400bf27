"""report.md: the manifest of a build folder, for people."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rmeeto_export.pipelines.folder import BuildFolder


def report_text(folder: "BuildFolder") -> str:
    data, settings = folder.manifest, folder.settings
    lines = [f"# rmeeto-export build: {settings.model.name}", ""]
    if data.get("random_weights"):
        not_judged = " (INT8: top-1 agreement is not judged, only the logit error)" if settings.export.int8 else ""
        lines += ["**Random weights** (no --weights given): the engine computes nothing useful; "
                  f"parity still checks the graph{not_judged}.", ""]
    schedule = data.get("schedule")
    if schedule:
        lines += [f"Tokens: {schedule['summary']} (effective ratio {schedule['effective_ratio']:.3f}), "
                  f"{schedule['tokens_last_block']} tokens in the last block. Precision {settings.export.precision}, "
                  f"batch {settings.export.batch}.", ""]
    lines += ["| stage | status | seconds | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {s.get('status', 'ok')} | {s['seconds']:.1f} | {s.get('note', '')} |"
              for name, s in data["stages"].items()]
    if data.get("parity"):
        lines += ["", "| parity | passed | max error / logit scale | cosine | top-1 agreement |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {key} | {p['passed']} | {p['max_rel']:.2e} | {p['cosine']:.6f} | "
                  f"{p['top1_agreement']:.0%} |" for key, p in data["parity"].items()]
    lines += _figure_lines(folder)
    lines += ["", "| artifact | bytes | sha256 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {a['bytes']} | `{a['sha256'][:16]}` |" for name, a in data["artifacts"].items()]
    lines += target_commands_section(folder)
    return "\n".join(lines) + "\n"


def _figure_lines(folder: "BuildFolder") -> list[str]:
    """The figures the folder has, as images; the reason when the figures stage was skipped."""
    from rmeeto_export.pipelines.folder import FIGURES

    lines = [f"![{caption}]({name})" for name, caption in FIGURES.items() if folder.path(name).is_file()]
    stage = folder.manifest["stages"].get("figures", {})
    if stage.get("status") == "skipped":
        lines.append(f"Figures: {stage.get('note', 'skipped')}")
    return ["", "## Figures", "", *lines] if lines else []


def target_commands_section(folder: "BuildFolder") -> list[str]:
    """The Polygraphy / trtexec commands that repeat the parity check and run the engine, in this folder."""
    from rmeeto_export.export.batch import BatchRange
    from rmeeto_export.export.parity import TOLERANCES
    from rmeeto_export.export.polygraphy_check import OUTPUTS, logit_scale, target_commands
    from rmeeto_export.pipelines.folder import ONNX
    from rmeeto_export.trt.plugins import PYTHON_PLUGINS

    precision, engine = folder.settings.export.precision, folder.manifest.get("engine")
    if not folder.path(OUTPUTS).is_file() or precision not in TOLERANCES:
        return []
    library = engine["plugins"]["library"] if engine and engine["plugins"] else None
    python_plugins = library == PYTHON_PLUGINS
    image_shape = tuple(engine["inputs"][0]["shape"][1:]) if engine and engine.get("inputs") else ()  # one image's
    commands = target_commands(
        onnx_name=ONNX, engine_graph=engine["from"] if engine else ONNX,
        engine_name=engine["file"] if engine and not python_plugins else None,
        flavour=engine["trt_flavour"] if engine else None,
        plugin_library=Path(library).name if library and not python_plugins else None,
        precision=precision, scale=logit_scale(folder.root), image_shape=image_shape,
        batch=BatchRange(**engine["batch"]) if engine else BatchRange.fixed(1))
    lines = ["", "## Check and run on the target", "",
             "Run these in this folder (copy it to the target as it is); the tolerances are this build's parity "
             "tolerances, against the PyTorch logits in parity_outputs.json.", ""]
    if python_plugins:
        lines += ["The engine was built with the Python plugins, which only this package loads: for an engine that "
                  "trtexec, Polygraphy and Triton run, build the C++ library (`rmeeto-export plugins build`) and rebuild.", ""]
    for what, command in commands:
        lines += [f"{what}:", "", "```", command, "```", ""]
    return lines
