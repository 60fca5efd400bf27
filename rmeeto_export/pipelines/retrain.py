"""Re-training a merged Vim with the R-MeeTo recipe (docs/rmeeto.md#re-training-recipe), on one process or under torchrun.

The student is the merged model, the teacher the same weights without merging (eval mode, no
grad). Loss = soft-target cross-entropy (mixup/cutmix, label smoothing) + distill_weight * KL.

KL direction and temperature: KL(teacher || student) = sum_c p_t * (log p_t - log p_s), averaged
over the batch, at temperature 1. This is what the official code computes
(F.kl_div(log_softmax(student), log_softmax(teacher), log_target=True, reduction="batchmean")),
which the paper writes loosely as a KL between student and teacher. The forward direction makes
the student cover all of the teacher's probability mass, and temperature 1 keeps the recipe's
0.5 weight meaning what it meant for the published results.

Differences from the official training script, on purpose: the cosine schedule steps per
iteration instead of per epoch (smoother for 3-epoch runs, same end points); RandAugment and the
repeated-augmentation sampler are not implemented (rmeeto_export.data.transforms says why).

Determinism: data order, augmentation, mixup and drop-path randomness are seeded from
(seed, epoch, rank[, step]) at the start of each epoch, so a run resumed from an epoch checkpoint
continues exactly as the uninterrupted run would have, without carrying generator states.

Distributed: launch with torchrun (env:// rendezvous; NCCL on CUDA, Gloo on CPU). --batch-size is
per process; the learning rate scales with the global batch (lr * global_batch / 512).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import click
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rmeeto_export.data import ImageSamples, eval_batches, make_loader, mix_batch, train_batches
from rmeeto_export.data.loader import Batch, steps_per_epoch
from rmeeto_export.errors import UserError, first_line
from rmeeto_export.files import atomic_open, write_json_atomic
from rmeeto_export.models import Vim, create_model
from rmeeto_export.models.weights import check_state_dict, read_state_dict
from rmeeto_export.pipelines.checks import check_training_folder
from rmeeto_export.pipelines.settings import ModelSettings, RetrainSettings, check_teacher, from_options
from rmeeto_export.pipelines.settings import options as settings_options
from rmeeto_export.progress import progress

CHECKPOINT_NAME = "checkpoint.pth"
WEIGHTS_NAME = "model.pth"
METRICS_NAME = "metrics.json"
LR_REFERENCE_BATCH = 512
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # keys: settings.AMP_CHOICES
# Settings that do not change what is computed; a resumed run may change them freely.
RUNTIME_FIELDS = frozenset({"data", "weights", "workers", "log_every", "device"})
_TORCH_STREAM = 2  # seed streams, apart from the data loader's 0 (order) and 1 (augmentation)
_MIX_STREAM = 3

Log = Callable[[str], None]


@dataclass(frozen=True)
class RetrainConfig:
    """One re-training run: the model and recipe settings `build` shares, and where the run writes."""

    model: ModelSettings
    training: RetrainSettings
    out: str = "retrain-out"
    resume: bool = False


@dataclass(frozen=True)
class RetrainResult:
    weights: Path  # WEIGHTS_NAME in the output folder: {"model": ..., ["model_ema": ...]}
    history: list[dict[str, Any]]  # accuracies: unmerged, merged before training, every epoch


@dataclass(frozen=True)
class Processes:
    """This process's place in the (possibly single-process) job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ----------------------------------------------------------------------------------------------
# Checks and setup


