"""ImageNet (and any ImageFolder-style dataset) from a local folder: ``ROOT/train/<class>/*.JPEG``,
``ROOT/val/<class>/*.JPEG``.

Images are decoded (with Pillow in the loader workers, or on the GPU: ``decode``, see
:mod:`prunelens.data.device_input`) and transformed with torchvision's transforms v2 on uint8
tensors, one transform object for both paths, as torchvision's references/classification/presets.py (``ClassificationPresetTrain`` /
``ClassificationPresetEval``) with its option names: training — RandomResizedCrop to
``train_crop_size``, horizontal flip, the ``auto_augment`` policy, random erasing with probability
``random_erase``; evaluation — resize of the shorter side to ``val_resize_size``, centre crop to
``val_crop_size``; all resampling with ``interpolation``. Images leave in [0, 1]: models normalise
through their spec. The ImageNet validation set has the labels the test split needs, so the
splits are ``train`` and ``val`` (suites evaluate on the last split).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from prunelens._compat import torchvision
from prunelens.data.device_input import DECODE_CHOICES, EncodedImages
from prunelens.data.images import unreadable_image
from prunelens.data.registry import DatasetOptions, ExistingFolder, register_dataset
from prunelens.errors import DataError
from prunelens.models.spec import IMAGENET_MEAN


class ImageFolderOptions(DatasetOptions):
    #: keys renamed to torchvision's names (prunelens 0.2): old → new
    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {"image_size": ("train_crop_size", "val_crop_size"),
                                                      "resize_size": ("val_resize_size",)}

    root: ExistingFolder
    train_crop_size: int = Field(224, ge=8, description="side of the training crops")
    val_resize_size: int = Field(256, ge=8, description="evaluation: shorter side after resizing")
    val_crop_size: int = Field(224, ge=8, description="evaluation: side of the centre crop")
    interpolation: Literal["bilinear", "bicubic", "nearest", "nearest-exact"] = "bilinear"
    auto_augment: Literal["ra", "ta_wide", "augmix", "imagenet", "cifar10", "svhn"] | None = Field(
        None, description="ra: RandAugment, ta_wide: TrivialAugmentWide, augmix: AugMix, else the "
                          "AutoAugment policy of that name")
    ra_magnitude: int = Field(9, ge=0, le=30, description="auto_augment ra: RandAugment's magnitude")
    augmix_severity: int = Field(3, ge=1, le=10, description="auto_augment augmix: AugMix's severity")
    random_erase: float = Field(0.0, ge=0, le=1, description="probability of RandomErasing per image")
    train_dir: str = "train"
    val_dir: str = "val"
    decode: Literal[DECODE_CHOICES] = Field("auto", description=(
        "where images are decoded and transformed: cpu (Pillow in the loader workers), gpu (nvJPEG "
        "and the transforms on the CUDA device; workers only read files) or auto (gpu where the "
        "device is CUDA and torchvision.io decodes on it, else cpu). How fast, not what: not part "
        "of the run's identity"))

    @model_validator(mode="after")
    def _augmix_resampling(self) -> ImageFolderOptions:
        if self.auto_augment == "augmix" and self.interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"auto_augment augmix transforms tensors, which torchvision cannot "
                             f"resample with interpolation {self.interpolation}: use bilinear")
        return self


def _policy(options: ImageFolderOptions, interpolation):
    """The augmentation policy, as ClassificationPresetTrain picks it from ``--auto-augment``."""
    from torchvision.transforms import v2 as T
    name = options.auto_augment
    if name == "ra":
        return T.RandAugment(interpolation=interpolation, magnitude=options.ra_magnitude)
    if name == "ta_wide":
        return T.TrivialAugmentWide(interpolation=interpolation)
    if name == "augmix":
        return T.AugMix(interpolation=interpolation, severity=options.augmix_severity)
    return T.AutoAugment(policy=T.AutoAugmentPolicy(name), interpolation=interpolation)


#: interpolations whose resize of uint8 tensors (antialiased) gives Pillow's within a few grey
#: levels (tests/test_input_paths.py); torch's ``nearest`` picks other pixels than Pillow's
TENSOR_RESAMPLING = ("bilinear", "bicubic")
#: interpolations torchvision's tensor affine ops (the policies' rotate/shear/translate) take
TENSOR_AFFINE = ("bilinear", "nearest")


def gpu_problem(options: ImageFolderOptions, train: bool) -> str | None:
    """Why these transforms run on Pillow images, so not on the GPU (None when they run on
    tensors): an interpolation whose tensor resize is not Pillow's, or a policy with an
    interpolation torchvision's tensor affine ops refuse."""
    if options.interpolation not in TENSOR_RESAMPLING:
        return (f"interpolation {options.interpolation} resamples tensors differently from Pillow, "
                f"so it runs on Pillow images (tensors: {' or '.join(TENSOR_RESAMPLING)})")
    if train and options.auto_augment is not None and options.interpolation not in TENSOR_AFFINE:
        return (f"auto_augment {options.auto_augment} with interpolation {options.interpolation} runs on "
                f"Pillow images (torchvision's tensor affine ops take {' or '.join(TENSOR_AFFINE)})")
    return None


