"""INT8 vs fp32 accuracy of an exported Vim, in ONNX Runtime, on a small real dataset (CPU).

The dataset and the small model are the re-training demo's (benchmarks/recovery_demo.py): scikit-learn's
digits written as an ImageFolder, upsampled to the model's input, and a small Vim trained from scratch
with the same settings. With `--work DIR` shared with recovery_demo.py, its trained weights
(DIR/scratch/model.pth) are reused instead of training again; `--weights DIR/retrain-r8/model.pth
--r 8` measures the merged model the demo re-trained with the R-MeeTo recipe.

Steps: export the fp32 graph (plugin form, custom nodes with function bodies), calibrate on the
train split (`--num` images) with each method, write the Q/DQ INT8 graph, and measure top-1 on the
val split for fp32 and INT8 in ONNX Runtime, their agreement, and INT8 parity against PyTorch. With
merging (--r), INT8 of every linear layer including the merge inputs is measured as well.
Goal (issue 8): INT8 within 1 point of fp32.

Threads: set OMP_NUM_THREADS (e.g. 1 on a shared machine); the script sets none itself.
Run: python benchmarks/int8_accuracy.py [--work DIR] [--r 0] [--weights PTH] [--num 512]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rmeeto_export.calibration import METHODS, calibrate, quantize
from rmeeto_export.calibration.images import load_image
from rmeeto_export.calibration.parity import compare_int8_logits
from rmeeto_export.data import MixSettings, scan_image_folder
from rmeeto_export.export import export_onnx
from rmeeto_export.export.parity import run_onnx, torch_logits
from rmeeto_export.models import create_model, load_weights
from rmeeto_export.pipelines.retrain import RetrainConfig, retrain


def _recovery_demo():
    """benchmarks/recovery_demo.py as a module: its dataset writer, model and augmentation settings."""
    path = Path(__file__).with_name("recovery_demo.py")
    spec = importlib.util.spec_from_file_location("recovery_demo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


demo = _recovery_demo()


def scratch_weights(work: Path, data: Path, epochs: int, lr: float, batch_size: int, seed: int) -> Path:
    """The demo's unmerged model trained from scratch: reused if present, else trained like the demo does."""
    weights = work / "scratch" / "model.pth"
    if not weights.is_file():
        retrain(RetrainConfig(
            model=demo.MODEL, data=str(data), out=str(work / "scratch"), epochs=epochs, lr=lr, batch_size=batch_size,
            workers=0, seed=seed, log_every=10**9, model_overrides=demo.MODEL_OVERRIDES, distill_weight=0.0,
            drop_path=0.0, augment=demo.DIGIT_AUGMENT, mix=MixSettings(mixup_alpha=0.0, cutmix_alpha=0.0),
        ))
    return weights


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for data, weights and graphs (default: temp)")
    parser.add_argument("--r", type=int, default=0, help="tokens merged per merge step (0: no merging)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="trained weights to measure (default: the demo's scratch model, trained if missing)")
    parser.add_argument("--num", type=int, default=512, help="calibration images (from the train split)")
    parser.add_argument("--scratch-epochs", type=int, default=20)
    parser.add_argument("--scratch-lr", type=float, default=8e-3, help="at batch 512 (scaled like the recipe's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="int8-accuracy-")))
        data = work / "digits"
        if not (data / "val").is_dir():
            demo.write_digits(data, demo.MODEL_OVERRIDES["img_size"], args.seed)
        weights = args.weights or scratch_weights(work, data, args.scratch_epochs, args.scratch_lr, args.batch_size,
                                                  args.seed)
        model = create_model(demo.MODEL, merge_r=args.r, num_classes=10, **demo.MODEL_OVERRIDES)
        load_weights(model, str(weights))
        model.eval()

        val = scan_image_folder(str(data)).val
        images = np.stack([load_image(path, model.cfg.img_size) for path, _ in val])
        labels = np.array([label for _, label in val])
        graphs = work / f"graphs-r{args.r}-{weights.parent.name}"
        fp32_path = export_onnx(model, graphs / "model.onnx")
        reference = torch_logits(model, torch.from_numpy(images))
        fp32_logits, _ = run_onnx(fp32_path, images)
        rows = [("fp32", top1(fp32_logits, labels), 100.0, None)]
        # The default policy with each method, then every linear layer INT8 (merge inputs included).
        variants = [(method, False) for method in METHODS] + [(method, True) for method in METHODS if args.r]
        for method, quantize_merge_inputs in variants:
            cache = graphs / f"calibration-{method}.json"
            calibrate(fp32_path, cache, str(data), args.num, method)
            suffix = "-all" if quantize_merge_inputs else ""
            int8_path = quantize(fp32_path, cache, graphs / f"model.int8-{method}{suffix}.onnx",
                                 quantize_merge_inputs=quantize_merge_inputs)
            int8_logits, provider = run_onnx(int8_path, images)
            agreement = 100.0 * float(np.mean(int8_logits.argmax(axis=1) == fp32_logits.argmax(axis=1)))
            rows.append((f"int8 {method}{' (all)' if quantize_merge_inputs else ''}", top1(int8_logits, labels),
                         agreement, compare_int8_logits(int8_logits, reference, provider)))

    schedule = model.schedule
    print()
    print(f"weights: {weights}")
    print(f"model: {demo.MODEL} {demo.MODEL_OVERRIDES}, r={args.r} (tokens per block {schedule.tokens_per_block}); "
          f"{len(val)} val images, {args.num} calibration images from train/; ONNX Runtime CPU")
    print(f"PyTorch fp32 top-1 {top1(reference, labels):.2f}%")
    print("int8: linear layers INT8 except the out_proj each merge matches on; (all): those too")
    print(f"{'graph':<22} {'top-1':>7} {'vs fp32':>8} {'agree':>7}   parity vs PyTorch (cosine, mean/max rel)")
    fp32_top1 = rows[0][1]
    for name, accuracy, agreement, parity in rows:
        detail = "" if parity is None else (f"   {parity.mean_cosine:.5f}, {parity.mean_rel:.4f}/{parity.max_rel:.4f}"
                                            f" {'pass' if parity.passed else 'FAIL'}")
        print(f"{name:<22} {accuracy:6.2f}% {accuracy - fp32_top1:+7.2f} {agreement:6.2f}%{detail}")
    print(f"total time {time.perf_counter() - started:.0f} s (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