def check_config(config: RetrainConfig) -> None:
    config.model.check()
    config.training.check()
    if config.training.data is None:
        raise UserError("re-training needs --data (an ImageFolder root with train/ and val/)")
    check_teacher(config.model, config.training)


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but PyTorch sees no CUDA GPU")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def start_processes(device_choice: str) -> Processes:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, ...) if there is one."""
    device = resolve_device(device_choice)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Processes(rank, dist.get_world_size() if dist.is_initialized() else 1, device)


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixing all parts (SeedSequence hashing, not arithmetic that could collide)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def read_teacher_state(weights: str, num_classes: int, use_ema: bool) -> dict[str, Tensor]:
    state = read_state_dict(weights, use_ema)
    head = state.get("head.weight")
    if head is not None and head.shape[0] != num_classes:
        raise UserError(f"{weights} has a {head.shape[0]}-class head, but the dataset has {num_classes} class "
                        "folders; the re-training data must have the classes the model was trained on")
    return state


def read_ema_state(weights: str) -> Optional[dict[str, Tensor]]:
    """The checkpoint's "model_ema" entry (the official Vim-B file has one), or None when it has none."""
    try:
        return read_state_dict(weights, use_ema=True)
    except UserError:  # no such entry; the file itself was already read once for the model
        return None


def build_models(config: RetrainConfig, num_classes: int, state: Optional[dict[str, Tensor]]) -> tuple[Vim, Vim]:
    """(student: merged, with drop path; unmerged: same weights, eval mode, frozen)."""
    requested = config.model.overrides.get("num_classes", num_classes)
    if requested != num_classes:
        raise UserError(f"the model is asked for {requested} classes, but {config.training.data} has {num_classes} class folders")
    common = {**config.model.overrides, "num_classes": num_classes}
    student = create_model(config.model.name, **config.model.reduction,
                           drop_path_rate=config.training.drop_path, **common)
    unmerged = create_model(config.model.name, **common)
    if state is not None:
        check_state_dict(student, state, config.model.weights)
        student.load_state_dict(state, strict=True)
    unmerged.load_state_dict(student.state_dict(), strict=True)
    unmerged.eval().requires_grad_(False)
    return student, unmerged


# ----------------------------------------------------------------------------------------------
# Recipe pieces


def scaled_lr(base_lr: float, global_batch: int) -> float:
    return base_lr * global_batch / LR_REFERENCE_BATCH


def cosine_lr(step: int, total_steps: int, peak: float, minimum: float) -> float:
    """Cosine from `peak` at step 0 to `minimum` at `total_steps`, no warmup.

    A small global batch can scale the peak below the minimum; the schedule then stays flat at the
    peak instead of rising.
    """
    minimum = min(minimum, peak)
    progress = min(step / max(total_steps, 1), 1.0)
    return minimum + 0.5 * (peak - minimum) * (1.0 + math.cos(math.pi * progress))


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher || student) at temperature 1, summed over classes, averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits.float(), dim=-1), F.log_softmax(teacher_logits.float(), dim=-1),
                    reduction="batchmean", log_target=True)


