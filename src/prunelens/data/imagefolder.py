"""ImageNet (and any ImageFolder-style dataset) from a local folder: ``ROOT/train/<class>/*.JPEG``,
``ROOT/val/<class>/*.JPEG``.

Images are decoded with Pillow and transformed with torchvision's transforms v2 on uint8 tensors:
training — RandomResizedCrop + horizontal flip; evaluation — resize of the shorter side to
``resize_size`` + centre crop to ``image_size`` (torchvision's reference recipe). The ImageNet
validation set has the labels the test split needs, so the splits are ``train`` and ``val``
(suites evaluate on the last split).
"""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from prunelens._compat import torchvision
from prunelens.data.registry import DatasetOptions, ExistingFolder, register_dataset
from prunelens.errors import DataError


class ImageFolderOptions(DatasetOptions):
    root: ExistingFolder
    image_size: int = Field(224, ge=8)
    resize_size: int = Field(256, ge=8)
    train_dir: str = "train"
    val_dir: str = "val"



def transforms(options: ImageFolderOptions, train: bool):
    torchvision()  # the CPU-build workaround must run before any torchvision submodule import
    from torchvision.transforms import v2 as T
    if train:
        steps = [T.ToImage(), T.RandomResizedCrop(options.image_size, antialias=True),
                 T.RandomHorizontalFlip()]
    else:
        steps = [T.ToImage(), T.Resize(options.resize_size, antialias=True),
                 T.CenterCrop(options.image_size)]
    return T.Compose([*steps, T.ToDtype(torch.float32, scale=True)])


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split folder: items ``(image in [0, 1], label)``; ``class_names`` from the folder names."""

    def __init__(self, folder: Path, transform) -> None:
        if not folder.is_dir():
            raise DataError(f"split folder {folder} does not exist (expected one folder per class in it)")
        torchvision()
        from torchvision.datasets import ImageFolder
        self.inner = ImageFolder(str(folder), transform=transform)
        self.class_names = list(self.inner.classes)
        self.num_classes = len(self.class_names)
        root = Path(self.inner.root)
        self.item_ids = [str(Path(p).relative_to(root)) for p, _ in self.inner.samples]

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        from PIL import UnidentifiedImageError
        try:
            return self.inner[i]
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image file {self.inner.samples[i][0]} ({exc}); replace or "
                            "remove it") from None


def _build(options: ImageFolderOptions, split: str, seed: int, augment: bool = True) -> ImageFolderSplit:
    root = Path(options.root).expanduser()
    folder = root / (options.train_dir if split == "train" else options.val_dir)
    try:
        return ImageFolderSplit(folder, transforms(options, train=split == "train" and augment))
    except (FileNotFoundError, RuntimeError) as exc:  # ImageFolder: no class folders / no images
        raise DataError(f"cannot read {folder}: {exc}") from None


register_dataset("imagenet", ImageFolderOptions, splits=("train", "val"))(_build)
register_dataset("imagefolder", ImageFolderOptions, splits=("train", "val"))(_build)
