"""Registers the synthetic dataset under the config name ``synthetic``."""
from __future__ import annotations

from pydantic import Field

from prunelens.data.registry import DatasetOptions, register_dataset
from prunelens.data.synthetic import SHAPES, VARIANTS, SyntheticShapes


class SyntheticOptions(DatasetOptions):
    image_size: int = Field(64, ge=16, le=512)
    num_classes: int = Field(10, ge=2, le=len(SHAPES))
    texture_correlation: float = Field(0.5, ge=0.0, le=1.0)
    n_train: int = Field(4000, ge=1)
    n_val: int = Field(500, ge=1)
    n_test: int = Field(1000, ge=1)


@register_dataset("synthetic", SyntheticOptions,
                  provides=("masks", "boxes", "textures", "shape_variants"),
                  class_names=lambda options: list(SHAPES[:options.num_classes]))
def build(options: SyntheticOptions, split: str, seed: int, variant: str = "standard",
          n: int | None = None) -> SyntheticShapes:
    if variant not in VARIANTS:
        raise ValueError(variant)
    size = n if n is not None else getattr(options, f"n_{split}")
    return SyntheticShapes(split, size, options.image_size, options.num_classes,
                           options.texture_correlation, variant, seed)
