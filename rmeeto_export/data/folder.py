"""ImageFolder layout: DIR/train/<class>/<image> and DIR/val/<class>/<image> (ImageNet's as is).

Scanning only lists files; nothing is decoded here. Every problem a user can fix (missing folders,
empty classes, classes that differ between the splits) is one UserError naming the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rmeeto_export.errors import UserError, short_list

# Pillow decodes all of these; the comparison is case-insensitive because ImageNet uses ".JPEG".
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLITS = ("train", "val")
_LISTED_NAMES = 5  # enough to recognise the problem without flooding one error line

Sample = tuple[str, int]  # (image path, class index)


@dataclass(frozen=True)
class ImageFolderSplits:
    """Class names (sorted folder names; index = label) and the samples of both splits."""

    root: str
    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _class_folders(split_dir: Path) -> list[Path]:
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image files>)")
    return folders


def _scan_split(split_dir: Path) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    images_per_class: dict[str, list[str]] = {}
    for folder in _class_folders(split_dir):
        images = sorted(str(p) for p in folder.rglob("*") if _is_image(p))
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise UserError(f"class folder {folder} has no images (looked for {suffixes})")
        images_per_class[folder.name] = images
    return tuple(images_per_class), images_per_class


def _check_same_classes(root: Path, train: tuple[str, ...], val: tuple[str, ...]) -> None:
    only_train = sorted(set(train) - set(val))
    only_val = sorted(set(val) - set(train))
    if only_train or only_val:
        parts = [f"only in train: {short_list(only_train, _LISTED_NAMES)}" if only_train else "",
                 f"only in val: {short_list(only_val, _LISTED_NAMES)}" if only_val else ""]
        raise UserError(f"{root}: train and val have different classes ({'; '.join(p for p in parts if p)})")


def scan_image_folder(root: str) -> ImageFolderSplits:
    """List DIR/train and DIR/val; labels index the sorted class folder names (as torchvision's ImageFolder)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"data folder not found: {root}")
    missing = [split for split in SPLITS if not (root_path / split).is_dir()]
    if missing:
        raise UserError(f"{root} has no {' or '.join(s + '/' for s in missing)} folder (expected {root}/train/<class>/... "
                        f"and {root}/val/<class>/...)")
    train_classes, train_images = _scan_split(root_path / "train")
    val_classes, val_images = _scan_split(root_path / "val")
    _check_same_classes(root_path, train_classes, val_classes)

    def samples(images: dict[str, list[str]]) -> tuple[Sample, ...]:
        return tuple((path, label) for label, name in enumerate(train_classes) for path in images[name])

    return ImageFolderSplits(str(root_path), train_classes, samples(train_images), samples(val_images))