def transforms(options: ImageFolderOptions, train: bool):
    """The reference presets, one definition for both input paths: the first step, ``PILToTensor``,
    turns a Pillow image (decoded on the CPU) into a uint8 tensor and passes a tensor (decoded on
    the GPU) through; every later step runs on uint8 tensors on either device, resampling with
    ``interpolation`` and antialiasing, then scales to float in [0, 1] (and erases). Where tensors
    cannot do what Pillow does (:func:`gpu_problem`), the resampling steps run on the Pillow image
    before the conversion, as the reference's Pillow backend does."""
    torchvision()  # the CPU-build workaround must run before any torchvision submodule import
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T
    interpolation = InterpolationMode(options.interpolation)
    if not train:
        steps = [T.Resize(options.val_resize_size, interpolation, antialias=True),
                 T.CenterCrop(options.val_crop_size)]
    else:
        steps = [T.RandomResizedCrop(options.train_crop_size, interpolation=interpolation, antialias=True),
                 T.RandomHorizontalFlip()]
        if options.auto_augment is not None:
            steps.append(_policy(options, interpolation))
    steps.insert(len(steps) if gpu_problem(options, train) else 0, T.PILToTensor())
    steps.append(T.ToDtype(torch.float32, scale=True))
    if train and options.random_erase > 0:
        # the reference erases normalised images with 0; in [0, 1] that is the normalisation mean
        steps.append(T.RandomErasing(p=options.random_erase, value=list(IMAGENET_MEAN)))
    return T.Compose(steps)


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split folder: items ``(image in [0, 1], label)``; ``class_names`` from the folder names."""

    def __init__(self, folder: Path, transform, decode: str = "cpu", gpu_problem: str | None = None,
                 random_transform: bool = True) -> None:
        #: the GPU input path's protocol (:func:`prunelens.data.device_input.input_path`)
        self.transform, self.decode, self.gpu_problem = transform, decode, gpu_problem
        self.random_transform = random_transform
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

    def encoded(self) -> EncodedImages:
        """The split's files as bytes, in the same order (the GPU path's dataset)."""
        return EncodedImages(self.inner.samples)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError
        try:
            return self.inner[i]
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DataError(unreadable_image(self.inner.samples[i][0], exc)) from None


def _build(options: ImageFolderOptions, split: str, seed: int, augment: bool = True) -> ImageFolderSplit:
    root = Path(options.root).expanduser()
    folder = root / (options.train_dir if split == "train" else options.val_dir)
    try:
        train = split == "train" and augment
        return ImageFolderSplit(folder, transforms(options, train), options.decode, gpu_problem(options, train),
                                random_transform=train)
    except (FileNotFoundError, RuntimeError) as exc:  # ImageFolder: no class folders / no images
        raise DataError(f"cannot read {folder}: {exc}") from None


register_dataset("imagenet", ImageFolderOptions, splits=("train", "val"),
                 provides=("imagenet_classes",))(_build)
# any folder of class folders: its classes are its own (name it imagenet if they are ImageNet's)
register_dataset("imagefolder", ImageFolderOptions, splits=("train", "val"))(_build)
