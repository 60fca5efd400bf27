"""Datasets and batch plans for single- and multi-process training.

Determinism is by construction rather than by saved generator states: the training order of an
epoch is a permutation seeded by (seed, epoch), and each sample's augmentation draws from a
generator seeded by (seed, epoch, index). Data order and augmentation therefore do not depend on
the number of loader workers or processes, a resumed run sees exactly the batches it would have
seen, and N processes with per-process batch B see the same global batches as one process with
batch N * B (each process takes its slice of every global batch).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rmeeto_export.data.folder import Sample
from rmeeto_export.data.transforms import AugmentSettings, UnreadableImage, eval_transform, read_rgb, train_transform
from rmeeto_export.errors import UserError

SampleKey = tuple[int, int]  # (epoch, index into the sample list)
Batch = tuple[torch.Tensor, torch.Tensor, list[str]]  # images, labels, load errors
_ORDER_STREAM = 0  # keeps the order generator's seed apart from the per-sample ones
_SAMPLE_STREAM = 1


class ImageSamples(Dataset):
    """Decoded, transformed images; `augment` None means the eval transform.

    A file that does not decode is not raised in the loader worker (where the message would come
    back wrapped in a worker traceback) but returned as an error string for the main process.
    """

    def __init__(self, samples: tuple[Sample, ...], size: int, augment: Optional[AugmentSettings], seed: int) -> None:
        self.samples = samples
        self.size = size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> tuple[np.ndarray, int, str]:
        epoch, index = key
        path, label = self.samples[index]
        try:
            image = read_rgb(path)
        except UnreadableImage as err:
            return np.zeros((3, self.size, self.size), np.float32), label, str(err)
        if self.augment is None:
            return eval_transform(image, self.size), label, ""
        rng = np.random.default_rng([self.seed, epoch, index, _SAMPLE_STREAM])
        return train_transform(image, self.size, self.augment, rng), label, ""


def collate(items: list[tuple[np.ndarray, int, str]]) -> Batch:
    images = torch.from_numpy(np.stack([image for image, _, _ in items]))
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    return images, labels, [error for _, _, error in items if error]


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
    """Full global batches per epoch (the last partial one is dropped, as in the official recipe)."""
    return num_samples // global_batch


def check_enough_images(num_samples: int, batch_size: int, world_size: int) -> None:
    if steps_per_epoch(num_samples, batch_size * world_size) == 0:
        raise UserError(f"{num_samples} training images are fewer than one global batch of {batch_size * world_size} "
                        f"({world_size} process(es) x batch size {batch_size}); lower --batch-size")


def train_batches(num_samples: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int) -> list[list[SampleKey]]:
    """This process's batches of one training epoch: its slice of each shuffled global batch."""
    check_enough_images(num_samples, batch_size, world_size)
    global_batch = batch_size * world_size
    order = np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_samples)
    return [
        [(epoch, int(i)) for i in order[start + rank * batch_size : start + (rank + 1) * batch_size]]
        for start in range(0, steps_per_epoch(num_samples, global_batch) * global_batch, global_batch)
    ]


def eval_batches(num_samples: int, batch_size: int, world_size: int, rank: int) -> list[list[SampleKey]]:
    """Every sample exactly once over all processes (rank, rank + world_size, ...), in batches."""
    mine = list(range(rank, num_samples, world_size))
    return [[(0, i) for i in mine[start : start + batch_size]] for start in range(0, len(mine), batch_size)]


def make_loader(dataset: ImageSamples, batches: list[list[SampleKey]], workers: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available())
