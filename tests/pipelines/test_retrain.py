"""Re-training pipeline on a tiny Vim and a tiny ImageFolder: exact resume, DDP == one process,
one-line CLI errors, atomic checkpoints, weights the loader accepts."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from shutil import rmtree

import pytest
import torch
from click.testing import CliRunner

from rmeeto_export.merge.prune import PruneSettings
from rmeeto_export.models import create_model, load_weights
from rmeeto_export.pipelines import retrain as retrain_module
from rmeeto_export.pipelines.retrain import RetrainConfig, retrain, retrain_command, save_torch
from rmeeto_export.pipelines.settings import ModelSettings, RetrainSettings
from tests.support.images import write_class_folders
from tests.support.models import TRAINABLE_CLASSES, TRAINABLE_VIM

TINY_FLAGS = [flag for key, value in TRAINABLE_VIM.items() for flag in ("--override", f"{key}={value}")]


def write_dataset(root: Path, train_per_class: int = 8, val_per_class: int = 4) -> Path:
    return write_class_folders(root, TRAINABLE_CLASSES, {"train": train_per_class, "val": val_per_class})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": create_model("vim_t", num_classes=TRAINABLE_CLASSES, **TRAINABLE_VIM).state_dict()}, path)
    return path


def tiny_config(dataset: Path, weights: Path | None, out: Path, model: dict | None = None, **changes) -> RetrainConfig:
    # lr 0.05 at batch 512 is 4e-4 at batch 4: large enough that every step visibly moves the weights.
    model_settings = ModelSettings(name="vim_t", weights=weights and str(weights), r=1, overrides=TRAINABLE_VIM)
    training = RetrainSettings(data=str(dataset), epochs=2, batch_size=4, lr=0.05, workers=0, device="cpu")
    return RetrainConfig(dataclasses.replace(model_settings, **(model or {})), dataclasses.replace(training, **changes),
                         out=str(out))


def saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def accuracies(history: list[dict]) -> list[tuple]:
    """Everything a run computes, without its wall-clock timings."""
    return [(e["stage"], e.get("epoch"), e["top1"], e["top5"], e.get("loss")) for e in history]


def test_resume_after_a_kill_continues_exactly(dataset, weights, tmp_path, monkeypatch):
    # The full recipe, randomness included: mixup/cutmix, drop path, random erasing, EMA.
    config = tiny_config(dataset, weights, tmp_path / "full", ema=True, ema_decay=0.9)
    uninterrupted = retrain(config)

    real_save = retrain_module.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # as if killed right after the first epoch's checkpoint

    interrupted = dataclasses.replace(config, out=str(tmp_path / "cut"))
    monkeypatch.setattr(retrain_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        retrain(interrupted)
    monkeypatch.undo()
    assert saved(tmp_path / "cut" / "checkpoint.pth")["epoch"] == 1
    assert not (tmp_path / "cut" / "model.pth").exists()

    resumed = retrain(dataclasses.replace(interrupted, resume=True))
    full, cut, start = saved(uninterrupted.weights), saved(resumed.weights), saved(weights)["model"]
    for entry in ("model", "model_ema"):
        for key, value in full[entry].items():
            assert torch.equal(value, cut[entry][key]), f"{entry}.{key} differs after resuming"
    assert any(not torch.equal(full["model"][k], start[k]) for k in start), "training did not change the weights"
    assert accuracies(resumed.history) == accuracies(uninterrupted.history)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(dataset, weights, tmp_path):
    # Mixup pairs images within each process's batch and drop path draws per process, so those two are
    # off here; data order and per-sample augmentation are the same for any number of processes.
    single = retrain(tiny_config(dataset, weights, tmp_path / "one", epochs=1, drop_path=0.0,
                                 mixup=0, cutmix=0))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "rmeeto_export", "retrain",  # --ratio 0.1 is r=1 here; torchrun's parser takes "--r" for its own
        "--model", "vim_t", "--data", str(dataset), "--weights", str(weights), "--ratio", "0.1", "--epochs", "1",
        "--batch-size", "2", "--lr", "0.05", "--drop-path", "0", "--mixup", "0", "--cutmix", "0",
        "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "two"), *TINY_FLAGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two, start = saved(single.weights)["model"], saved(tmp_path / "two" / "model.pth")["model"], saved(weights)["model"]
    moved = max((one[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3, "the comparison needs weights that training visibly moved"
    # DDP averages two half-batch gradients where one process sums one full batch: the same math in another
    # float32 summation order, which Adam's normalisation can amplify; measured max difference 3e-7 after the
    # 6 steps, against weights that moved by more than 1e-3.
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs")


@pytest.fixture
def cli():
    from rmeeto_export.cli import main

    if "retrain" not in main.commands:  # until the lead lists the command in the group
        main.add_command(retrain_command)
    return main


def run_cli(cli, *args: str):
    return CliRunner().invoke(cli, ["retrain", "--device", "cpu", "--workers", "0", "--batch-size", "2", *args])


def assert_one_line_error(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output


def rename(path: Path, name: str) -> None:
    path.rename(path.with_name(name))


BREAKAGES = {  # id: (what to break in a valid dataset root, expected message)
    "missing-dir": (lambda root: rmtree(root), "data folder not found"),
    "no-val": (lambda root: rename(root / "val", "valid"), "has no val/ folder"),
    "class-mismatch": (lambda root: rename(root / "val" / "class2", "other"), "different classes"),
    "empty-class": (lambda root: (root / "train" / "extra").mkdir(), "has no images"),
    "unreadable-image": (lambda root: (root / "val" / "class1" / "0.png").write_bytes(b"\x89PNG broken"),
                         "unreadable val image"),
}


@pytest.mark.parametrize(("breakage", "expected"), list(BREAKAGES.values()), ids=list(BREAKAGES))
def test_bad_dataset_folders_give_one_line_errors(cli, weights, tmp_path, breakage, expected):
    root = write_dataset(tmp_path / "data", train_per_class=2, val_per_class=1)
    breakage(root)
    result = run_cli(cli, "--model", "vim_t", "--r", "1", "--data", str(root), "--weights", str(weights),
                     "--batch-size", "2", "--out", str(tmp_path / "out"), *TINY_FLAGS)
    assert_one_line_error(result, expected)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_weights_with_another_class_count_give_one_line_error(cli, dataset, tmp_path):
    four_classes = tmp_path / "four.pth"
    torch.save({"model": create_model("vim_t", num_classes=4, **TRAINABLE_VIM).state_dict()}, four_classes)
    result = run_cli(cli, "--model", "vim_t", "--data", str(dataset), "--weights", str(four_classes), *TINY_FLAGS)
    assert_one_line_error(result, "4-class head, but the dataset has 3 class folders")


def test_weights_of_another_model_give_one_line_error(cli, dataset, weights, tmp_path):
    # the tiny checkpoint against a full-size Vim-Ti (embed_dim 192, depth 24)
    result = run_cli(cli, "--model", "vim_t", "--data", str(dataset), "--weights", str(weights))
    assert_one_line_error(result, "does not fit this model")


def test_existing_checkpoint_needs_resume(cli, dataset, weights, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.pth").write_bytes(b"")
    result = run_cli(cli, "--model", "vim_t", "--r", "1", "--data", str(dataset), "--weights", str(weights), "--out",
                     str(tmp_path / "out"), *TINY_FLAGS)
    assert_one_line_error(result, "pass --resume")


def test_resume_with_other_settings_is_refused(dataset, weights, tmp_path):
    retrain(tiny_config(dataset, weights, tmp_path, epochs=1))
    with pytest.raises(retrain_module.UserError, match=r"different settings \(lr\)"):
        retrain(dataclasses.replace(tiny_config(dataset, weights, tmp_path, epochs=1, lr=0.1), resume=True))


def test_final_weights_load_with_the_model_loader(dataset, weights, tmp_path):
    result = retrain(tiny_config(dataset, weights, tmp_path, model=dict(r=None, ratio=0.1), epochs=1))
    model = create_model("vim_t", merge_ratio=0.1, num_classes=TRAINABLE_CLASSES, **TRAINABLE_VIM)
    load_weights(model, str(result.weights))  # strict: every key and shape of the official layout
    assert [e["stage"] for e in result.history] == ["unmerged", "merged", "epoch"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_torch({"epoch": 1}, path)

    def torch_save_that_dies(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(retrain_module.torch, "save", torch_save_that_dies)
    with pytest.raises(OSError, match="disk full"):
        save_torch({"epoch": 2}, path)
    monkeypatch.undo()
    assert saved(path) == {"epoch": 1}  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no temporary file left behind


def test_training_from_scratch_is_reproducible(dataset, tmp_path):
    runs = [retrain(tiny_config(dataset, None, tmp_path / name, distill_weight=0.0, epochs=1))
            for name in ("a", "b")]
    first, second = (saved(run.weights)["model"] for run in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_ema_continues_the_checkpoints_ema(dataset, weights, tmp_path):
    with_ema = tmp_path / "with_ema.pth"
    torch.manual_seed(1)
    released_ema = create_model("vim_t", num_classes=TRAINABLE_CLASSES, **TRAINABLE_VIM).state_dict()
    torch.save({"model": saved(weights)["model"], "model_ema": released_ema}, with_ema)
    # decay 0.999: after 6 steps the average is still 99.4% the released EMA
    result = retrain(tiny_config(dataset, with_ema, tmp_path / "out", epochs=1, ema=True, ema_decay=0.999))
    final = saved(result.weights)
    start = saved(weights)["model"]
    for key, value in released_ema.items():
        assert (final["model_ema"][key] - value).abs().max() <= 0.01 * (final["model"][key] - value).abs().max() + 1e-6
    assert any(not torch.equal(final["model_ema"][k], start[k]) for k in start)


def test_num_classes_override_must_match_the_dataset(dataset, tmp_path):
    config = tiny_config(dataset, None, tmp_path, model=dict(overrides={**TRAINABLE_VIM, "num_classes": 5}), distill_weight=0.0)
    with pytest.raises(retrain_module.UserError, match="asked for 5 classes, but .* has 3 class folders"):
        retrain(config)
    matching = tiny_config(dataset, None, tmp_path, model=dict(overrides={**TRAINABLE_VIM, "num_classes": TRAINABLE_CLASSES}),
                           distill_weight=0.0, epochs=1)
    assert retrain(matching).weights.is_file()


def test_a_pruned_model_retrains_with_the_same_recipe(dataset, weights, tmp_path):
    pruning = dict(r=None, method="prune", keep_ratio=0.5, prune_after="2")  # 5 -> 3 tokens after block 2
    result = retrain(tiny_config(dataset, weights, tmp_path, model=pruning, epochs=1))
    assert [e["stage"] for e in result.history] == ["unmerged", "merged", "epoch"]  # "merged": the reduced model
    schedule = json.loads((tmp_path / "metrics.json").read_text())["schedule"]
    assert schedule["method"] == "prune" and schedule["tokens_per_block"] == [5, 5, 3, 3]
    model = create_model("vim_t", prune=PruneSettings(keep_ratio=0.5, prune_after=(2,)),
                         num_classes=TRAINABLE_CLASSES, **TRAINABLE_VIM)
    load_weights(model, str(result.weights))
