"""Augmentation and eval crops: geometry, determinism from the generator, normalisation."""

import numpy as np
import pytest
from PIL import Image

from rmeeto_export.data import AugmentSettings, eval_transform, train_transform
from rmeeto_export.data.transforms import IMAGENET_MEAN, IMAGENET_STD, random_erase, random_resized_box


def gradient_image(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.broadcast_to((x + y) / 2, (height, width, 3)).astype(np.uint8))


@pytest.mark.parametrize("seed", range(20))
def test_random_resized_box_stays_inside_and_respects_scale(seed):
    rng = np.random.default_rng(seed)
    left, top, right, bottom = random_resized_box(40, 30, (0.3, 0.6), (3 / 4, 4 / 3), rng)
    assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
    area_fraction = (right - left) * (bottom - top) / (40 * 30)
    # rounding width and height to whole pixels moves the area by up to about one row and column
    assert 0.3 - 0.1 <= area_fraction <= 0.6 + 0.1


def test_impossible_crop_falls_back_to_the_central_box():
    # scale > 1 can never fit, so the fallback must produce the centred, aspect-clamped box
    box = random_resized_box(100, 10, (2.0, 3.0), (3 / 4, 4 / 3), np.random.default_rng(0))
    assert box == (43, 0, 56, 10)  # width round(10 * 4 / 3) = 13, left (100 - 13) // 2


def test_train_transform_is_a_function_of_the_generator_seed():
    image, settings = gradient_image(37, 23), AugmentSettings()
    first = train_transform(image, 16, settings, np.random.default_rng(7))
    again = train_transform(image, 16, settings, np.random.default_rng(7))
    other = [train_transform(image, 16, settings, np.random.default_rng(s)) for s in range(8, 12)]
    assert first.shape == (3, 16, 16) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert any(not np.array_equal(first, o) for o in other)


def test_eval_transform_centre_crops_after_resizing_the_shorter_side():
    image = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3)))  # ramp along x
    out = eval_transform(image, 28)
    assert out.shape == (3, 28, 28)
    # shorter side 32 -> int(28 / 0.875) = 32: no resize; the 64-wide ramp is cropped to columns 18..45
    expected_red = ((np.arange(18, 46) * 4) / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(out[0, 0], expected_red, atol=1e-5)


def test_random_erase_fills_one_rectangle_or_nothing():
    erased_any = False
    for seed in range(30):
        chw = np.zeros((3, 20, 20), np.float32)
        random_erase(chw, 0.5, np.random.default_rng(seed))
        changed = np.argwhere(np.any(chw != 0, axis=0))
        if len(changed):
            erased_any = True
            (top, left), (bottom, right) = changed.min(0), changed.max(0)
            box = np.zeros((20, 20), bool)
            box[top : bottom + 1, left : right + 1] = True
            assert np.all(np.any(chw != 0, axis=0) == box)  # one solid rectangle
    assert erased_any
