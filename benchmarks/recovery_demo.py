"""R-MeeTo's central claim at toy scale, on a CPU: merging costs accuracy, a short re-training recovers it.

scikit-learn's digits (1797 8x8 images, 10 classes, shipped inside the package) are written as an
ImageFolder (each digit upsampled to 24 px on a black 32 px canvas, 70/30 stratified split), then the
project's own re-training pipeline (rmeeto_export.pipelines.retrain) runs:

1. train a small Vim from scratch (no merging, no teacher): 65 tokens, 6 blocks, width 32;
2. merge at --r tokens per step and measure the drop (the "merged" entry, no training), then
   re-train the merged model with the R-MeeTo recipe (distillation from the unmerged model);
3. if rmeeto_export.merge.rmeeto.prune_tokens exists, the same with pruning instead of merging
   (same schedule, same re-training), the baseline the paper compares against.

Settings that differ from the ImageNet recipe, and why:
- no horizontal flips (digits are not mirror-symmetric), milder crops (scale >= 0.5: an 8x8 digit
  cropped to 8% of its area is unrecognisable), no random erasing; no mixup/cutmix and no drop path
  while training from scratch (a tiny model on 1257 images learns faster without them);
- batch 16 and a higher learning rate (3.2e-2 at batch 512, i.e. 1e-3 at 16): the recipe's 2e-5 is
  tuned for thousands of steps from a converged ImageNet model; here an epoch is 78 steps.
The re-training keeps everything else of the recipe: AdamW, weight decay 0.05, cosine to 1e-6
without warmup, label smoothing 0.1, mixup/cutmix, KL distillation weight 0.5, drop path 0.1.

Figures measured on the development VM (three seeds, and longer re-training):
docs/measurements.md#recovery-after-merging.

Threads: the script sets none; run it with OMP_NUM_THREADS=1 on a shared machine.
Run: python benchmarks/recovery_demo.py [--r 8] [--work DIR]   (--work keeps and reuses finished runs)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from rmeeto_export.merge import rmeeto as merge_module
from rmeeto_export.models import create_model, ops
from rmeeto_export.pipelines.retrain import RetrainConfig, retrain
from rmeeto_export.pipelines.settings import ModelSettings, RetrainSettings

MODEL = "vim_t"
MODEL_OVERRIDES = {"embed_dim": 32, "depth": 6, "img_size": 32, "patch_size": 4, "d_state": 8}
DIGIT_SIZE = 24  # pixels the 8x8 digit is upsampled to, centred on the black img_size canvas
DIGIT_AUGMENT = dict(crop_scale_min=0.5, hflip=0.0, reprob=0.0)
VAL_FRACTION = 0.3


def write_digits(root: Path, size: int, digit_size: int, seed: int) -> None:
    """sklearn digits as DIR/{train,val}/<digit>/<n>.png (stratified split): each digit upsampled to
    digit_size and centred on a black size x size canvas, so that some tokens are background, as in photos."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    indices = np.arange(len(pixels))
    train, val = train_test_split(indices, test_size=VAL_FRACTION, stratify=digits.target, random_state=seed)
    for split, chosen in (("train", train), ("val", val)):
        for index in chosen:
            folder = root / split / str(digits.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            digit = Image.fromarray(pixels[index]).resize((digit_size, digit_size), Image.Resampling.BICUBIC)
            canvas = Image.new("L", (size, size))
            canvas.paste(digit, ((size - digit_size) // 2, (size - digit_size) // 2))
            canvas.convert("RGB").save(folder / f"{index}.png")


@contextlib.contextmanager
def merging_replaced_by_pruning() -> Iterator[None]:
    """Route the model's merge op through prune_tokens (same schedule, same shapes)."""
    original = ops.token_merge

    def prune(hidden, residual, size, r, cls_index):
        return merge_module.prune_tokens(hidden, residual, size, r, cls_index)[:3]

    ops.token_merge = prune
    try:
        yield
    finally:
        ops.token_merge = original


def run_cached(config: RetrainConfig) -> list[dict]:
    """retrain(), continuing (or just reading back) a run that an earlier call with the same --work left."""
    return retrain(dataclasses.replace(config, resume=(Path(config.out) / "checkpoint.pth").is_file())).history


def accuracies(history: list[dict]) -> tuple[float, float, float]:
    """(unmerged, reduced before training, reduced after the last epoch) top-1."""
    by_stage = {entry["stage"]: entry["top1"] for entry in history}
    return by_stage["unmerged"], by_stage["merged"], history[-1]["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs, reused when given "
                        "(default: a temporary folder)")
    parser.add_argument("--r", type=int, default=4, help="tokens merged per merge step (4: 6%% of the work)")
    parser.add_argument("--scratch-epochs", type=int, default=10)
    parser.add_argument("--retrain-epochs", type=int, default=3)
    parser.add_argument("--scratch-lr", type=float, default=6.4e-2, help="at batch 512, scaled like the recipe's")
    parser.add_argument("--retrain-lr", type=float, default=3.2e-2, help="at batch 512, scaled like the recipe's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recovery-demo-")))
        data = work / "digits"
        if not (data / "val").is_dir():
            write_digits(data, MODEL_OVERRIDES["img_size"], DIGIT_SIZE, args.seed)
        model = ModelSettings(name=MODEL, seed=args.seed, overrides=MODEL_OVERRIDES)
        common = dict(data=str(data), batch_size=args.batch_size, workers=0, log_every=10**9, **DIGIT_AUGMENT)
        run_cached(RetrainConfig(model, RetrainSettings(
            **common, epochs=args.scratch_epochs, lr=args.scratch_lr, distill_weight=0.0, drop_path=0.0, mixup=0.0,
            cutmix=0.0), out=str(work / "scratch")))
        recovery = RetrainConfig(
            dataclasses.replace(model, weights=str(work / "scratch" / "model.pth"), r=args.r),
            RetrainSettings(**common, epochs=args.retrain_epochs, lr=args.retrain_lr), out=str(work / f"merge-r{args.r}"))
        merging = accuracies(run_cached(recovery))
        pruning = None
        if hasattr(merge_module, "prune_tokens"):
            with merging_replaced_by_pruning():
                pruning = accuracies(run_cached(dataclasses.replace(recovery, out=str(work / f"prune-r{args.r}"))))

    schedule = create_model(MODEL, merge_r=args.r, num_classes=10, **MODEL_OVERRIDES).schedule
    unmerged = merging[0]
    print()
    print(f"model: {MODEL} {MODEL_OVERRIDES}, digit {DIGIT_SIZE}px on the canvas; r={args.r}: tokens per block "
          f"{schedule.tokens_per_block}, token-layer work removed {schedule.effective_ratio:.1%}")
    print(f"unmerged (trained from scratch, {args.scratch_epochs} epochs): top-1 {unmerged:.2f}%")
    rows = [("merged", merging)] + ([("pruned", pruning)] if pruning else [])
    for name, (_, before, after) in rows:
        print(f"{name}, no re-training:                    top-1 {before:.2f}%  ({before - unmerged:+.2f})")
        print(f"{name} + {args.retrain_epochs} epoch(s) R-MeeTo re-training:  top-1 {after:.2f}%  ({after - unmerged:+.2f})")
    print(f"total time {time.perf_counter() - started:.0f} s (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
