"""Image data for re-training without torchvision: ImageFolder scanning, augmentation, mixup, loaders."""

from rmeeto_export.data.folder import ImageFolderSplits, scan_image_folder
from rmeeto_export.data.loader import ImageSamples, eval_batches, make_loader, train_batches
from rmeeto_export.data.mixup import MixSettings, mix_batch, smoothed_one_hot
from rmeeto_export.data.transforms import AugmentSettings, eval_transform, train_transform

__all__ = [
    "AugmentSettings",
    "ImageFolderSplits",
    "ImageSamples",
    "MixSettings",
    "eval_batches",
    "eval_transform",
    "make_loader",
    "mix_batch",
    "scan_image_folder",
    "smoothed_one_hot",
    "train_batches",
    "train_transform",
]
