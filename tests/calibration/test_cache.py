"""The calibration cache: JSON round trip, reuse without images, recalibration when settings change, errors."""

import json

import pytest

from rmeeto_export.calibration import calibrate, load_cache
from rmeeto_export.calibration.cache import FORMAT, INT8_MAX, CalibrationCache, save_cache
from rmeeto_export.errors import UserError
from tests.support.graphs import CALIBRATION_IMAGES
from tests.support.images import write_noise_images


def test_cache_round_trips_through_json(cache_path, tmp_path):
    cache = load_cache(cache_path)
    assert cache.amax and all(value > 0 for value in cache.amax.values())
    assert CalibrationCache.from_json(json.loads(json.dumps(cache.to_json()))) == cache
    copy = save_cache(cache, tmp_path / "copy.json")
    assert load_cache(copy) == cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json"]  # atomic write leaves no temp file
    written = json.loads(cache_path.read_text())["activations"]
    for name, value in cache.amax.items():
        assert written[name]["scale"] == pytest.approx(value / INT8_MAX) == cache.scales[name]


def test_a_rebuild_reuses_the_cache_without_reading_images(fp32_graphs, tmp_path):
    images = write_noise_images(tmp_path / "images", 4, seed=3)
    cache = tmp_path / "calibration.json"
    first = calibrate(fp32_graphs["plugin"], cache, str(images), 4, "max")
    for image in images.iterdir():
        image.write_bytes(b"not an image any more")
    # The portable twin shares tensors and weights, so the same cache serves it.
    assert calibrate(fp32_graphs["portable"], cache, str(images), 4, "max") == first
    with pytest.raises(UserError, match="unreadable calibration image"):
        calibrate(fp32_graphs["plugin"], cache, str(images), 4, "max", force=True)
    with pytest.raises(UserError, match="unreadable calibration image"):
        calibrate(fp32_graphs["plugin"], cache, str(images), 4, "percentile")  # other settings: recalibrate
    assert load_cache(cache).settings.method == "max"  # a failed calibration leaves the old cache intact


def test_a_cache_of_an_older_format_is_recalibrated(fp32_graphs, image_folder, tmp_path):
    cache = tmp_path / "calibration.json"
    cache.write_text('{"format": "rmeeto-export/int8-calibration/1", "activations": {}}')
    calibrate(fp32_graphs["plugin"], cache, str(image_folder), 4, "max")
    assert load_cache(cache).amax


def test_imagefolder_tree_calibrates_on_train_only(fp32_graphs, tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "val"):
        for label in ("a", "b"):
            write_noise_images(root / split / label, 2, seed=4)
    for image in (root / "val").rglob("*.png"):
        image.write_bytes(b"unreadable: val must not be read")
    calibrate(fp32_graphs["plugin"], tmp_path / "c.json", str(root), CALIBRATION_IMAGES, "max")
    assert load_cache(tmp_path / "c.json").settings.num_images == CALIBRATION_IMAGES


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "unreadable"), ('{"format": "other"}', "unreadable"), (f'{{"format": "{FORMAT}"}}', "unreadable")],
)
def test_a_broken_cache_is_a_user_error(tmp_path, content, message):
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_cache(path)


def test_bad_inputs_are_one_line_user_errors(fp32_graphs, image_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    model, out = fp32_graphs["plugin"], tmp_path / "c.json"
    cases = [
        (dict(images=str(empty)), "no images in"),
        (dict(images=str(tmp_path / "missing")), "not found"),
        (dict(images=str(image_folder), method="mse"), "unknown calibration method 'mse'"),
        (dict(images=str(image_folder), num=0), "must be positive"),
        (dict(images=str(image_folder), percentile=101.0), "percentile must be"),
        (dict(images=str(image_folder), smoothing_alpha=1.5), "smoothing alpha must be in"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            calibrate(model, out, **kwargs)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="ONNX model not found"):
        calibrate(tmp_path / "none.onnx", out, str(image_folder))
    assert not out.exists()


def test_fewer_images_than_the_batch_is_a_user_error(tiny_model, tmp_path):
    from rmeeto_export.export import export_onnx

    model = export_onnx(tiny_model, tmp_path / "b4.onnx", batch=4)
    images = write_noise_images(tmp_path / "images", 3, seed=5)
    with pytest.raises(UserError, match="fewer than the model's batch of 4"):
        calibrate(model, tmp_path / "c.json", str(images), 8, "max")