class ExponentialAverage:
    """EMA of the student's weights (timm's ModelEma rule: ema = decay * ema + (1 - decay) * weights)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for average, current in zip(self.model.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current, 1.0 - self.decay)
            else:
                average.copy_(current)


# ----------------------------------------------------------------------------------------------
# Files


def save_torch(obj: Any, path: Path) -> None:
    with atomic_open(path) as stream:
        torch.save(obj, stream)


def recipe_fingerprint(config: RetrainConfig, world_size: int) -> str:
    """What a resumed run must share with the run that wrote the checkpoint (the global batch included)."""
    settings = {**dataclasses.asdict(config.model), **dataclasses.asdict(config.training)}
    recipe = {k: v for k, v in settings.items() if k not in RUNTIME_FIELDS}
    recipe["global_batch"] = config.training.batch_size * world_size
    del recipe["batch_size"]
    return json.dumps(recipe, sort_keys=True)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise UserError(f"{path} is not a readable checkpoint ({first_line(err)})") from err
    if checkpoint.get("recipe") != fingerprint:
        saved = json.loads(checkpoint.get("recipe", "{}"))
        current = json.loads(fingerprint)
        changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        raise UserError(f"{path} was written with different settings ({', '.join(changed)}); "
                        "resume with the same settings or use another --out")
    return checkpoint


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def batches_on(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Move batches to the device; an image that did not decode is a UserError here, in the main process."""
    batch: Batch
    for batch in loader:
        images, labels, errors = batch
        if errors:
            raise UserError(errors[0] + (f" (and {len(errors) - 1} more in the same batch)" if len(errors) > 1 else ""))
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def sum_over_processes(values: list[float], processes: Processes) -> list[float]:
    totals = torch.tensor(values, dtype=torch.float64, device=processes.device)
    if processes.world_size > 1:
        dist.all_reduce(totals)
    return totals.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageSamples, config: RetrainConfig, processes: Processes,
             log: Optional[Log] = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) over the whole val split, shared out over the processes.

    log: where the main process reports its progress through the split (none without it).
    """
    was_training = model.training
    model.eval()
    batches = eval_batches(len(dataset), config.training.batch_size, processes.world_size, processes.rank)
    loaded = batches_on(make_loader(dataset, batches, config.training.workers), processes.device)
    if log is not None and processes.is_main:
        loaded = progress(loaded, "validation", total=len(batches), log=log)
    correct1 = correct5 = seen = 0.0
    for images, labels in loaded:
        with autocast(processes.device, config.training.amp):
            logits = model(images)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=-1).sum().item()
        seen += labels.numel()
    model.train(was_training)
    correct1, correct5, seen = sum_over_processes([correct1, correct5, seen], processes)
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen}


@dataclass
class Trainer:
    """One process's training state; `student` may be DDP-wrapped, `student_module` never is."""

    config: RetrainConfig
    processes: Processes
    student: nn.Module
    student_module: Vim
    teacher: Optional[Vim]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Optional[ExponentialAverage]
    num_classes: int
    steps_per_epoch: int
    peak_lr: float
    log: Log

    def loss(self, images: Tensor, targets: Tensor) -> Tensor:
        with autocast(self.processes.device, self.config.training.amp):
            logits = self.student(images)
            loss = soft_target_cross_entropy(logits, targets)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
                loss = loss + self.config.training.distill_weight * distillation_kl(logits, teacher_logits)
        return loss

    def train_epoch(self, epoch: int, dataset: ImageSamples) -> dict[str, float]:
        config, processes = self.config, self.processes
        torch.manual_seed(seed_for(config.model.seed, epoch, processes.rank, _TORCH_STREAM))  # drop path
        batches = train_batches(len(dataset), config.training.batch_size, processes.world_size, processes.rank, config.model.seed, epoch)
        self.student.train()
        started = interval_start = time.perf_counter()
        loss_sum, interval_steps = 0.0, 0
        for step, (images, labels) in enumerate(batches_on(make_loader(dataset, batches, config.training.workers), processes.device)):
            global_step = epoch * self.steps_per_epoch + step
            lr = cosine_lr(global_step, config.training.epochs * self.steps_per_epoch, self.peak_lr, config.training.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            mix_rng = np.random.default_rng([config.model.seed, epoch, processes.rank, step, _MIX_STREAM])
            images, targets = mix_batch(images, labels, self.num_classes, config.training.mix, mix_rng)
            loss = self.loss(images, targets)
            if not torch.isfinite(loss):
                raise UserError(f"loss is {loss.item()} at epoch {epoch + 1} step {step + 1}; lower --lr or use --amp none")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.student_module)
            loss_sum += loss.item()
            interval_steps += 1
            if processes.is_main and (step + 1) % config.training.log_every == 0:
                now = time.perf_counter()
                rate = interval_steps * config.training.batch_size * processes.world_size / (now - interval_start)
                self.log(f"epoch {epoch + 1}/{config.training.epochs} step {step + 1}/{self.steps_per_epoch} "
                         f"loss {loss.item():.4f} lr {lr:.3g} {rate:.1f} images/s")
                interval_start, interval_steps = now, 0
        elapsed = time.perf_counter() - started
        images_seen = self.steps_per_epoch * config.training.batch_size * processes.world_size
        (mean_loss,) = sum_over_processes([loss_sum / self.steps_per_epoch], processes)
        return {"loss": mean_loss / processes.world_size, "images_per_s": images_seen / elapsed, "seconds": elapsed}

    def checkpoint(self, epochs_done: int, history: list[dict[str, Any]], fingerprint: str) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.student_module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epochs_done,
            "history": history,
            "recipe": fingerprint,
            "schedule": self.student_module.schedule.to_json(),
        }
        if self.ema is not None:
            state["model_ema"] = self.ema.model.state_dict()
        return state

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.student_module.load_state_dict(checkpoint["model"], strict=True)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None:
            self.ema.model.load_state_dict(checkpoint["model_ema"], strict=True)


