"""scikit-learn's 8×8 handwritten digits (UCI optdigits test set, 1797 real images, 10 classes).

The images ship inside scikit-learn, so this is real data that needs no download: the demo of the
sifting pipeline (Pellegrini & Biroli 2022) runs on it in minutes on a CPU. Pixel values 0…16 are
scaled to [0, 1]; ``channels: 3`` repeats the grey channel and ``image_size`` resizes (bilinear),
for models that need colour or larger inputs.

Splits are a seeded permutation of the 1797 images: ``test_fraction`` and ``val_fraction`` of
them, the rest ``train`` (then ``data_ratio`` and ``superclasses`` as for every array dataset).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from prunelens.data.arrays import ArrayImages, TaskOptions, apply_task, first_n
from prunelens.data.registry import register_dataset
from prunelens.errors import DataError


class DigitsOptions(TaskOptions):
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, description="seed of the train/val/test permutation")
    channels: Literal[1, 3] = 1
    image_size: int = Field(8, ge=8, le=256)

    @model_validator(mode="after")
    def _fractions(self) -> DigitsOptions:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave images for training "
                             f"(got {self.val_fraction} + {self.test_fraction})")
        return self


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as uint8 images (N, 1, 8, 8) with values 0…16, and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the 'digits' dataset comes with scikit-learn, which is not installed: "
                        "`pip install scikit-learn` (or `pip install prunelens[test]`)") from None
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).round().to(torch.uint8)
    return images.unsqueeze(1), torch.as_tensor(bunch.target, dtype=torch.long)


@register_dataset("digits", DigitsOptions)
def build(options: DigitsOptions, split: str, seed: int, n: int | None = None) -> ArrayImages:
    images, labels = load_digits_tensors()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(options.split_seed))
    n_test = int(round(options.test_fraction * len(labels)))
    n_val = int(round(options.val_fraction * len(labels)))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
             "train": order[n_test + n_val:]}
    index = parts[split].sort().values
    x, scale = images[index], 16.0
    if options.image_size != 8:  # resample on the 0…255 scale so the interpolated values survive
        x = torch.nn.functional.interpolate(x.float() * (255 / 16), size=options.image_size,
                                            mode="bilinear", align_corners=False)
        x, scale = x.round().clamp(0, 255).to(torch.uint8), 255.0
    if options.channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    dataset = ArrayImages(x, labels[index], [str(d) for d in range(10)],
                          [f"digit-{i:04d}" for i in index.tolist()], scale=scale)
    return first_n(apply_task(dataset, options, split, seed), n)
