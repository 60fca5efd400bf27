"""Merging vs pruning at equal GFLOPs, with re-training and a control, on a small real dataset (CPU).

The dataset, model and recipes are the re-training demo's (benchmarks/recovery_demo.py): scikit-learn's
digits as an ImageFolder and a small Vim (6 blocks, width 32), here with 8 px patches by default (17 tokens;
the demo's 4 px patches give 65 tokens and cost 4x more: --patch-size 4). Per seed:

1. train the Vim from scratch to convergence (--scratch-epochs); convergence is judged from the run's
   own val top-1 over its last 5 epochs (printed as "plateau": their range);
2. reduce about 31% of the token-layer work (--ratio) four ways, each re-trained for --retrain-epochs
   with the same recipe (R-MeeTo's: distillation from the unreduced model) and the same data order:
   - merged: R-MeeTo merging at blocks 2 and 4;
   - ToP-pruned: token pruning with the paper's importance (clipped SSM output), after 2 and 4 blocks;
   - L2-pruned: the same pruning schedule, importance = L2 norm of the block output;
   - control: the unreduced model, fine-tuned the same way (what the extra epochs alone are worth);
3. record val top-1 before re-training and after every epoch.

Output in --work: seed<N>/results.json per seed, and for every seed found there, study.md (table) and
study.png (mean and spread per epoch). A seed whose runs are all in --work is only read back.

Threads: the script sets none; on a shared machine run it with OMP_NUM_THREADS=1 (and nice).
Run: python benchmarks/reduction_study.py --work DIR [--seeds 0 1 2] [--ratio 0.31] [--scratch-epochs 12] [--retrain-epochs 2] [--patch-size 8]
Needs scikit-learn and matplotlib: pip install -e '.[dev]' (make install does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package: reuse the demo's training setup
import recovery_demo as demo  # noqa: E402

from rmeeto_export.models import create_model  # noqa: E402
from rmeeto_export.models.complexity import model_gflops  # noqa: E402
from rmeeto_export.pipelines.retrain import RetrainConfig  # noqa: E402
from rmeeto_export.pipelines.settings import ModelSettings, RetrainSettings  # noqa: E402

PLATEAU_EPOCHS = 5
REDUCERS = ("merged", "ToP-pruned", "L2-pruned", "control")


def reducer_settings(name: str, ratio: float, merge_blocks: tuple[int, ...]) -> dict:
    """ModelSettings fields that reduce the model the way `name` does, at the same --ratio."""
    if name == "merged":
        return {"ratio": ratio}
    if name == "control":
        return {}
    return {"method": "prune", "ratio": ratio, "prune_after": ",".join(map(str, merge_blocks)),
            "importance": "ssm" if name == "ToP-pruned" else "l2"}


def schedule_summary(model_settings: ModelSettings) -> dict:
    """Tokens per block, token-layer work removed and GFLOPs of a (reduced) study model."""
    model = create_model(model_settings.name, **model_settings.reduction, num_classes=10, **model_settings.overrides)
    schedule = model.schedule
    removed = 1 - sum(schedule.tokens_per_block) / (schedule.depth * schedule.num_tokens)
    return {"tokens_per_block": list(schedule.tokens_per_block), "work_removed": removed, "gflops": model_gflops(model)}


def run_seed(work: Path, seed: int, args: argparse.Namespace) -> dict:
    """All runs of one seed (each continued or read back if --work has it); returns the seed's results."""
    data = work / "digits"
    if not (data / "val").is_dir():
        demo.write_digits(data, demo.MODEL_OVERRIDES["img_size"], demo.DIGIT_SIZE, seed)
    overrides = {**demo.MODEL_OVERRIDES, "patch_size": args.patch_size}
    model = ModelSettings(name=demo.MODEL, seed=seed, overrides=overrides)
    common = dict(data=str(data), batch_size=args.batch_size, workers=0, log_every=10**9, **demo.DIGIT_AUGMENT)
    scratch = demo.run_cached(RetrainConfig(model, RetrainSettings(
        **common, epochs=args.scratch_epochs, lr=args.scratch_lr, distill_weight=0.0, drop_path=0.0, mixup=0.0,
        cutmix=0.0), out=str(work / "scratch")))
    scratch_curve = [entry["top1"] for entry in scratch if "epoch" in entry]
    merge_blocks = create_model(demo.MODEL, merge_ratio=args.ratio, **overrides).schedule.merge_blocks
    recipe = RetrainSettings(**common, epochs=args.retrain_epochs, lr=args.retrain_lr)
    trained = dataclasses.replace(model, weights=str(work / "scratch" / "model.pth"))
    runs = {}
    for name in args.reducers:
        reduced = dataclasses.replace(trained, **reducer_settings(name, args.ratio, merge_blocks))
        history = demo.run_cached(RetrainConfig(reduced, recipe, out=str(work / name)))
        by_stage = {entry["stage"]: entry["top1"] for entry in history}
        curve = [by_stage.get("merged", by_stage["unmerged"])] + [entry["top1"] for entry in history if "epoch" in entry]
        runs[name] = {"top1_per_epoch": curve, **schedule_summary(reduced)}
    return {
        "seed": seed,
        "unreduced": scratch_curve[-1],
        "scratch_curve": scratch_curve,
        "plateau": [min(scratch_curve[-PLATEAU_EPOCHS:]), max(scratch_curve[-PLATEAU_EPOCHS:])],
        "runs": runs,
    }


def mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def table(results: list[dict]) -> str:
    """Markdown: one row per reducer, top-1 before re-training and after every epoch (mean ± std over seeds)."""
    epochs = len(results[0]["runs"]["control"]["top1_per_epoch"]) - 1
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [f"Val top-1 (%) on digits, mean ± standard deviation over seeds {seeds}; unreduced model "
             f"{mean_spread([r['unreduced'] for r in results])} (scratch plateau over its last {PLATEAU_EPOCHS} "
             f"epochs: " + "; ".join(f"{r['plateau'][0]:.2f}-{r['plateau'][1]:.2f}" for r in results) + ").", "",
             "| model | work removed | MFLOPs | before | " + " | ".join(f"epoch {e}" for e in range(1, epochs + 1)) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in range(epochs)) + " |"]
    for name in REDUCERS:
        run = results[0]["runs"][name]
        cells = [mean_spread([r["runs"][name]["top1_per_epoch"][e] for r in results]) for e in range(epochs + 1)]
        lines.append(f"| {name} | {run['work_removed']:.1%} | {run['gflops'] * 1e3:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    epochs = range(len(results[0]["runs"]["control"]["top1_per_epoch"]))
    for name in REDUCERS:
        curves = [r["runs"][name]["top1_per_epoch"] for r in results]
        means = [statistics.mean(c[e] for c in curves) for e in epochs]
        spreads = [statistics.stdev(c[e] for c in curves) if len(curves) > 1 else 0.0 for e in epochs]
        line, = axes.plot(epochs, means, marker="o", label=f"{name} ({results[0]['runs'][name]['work_removed']:.0%} removed)")
        axes.fill_between(epochs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                          color=line.get_color(), alpha=0.2)
    axes.axhline(statistics.mean(r["unreduced"] for r in results), color="black", linestyle="--", label="unreduced")
    axes.set_xticks(list(epochs))
    axes.set_xlabel("re-training epochs (0: reduced, not re-trained)")
    axes.set_ylabel("val top-1 (%)")
    axes.set_title(f"Vim on digits, {len(results)} seed(s): mean ± std")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data, runs and the figures (reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratio", type=float, default=0.31, help="fraction of token-layer work removed")
    parser.add_argument("--scratch-epochs", type=int, default=12)
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--scratch-lr", type=float, default=6.4e-2, help="at batch 512, scaled like the recipe's")
    parser.add_argument("--retrain-lr", type=float, default=3.2e-2, help="at batch 512, scaled like the recipe's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=8, help="8: 17 tokens; 4: the demo's 65 tokens (4x the time)")
    parser.add_argument("--reducers", nargs="+", choices=REDUCERS, default=list(REDUCERS),
                        help="runs to do (several processes can share one --work); the table needs all of them")
    parser.add_argument("--report-only", action="store_true", help="only write the table and plot of the seeds in --work")
    args = parser.parse_args()

    for seed in [] if args.report_only else args.seeds:
        folder = args.work / f"seed{seed}"
        results = run_seed(folder, seed, args)
        if list(results["runs"]) == list(REDUCERS):
            (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    found = [json.loads(p.read_text()) for p in sorted(args.work.glob("seed*/results.json"))]
    if not found:
        sys.exit(f"no seed in {args.work} has all of its runs yet")
    (args.work / "study.md").write_text(table(found))
    plot(found, args.work / "study.png")
    print(table(found))
    print(f"wrote {args.work / 'study.md'} and {args.work / 'study.png'}")


if __name__ == "__main__":
    main()
