"""INT8 vs fp32 accuracy of an exported Vim, in ONNX Runtime, on a small real dataset (CPU).

The dataset and the models are the re-training demo's (benchmarks/recovery_demo.py): scikit-learn's
digits as an ImageFolder, a small Vim trained from scratch, and that model merged at r and re-trained
with the R-MeeTo recipe. The demo is run first (`--work DIR`) unless DIR already holds its weights,
so both scripts always measure the same models with the same settings. The defaults train to
convergence (30 scratch epochs, 10 re-training epochs, about 15 minutes), as a model is before it
is deployed: the demo's own shorter defaults leave a merged model whose top-2 logits are within 0.5
of each other for 20% of the images, and any perturbation (INT8 or not) flips a few % of those.

For each model: export the fp32 graph (plugin form, custom nodes with function bodies), calibrate
on the train split (`--num` images) with each method, write the Q/DQ INT8 graph, and measure top-1
on the val split for fp32 and INT8 in ONNX Runtime, their agreement, and INT8 parity against
PyTorch. Each method is measured with the default smoothing and without it; for the merged model,
INT8 of every linear layer (the merge inputs included) is measured as well. Goal (issue 8): INT8
within 1 point of fp32.

Figures measured on the development VM, two seeds: docs/measurements.md#int8-accuracy.

Threads: set OMP_NUM_THREADS (e.g. 1 on a shared machine); the script sets none itself.
Run: python benchmarks/int8_accuracy.py [--work DIR] [--r 20] [--num 512] [--scratch-epochs 30] [--retrain-epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rmeeto_export.calibration import METHODS, calibrate, quantize
from rmeeto_export.calibration.smoothing import DEFAULT_ALPHA
from rmeeto_export.calibration.images import load_image
from rmeeto_export.calibration.parity import compare_int8_logits
from rmeeto_export.data import scan_image_folder
from rmeeto_export.export import export_onnx
from rmeeto_export.export.parity import run_onnx, torch_logits
from rmeeto_export.models import create_model, load_weights

DEMO = Path(__file__).with_name("recovery_demo.py")


def _recovery_demo():
    """benchmarks/recovery_demo.py as a module, for its model settings."""
    spec = importlib.util.spec_from_file_location("recovery_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


demo = _recovery_demo()


def demo_weights(work: Path, r: int, scratch_epochs: int, retrain_epochs: int, seed: int) -> tuple[Path, Path]:
    """(unmerged, merged + re-trained) weights of the demo in `work`; runs the demo when they are missing."""
    scratch, merged = work / "scratch" / "model.pth", work / f"merge-r{r}" / "model.pth"
    if not (scratch.is_file() and merged.is_file()):
        subprocess.run([sys.executable, str(DEMO), "--work", str(work), "--r", str(r), "--scratch-epochs",
                        str(scratch_epochs), "--retrain-epochs", str(retrain_epochs), "--seed", str(seed)], check=True)
    return scratch, merged


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def measure(weights: Path, merge_r: int, data: Path, graphs: Path, num: int) -> list[str]:
    """Report lines for one model: fp32 and each INT8 variant, top-1 on val, agreement, parity."""
    model = create_model(demo.MODEL, merge_r=merge_r, num_classes=10, **demo.MODEL_OVERRIDES)
    load_weights(model, str(weights))
    model.eval()
    val = scan_image_folder(str(data)).val
    images = np.stack([load_image(path, model.cfg.img_size) for path, _ in val])
    labels = np.array([label for _, label in val])
    fp32_path = export_onnx(model, graphs / "model.onnx")
    reference = torch_logits(model, torch.from_numpy(images))
    fp32_logits, _ = run_onnx(fp32_path, images)
    fp32_top1 = top1(fp32_logits, labels)
    lines = [f"{weights} (r={merge_r}, tokens per block {model.schedule.tokens_per_block}): PyTorch fp32 top-1 "
             f"{top1(reference, labels):.2f}%",
             f"  {'graph':<28} {'top-1':>7} {'vs fp32':>8} {'agree':>7}   parity vs PyTorch (median/mean cosine, mean/max rel)",
             f"  {'fp32':<28} {fp32_top1:6.2f}%"]
    variants = [(method, alpha, False) for method in METHODS for alpha in (DEFAULT_ALPHA, None)]
    variants += [(method, DEFAULT_ALPHA, True) for method in METHODS if merge_r]
    for method, alpha, quantize_merge_inputs in variants:
        name = f"int8 {method}{'' if alpha else ' no-smooth'}{' (all)' if quantize_merge_inputs else ''}"
        cache = graphs / f"calibration-{method}-{alpha}.json"
        calibrate(fp32_path, cache, str(data), num, method, smoothing_alpha=alpha)
        int8_path = quantize(fp32_path, cache, graphs / f"{name.replace(' ', '-')}.onnx",
                             quantize_merge_inputs=quantize_merge_inputs)
        int8_logits, provider = run_onnx(int8_path, images)
        agreement = 100.0 * float(np.mean(int8_logits.argmax(axis=1) == fp32_logits.argmax(axis=1)))
        parity = compare_int8_logits(int8_logits, reference, provider)
        accuracy = top1(int8_logits, labels)
        lines.append(f"  {name:<28} {accuracy:6.2f}% {accuracy - fp32_top1:+7.2f} {agreement:6.2f}%   "
                     f"{parity.median_cosine:.5f}/{parity.mean_cosine:.5f}, {parity.mean_rel:.4f}/{parity.max_rel:.4f} "
                     f"{'pass' if parity.passed else 'FAIL'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="the demo's folder (default: a temporary one)")
    parser.add_argument("--r", type=int, default=20, help="tokens merged per merge step (passed to the demo)")
    parser.add_argument("--num", type=int, default=512, help="calibration images (from the train split)")
    parser.add_argument("--scratch-epochs", type=int, default=30, help="passed to the demo when it runs")
    parser.add_argument("--retrain-epochs", type=int, default=10, help="passed to the demo when it runs")
    parser.add_argument("--seed", type=int, default=0, help="passed to the demo when it runs")
    args = parser.parse_args()

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="int8-accuracy-")))
        scratch, merged = demo_weights(work, args.r, args.scratch_epochs, args.retrain_epochs, args.seed)
        data = work / "digits"
        lines = measure(scratch, 0, data, work / "int8-unmerged", args.num)
        lines += measure(merged, args.r, data, work / f"int8-merge-r{args.r}", args.num)

    print()
    print(f"model: {demo.MODEL} {demo.MODEL_OVERRIDES}; {args.num} calibration images from train/, "
          "top-1 on val/, ONNX Runtime CPU")
    print(f"int8: every linear layer INT8 except the out_proj each merge matches on, in_proj/out_proj smoothed "
          f"(alpha {DEFAULT_ALPHA}); no-smooth: without smoothing; (all): the merge inputs INT8 too")
    print("\n".join(lines))
    print(f"total time {time.perf_counter() - started:.0f} s (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
