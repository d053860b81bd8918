"""``RunData``: the datasets of a run, built from its config on first use and cached."""
from __future__ import annotations

import inspect
from functools import cached_property

import torch

from prunelens.data.registry import dataset_entry
from prunelens.errors import DataError


class RunData:
    """Splits of the run's dataset: ``data.split("test")``, ``data.split("test", variant="edge")``."""

    def __init__(self, data_config, seed: int) -> None:
        self.config = data_config
        self.seed = seed
        self._cache: dict[tuple, torch.utils.data.Dataset] = {}

    @cached_property
    def entry(self):
        return dataset_entry(self.config.name)

    @cached_property
    def options(self):
        return self.config.options

    def split(self, split: str, **overrides) -> torch.utils.data.Dataset:
        if split not in self.entry.splits:
            raise DataError(f"dataset '{self.config.name}' has no split '{split}' "
                            f"(it has: {', '.join(self.entry.splits)})")
        key = (split, tuple(sorted(overrides.items())))
        if key not in self._cache:
            self._cache[key] = self.entry.build(self.options, split, self.seed, **overrides)
        return self._cache[key]

    def measurement_split(self, split: str) -> torch.utils.data.Dataset:
        """``split`` without random augmentation (evaluation transforms), for measuring a model on
        training images (PSP-entropy, sharpness): the same images at every level."""
        if "augment" in inspect.signature(self.entry.build).parameters:
            return self.split(split, augment=False)
        return self.split(split)

    def sample(self, split: str, n: int) -> torch.utils.data.Dataset:
        """``n`` images of :meth:`measurement_split` evenly spaced over the split (splits stored by
        class stay balanced), the same at every level."""
        dataset = self.measurement_split(split)
        if n >= len(dataset):
            return dataset
        picks = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
        return torch.utils.data.Subset(dataset, picks)

    @property
    def eval_split(self) -> str:
        """The split suites evaluate on: ``test`` where the dataset has one, else its last split."""
        return "test" if "test" in self.entry.splits else self.entry.splits[-1]

    @property
    def num_classes(self) -> int:
        return int(self.split(self.entry.splits[-1]).num_classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.split(self.entry.splits[-1]).class_names)
