"""Batch plans: world-size independent global batches, exact coverage of the val split, decode errors."""

import numpy as np
import pytest

from rmeeto_export.data import ImageSamples, eval_batches, make_loader, train_batches
from rmeeto_export.errors import UserError


def test_processes_slice_the_single_process_global_batches():
    single = train_batches(23, 6, world_size=1, rank=0, seed=5, epoch=2)
    ranks = [train_batches(23, 3, world_size=2, rank=r, seed=5, epoch=2) for r in range(2)]
    assert len(single) == 3  # 23 // 6, the partial batch dropped
    assert all(len(batch) == 6 for batch in single)
    assert [a + b for a, b in zip(*ranks)] == single


def test_epochs_reshuffle_and_repeat_exactly():
    epoch0 = train_batches(50, 5, 1, 0, seed=1, epoch=0)
    assert train_batches(50, 5, 1, 0, seed=1, epoch=0) == epoch0
    assert [i for _, i in epoch0[0]] != [i for _, i in train_batches(50, 5, 1, 0, seed=1, epoch=1)[0]]


def test_fewer_images_than_a_global_batch_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one global batch"):
        train_batches(7, 4, world_size=2, rank=0, seed=0, epoch=0)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches_cover_every_sample_once(world_size):
    seen = [i for rank in range(world_size) for batch in eval_batches(10, 3, world_size, rank) for _, i in batch]
    assert sorted(seen) == list(range(10))


def test_unreadable_file_comes_back_as_an_error_not_an_exception(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    dataset = ImageSamples(((str(broken), 0),), size=8, augment=None, seed=0)
    images, labels, errors = next(iter(make_loader(dataset, eval_batches(1, 1, 1, 0), workers=0)))
    assert images.shape == (1, 3, 8, 8) and labels.tolist() == [0]
    assert len(errors) == 1 and errors[0].startswith(f"unreadable image {broken}")
    assert np.isfinite(images.numpy()).all()