def save_checkpoint(trainer: Trainer, out: Path, epochs_done: int, history: list[dict[str, Any]], fingerprint: str) -> None:
    """Rank 0 writes; every process waits, so that no one runs ahead of a checkpoint being written."""
    if trainer.processes.is_main:
        save_torch(trainer.checkpoint(epochs_done, history, fingerprint), out / CHECKPOINT_NAME)
    if trainer.processes.world_size > 1:
        dist.barrier()


def record(history: list[dict[str, Any]], entry: dict[str, Any], processes: Processes, log: Log) -> None:
    history.append(entry)
    if processes.is_main:
        extra = "".join(f", {k} {v:.4g}" for k, v in entry.items() if k in ("loss", "images_per_s"))
        log(f"{entry['stage']}{'' if 'epoch' not in entry else ' ' + str(entry['epoch'])}: "
            f"top-1 {entry['top1']:.2f}% top-5 {entry['top5']:.2f}%{extra}")


def make_trainer(config: RetrainConfig, processes: Processes, student: Vim, teacher: Optional[Vim],
                 num_classes: int, num_train: int, log: Log) -> Trainer:
    global_batch = config.training.batch_size * processes.world_size
    peak_lr = scaled_lr(config.training.lr, global_batch)
    optimizer = torch.optim.AdamW(student.parameters(), lr=peak_lr, weight_decay=config.training.weight_decay)
    wrapped: nn.Module = student
    if processes.world_size > 1:
        device_ids = [processes.device.index] if processes.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(student, device_ids=device_ids)
    return Trainer(
        config=config,
        processes=processes,
        student=wrapped,
        student_module=student,
        teacher=teacher,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(processes.device.type, enabled=config.training.amp == "fp16"),
        ema=ExponentialAverage(student, config.training.ema_decay) if config.training.ema else None,
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch(num_train, global_batch),
        peak_lr=peak_lr,
        log=log,
    )


def print_progress(message: str) -> None:
    print(message, flush=True)


