"""Everything about a build's input that can be checked before the first stage, checked there.

Bad input then fails with one line and leaves no folder, instead of failing in a late stage after
earlier ones wrote files. Image folders are checked by decoding: every image where a stage reads at
most SAMPLED_IMAGES of them, else a seeded sample of SAMPLED_IMAGES of the ones it will read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from rmeeto_export.errors import UserError
from rmeeto_export.pipelines.folder import MANIFEST, STAGING_PREFIX, Digests
from rmeeto_export.pipelines.settings import BuildSettings, CalibrationSettings, EngineSettings

if TYPE_CHECKING:
    from rmeeto_export.data import ImageFolderSplits

SAMPLED_IMAGES = 32  # decoded per image folder (per split of an ImageFolder tree)
_SAMPLE_SEED = 0


def check_build(settings: BuildSettings, out: Path) -> list[str]:
    """UserError for the first problem found; nothing is written. Returns what was decoded, to be said."""
    settings.check()
    check_out_folder(out)
    decoded = []
    num_classes = None
    if settings.retraining:
        num_classes, decoded = check_training_data(settings)
    check_model(settings, num_classes)
    if settings.calibrating:
        decoded.append(check_calibration_images(settings.calibration, settings.export.batch_range.max))
    check_engine(settings.engine, settings.export.precision)
    return decoded


def check_out_folder(out: Path) -> None:
    """`out` is a build folder, an empty folder, or one that can be created (tried, then removed again)."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"cannot write to output folder {out}: it is not a folder")
        # Staging folders are what a killed run leaves; the next run clears them.
        if any(not p.name.startswith(STAGING_PREFIX) for p in out.iterdir()) and not (out / MANIFEST).is_file():
            raise UserError(f"output folder {out} is not empty and not a build folder (no {MANIFEST}): "
                            "choose a new or empty folder")
        try:
            with tempfile.TemporaryFile(dir=out):
                pass
        except OSError as err:
            raise UserError(f"cannot write to output folder {out}: {err.strerror}") from None
        return
    created = []
    path = out.absolute()
    while not path.exists():
        created.append(path)
        path = path.parent
    try:
        for folder in reversed(created):
            folder.mkdir()
    except OSError as err:
        where = f" at {err.filename}" if err.filename and Path(err.filename) != out.absolute() else ""
        raise UserError(f"cannot create output folder {out}: {err.strerror}{where}") from None
    finally:
        for folder in created:
            if folder.is_dir():
                folder.rmdir()


def check_model(settings: BuildSettings, num_classes: Optional[int]) -> None:
    """The model settings make a model, and the weights (if any) are readable and fit it."""
    import torch

    from rmeeto_export.models import create_model
    from rmeeto_export.models.weights import check_state_dict, read_state_dict

    model_settings = settings.model
    overrides = dict(model_settings.overrides)
    if num_classes is not None:
        overrides.setdefault("num_classes", num_classes)
    with torch.device("meta"):
        model = create_model(model_settings.name, **model_settings.reduction, **overrides)
    if model_settings.weights is not None:
        state = read_state_dict(model_settings.weights, use_ema=model_settings.ema_weights)
        check_state_dict(model, state, model_settings.weights)


def check_training_data(settings: BuildSettings) -> tuple[int, list[str]]:
    """The re-training ImageFolder (see check_training_folder): its class count and what was decoded."""
    splits, decoded = check_training_folder(settings.retrain.data, settings.retrain.batch_size, world_size=1)
    return splits.num_classes, decoded


def check_training_folder(data: str, batch_size: int, world_size: int) -> tuple["ImageFolderSplits", list[str]]:
    """Both splits, enough images for one global batch, and a sample of each split decodes."""
    from rmeeto_export.data import scan_image_folder
    from rmeeto_export.data.loader import check_enough_images

    splits = scan_image_folder(data)
    check_enough_images(len(splits.train), batch_size, world_size)
    decoded = [check_decodable([path for path, _ in samples], f"{split} image")
               for split, samples in (("train", splits.train), ("val", splits.val))]
    return splits, decoded


def check_calibration_images(calibration: CalibrationSettings, batch: int) -> str:
    """The calibration pick holds a batch of images and a sample of it decodes; says what was decoded."""
    from rmeeto_export.calibration.images import list_images, pick

    images = pick(list_images(calibration.data), calibration.num)
    if len(images) < batch:
        raise UserError(f"{len(images)} calibration image(s) in {calibration.data} are fewer than the graph's batch of {batch}")
    return check_decodable(images, "calibration image")


def check_decodable(paths: list[str], role: str) -> str:
    """Decode `paths` (a seeded sample of SAMPLED_IMAGES where there are more); says how many of how many."""
    from rmeeto_export.data.transforms import read_rgb

    total = len(paths)
    if total > SAMPLED_IMAGES:
        rng = np.random.default_rng(_SAMPLE_SEED)
        paths = [paths[i] for i in sorted(rng.choice(total, SAMPLED_IMAGES, replace=False))]
    for path in paths:
        read_rgb(path, role=role)  # UnreadableImage (a UserError) names the file
    sampled = f"a seeded sample of {len(paths)} of the {total}" if len(paths) < total else f"all {total}"
    return f"{sampled} {role}s"


def check_engine(engine: EngineSettings, precision: str) -> None:
    """The TensorRT asked for is installed and can build for the target; --plugins on finds a library built for it."""
    from rmeeto_export.trt.backend import BackendNotInstalled, load_backend
    from rmeeto_export.trt.builder import resolve_target
    from rmeeto_export.trt.plugins import check_library_matches_backend, find_plugin_library, require_plugin_library
    from rmeeto_export.trt.targets import check_precision_supported, rtx_compute_capability_enum

    try:
        backend = load_backend(engine.trt)
    except BackendNotInstalled:
        if engine.trt == "auto":
            return  # the engine stage is skipped and says why
        raise
    cc, _ = resolve_target(backend, engine.target_cc)
    if backend.is_rtx:
        rtx_compute_capability_enum(backend.trt, cc)
    check_precision_supported(precision, cc)
    if engine.plugins == "on":
        library = require_plugin_library(backend, cc)
        if library is not None:
            check_library_matches_backend(library, backend)
    elif engine.plugins == "auto":
        find_plugin_library()  # a RMEETO_TRT_PLUGINS that names no file is an error even here


def plugin_library_digest(engine: EngineSettings, digests: Digests) -> Optional[str]:
    """sha256 of the plugin library an engine build would load (None for the Python plugins or none)."""
    if engine.plugins not in ("auto", "on"):
        return None
    from rmeeto_export.trt.backend import load_backend
    from rmeeto_export.trt.builder import resolve_target
    from rmeeto_export.trt.plugins import find_plugin_library

    try:
        backend = load_backend(engine.trt)
        target, _ = resolve_target(backend, engine.target_cc)
    except UserError:  # no TensorRT, or no GPU for full TensorRT: the engine stage says so itself
        return None
    library = find_plugin_library(backend, target)
    return digests.of(library) if library is not None else None


def images_fingerprint(root: Optional[str], digests: Digests) -> Optional[str]:
    """A digest of the image files under `root` (names, sizes, modification times), not of their pixels."""
    if root is None:
        return None
    return digests.remembered(("images", str(Path(root).resolve())), lambda: _listing_digest(Path(root)))


def _listing_digest(base: Path) -> str:
    from rmeeto_export.data.folder import IMAGE_SUFFIXES

    digest = hashlib.sha256()
    for directory, _, names in sorted(os.walk(base)):
        for name in sorted(names):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = Path(directory) / name
                stat = path.stat()
                digest.update(f"{path.relative_to(base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
