"""The build report's figures as PNG files (matplotlib, the `report` extra).

tokens per block and GFLOPs per block, plain against reduced (what the merge or prune schedule removes,
block by block), and the parity error of every input image for every graph checked (how far each graph
is from PyTorch, against its tolerance). Each figure is a pure function of its numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

MISSING_MATPLOTLIB = "matplotlib is not installed: pip install 'rmeeto-export[report]' for the figures"
DPI = 110


def pyplot() -> Optional[Any]:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # no display: figures go to files
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _plain_vs_reduced(plt, plain: list[float], reduced: list[float], reduced_label: str, ylabel: str, title: str,
                      path: Path, number_format: str) -> Path:
    blocks = list(range(1, len(plain) + 1))
    figure, axes = plt.subplots(figsize=(8, 3.6))
    width = 0.4
    axes.bar([b - width / 2 for b in blocks], plain, width, label=f"plain (total {sum(plain):{number_format}})",
             color="#9aa5b1")
    axes.bar([b + width / 2 for b in blocks], reduced, width,
             label=f"{reduced_label} (total {sum(reduced):{number_format}})",
             color="#1f77b4")
    axes.set_xlabel("block")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.set_xticks(blocks)
    axes.tick_params(axis="x", labelsize=7)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return _save(plt, figure, path)


def tokens_figure(plt, plain: list[int], reduced: list[int], reduced_label: str, schedule_summary: str,
                  path: Path) -> Path:
    return _plain_vs_reduced(plt, plain, reduced, reduced_label, "tokens", f"Tokens per block ({schedule_summary})", path, "d")


def gflops_figure(plt, plain: list[float], reduced: list[float], reduced_label: str, path: Path) -> Path:
    return _plain_vs_reduced(plt, plain, reduced, reduced_label, "GFLOPs", "GFLOPs per block (token layers)", path, ".4g")


def parity_figure(plt, errors: dict[str, list[float]], limits: dict[str, float], path: Path) -> Path:
    """errors: {graph: per-image max error / logit scale}, one column of dots per graph; limits: {graph: its
    tolerance}, a red dash over the column."""
    figure, axes = plt.subplots(figsize=(8, 4))
    tiny = 1e-12  # a graph equal to PyTorch to the last bit still shows, at the bottom of the log axis
    for column, (graph, values) in enumerate(errors.items()):
        spread = [column + 0.3 * (i / max(len(values) - 1, 1) - 0.5) for i in range(len(values))]  # image order
        axes.scatter(spread, [max(v, tiny) for v in values], s=12, color="#1f77b4", zorder=3)
        if graph in limits:
            axes.hlines(limits[graph], column - 0.35, column + 0.35, color="#d62728", linewidth=1.5)
    axes.set_yscale("log")
    axes.set_xticks(range(len(errors)))
    axes.set_xticklabels(list(errors), rotation=20, ha="right", fontsize=8)
    axes.set_ylabel("max |ONNX - PyTorch| / logit scale")
    axes.set_title("Parity error of every input image, per graph (red: tolerance)")
    axes.grid(axis="y", which="major", alpha=0.3)
    return _save(plt, figure, path)


def parity_errors(parity: dict[str, Any]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """parity.json -> ({graph: per-image errors}, {graph: max_rel tolerance}); graphs without per-image errors are left out."""
    errors, limits = {}, {}
    for key, result in parity["results"].items():
        if not result.get("per_image_max_rel"):
            continue
        graph = key.removeprefix("onnxruntime:")
        errors[graph] = list(result["per_image_max_rel"])
        limit = result.get("tolerance", {}).get("max_rel")  # INT8 judges a mean, not each image: no line
        if limit is not None:
            limits[graph] = limit
    return errors, limits


def throughput_figure(plt, rows: list[dict[str, Any]], path: Path) -> Path:
    """Latency (ms per batch) and throughput (images/s) of each measured model, plain next to merged.

    rows: {"model", "batch", "ms", "images_per_s"}, as a GPU benchmark measures them.
    """
    labels = [f"{row['model']}\n(batch {row['batch']})" for row in rows]
    colors = ["#1f77b4" if row.get("r") else "#9aa5b1" for row in rows]  # merged models have r > 0
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(8, 3.6))
    for axes, key, title in ((latency, "ms", "Latency (ms per batch)"), (throughput, "images_per_s", "Throughput (images/s)")):
        values = [row[key] for row in rows]
        bars = axes.bar(labels, values, color=colors)
        axes.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize=8)
        axes.set_title(title)
        axes.margins(y=0.15)
    return _save(plt, figure, path)