def retrain(config: RetrainConfig, log: Log = print_progress) -> RetrainResult:
    """Fine-tune the merged model (see the module docstring); returns the final weights' path and accuracies."""
    check_config(config)
    processes = start_processes(config.training.device)
    if config.training.amp != "none" and processes.device.type != "cuda":
        raise UserError("--amp bf16/fp16 needs a CUDA GPU; on CPU train in fp32 (--amp none)")
    # Before any model is built or file written: both splits, a global batch of images, a sample decodes.
    splits, _ = check_training_folder(config.training.data, config.training.batch_size, processes.world_size)
    state = read_teacher_state(config.model.weights, splits.num_classes, config.model.ema_weights) if config.model.weights else None
    torch.manual_seed(config.model.seed)  # the initialisation of a run without --weights is reproducible too
    student, unmerged = build_models(config, splits.num_classes, state)
    del state
    student.to(processes.device)
    unmerged.to(processes.device)

    out = Path(config.out)
    fingerprint = recipe_fingerprint(config, processes.world_size)
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME, fingerprint) if config.resume else None
    if checkpoint is None and (out / CHECKPOINT_NAME).exists():
        raise UserError(f"{out / CHECKPOINT_NAME} exists; pass --resume to continue it or choose another --out")
    if processes.is_main:
        out.mkdir(parents=True, exist_ok=True)

    size = student.cfg.img_size
    train_set = ImageSamples(splits.train, size, config.training.augment, config.model.seed)
    val_set = ImageSamples(splits.val, size, None, config.model.seed)
    teacher = unmerged if config.training.distill_weight > 0 else None
    trainer = make_trainer(config, processes, student, teacher, splits.num_classes, len(train_set), log)
    if processes.is_main:
        schedule = student.schedule
        log(f"re-training {config.model.name} ({schedule.summary()}, tokens {schedule.tokens_per_block[0]} -> "
            f"{schedule.tokens_per_block[-1]}) on {len(train_set)} images, {splits.num_classes} classes, "
            f"{processes.world_size} process(es) on {processes.device.type}, global batch "
            f"{config.training.batch_size * processes.world_size}, lr {trainer.peak_lr:.3g}")

    ema_state = read_ema_state(config.model.weights) if trainer.ema is not None and config.model.weights else None
    if ema_state is not None:  # as the official recipe: the EMA continues the released one
        check_state_dict(trainer.ema.model, ema_state, f"{config.model.weights} (model_ema)")
        trainer.ema.model.load_state_dict(ema_state, strict=True)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if checkpoint is not None:
        trainer.restore(checkpoint)
        history, start_epoch = list(checkpoint["history"]), int(checkpoint["epoch"])
        if processes.is_main:
            log(f"resumed from {out / CHECKPOINT_NAME} after epoch {start_epoch}")
    else:
        record(history, {"stage": "unmerged", **evaluate(unmerged, val_set, config, processes, log)}, processes, log)
        if student.schedule.reduces:  # "merged": the reduced model, merged or pruned
            record(history, {"stage": "merged", **evaluate(student, val_set, config, processes, log)}, processes, log)
    del unmerged  # the trainer keeps it as the teacher when distilling

    for epoch in range(start_epoch, config.training.epochs):
        stats = trainer.train_epoch(epoch, train_set)
        evaluated = trainer.ema.model if trainer.ema is not None else student
        accuracy = evaluate(evaluated, val_set, config, processes, log)
        record(history, {"stage": "ema" if trainer.ema else "epoch", "epoch": epoch + 1, **accuracy, **stats},
               processes, log)
        save_checkpoint(trainer, out, epoch + 1, history, fingerprint)

    weights = out / WEIGHTS_NAME
    if processes.is_main:
        final = {"model": student.state_dict()}
        if trainer.ema is not None:
            final["model_ema"] = trainer.ema.model.state_dict()
        save_torch(final, weights)
        write_json_atomic(out / METRICS_NAME, {"history": history, "schedule": json.loads(student.schedule.to_json()),
                                               "classes": list(splits.classes)})
    if processes.world_size > 1:
        dist.barrier()
    return RetrainResult(weights, history)


# ----------------------------------------------------------------------------------------------
# Command line (the lead adds it to the CLI group with main.add_command(retrain_command))


@click.command("retrain")
@settings_options(ModelSettings, RetrainSettings)
@click.option("--out", default=RetrainConfig.out, show_default=True, help="folder for checkpoint.pth, model.pth, metrics.json")
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint.pth")
def retrain_command(out: str, resume: bool, **options: Any) -> None:
    """Re-train a merged Vim with the R-MeeTo recipe (distillation from the unmerged model).

    Multi-GPU / multi-node: torchrun --nproc-per-node N -m rmeeto_export retrain ... (--merge-r, not --r)
    """
    config = RetrainConfig(ModelSettings(**from_options(ModelSettings, options)),
                           RetrainSettings(**from_options(RetrainSettings, options)), out=out, resume=resume)
    try:
        result = retrain(config, log=click.echo)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"wrote {result.weights}")
