"""``RunData``: the datasets of a run, built from its config on first use and cached."""
from __future__ import annotations

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

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
               num_workers: int = 0, **overrides) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return torch.utils.data.DataLoader(self.split(split, **overrides), batch_size=batch_size,
                                           shuffle=shuffle, generator=generator,
                                           num_workers=num_workers,
                                           persistent_workers=num_workers > 0)

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
