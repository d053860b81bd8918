"""``RunData``: the datasets of a run, built from its config on first use and cached."""
from __future__ import annotations

import inspect
from functools import cached_property

import torch

from prunelens.data.device_input import image_loader, input_path
from prunelens.data.registry import dataset_entry
from prunelens.errors import DataError


class RunData:
    """Splits of the run's dataset: ``data.split("test")``, ``data.split("test", variant="edge")``."""

    def __init__(self, data_config, seed: int, num_workers: int = 0, pin_memory: bool = False,
                 device: torch.device | None = None, log=None) -> None:
        self.config = data_config
        self.seed = seed
        #: worker processes and pinned memory of the evaluation loaders (:meth:`loader`)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        #: the device the loaders' images are for: image folders may be decoded on it (``data.decode``)
        self.device = device
        self._log = log
        self._paths_said: set[tuple[str, str]] = set()
        self._cache: dict[tuple, torch.utils.data.Dataset] = {}
        self._samples: dict[tuple, torch.utils.data.Dataset] = {}
        self._loaders: dict[tuple[int, int], torch.utils.data.DataLoader] = {}

    def loader(self, dataset: torch.utils.data.Dataset, batch_size: int) -> torch.utils.data.DataLoader:
        """An evaluation loader of ``dataset`` in its order, with the run's workers (pinned memory
        on CUDA); an image folder's images may be decoded on :attr:`device` (``data.decode``: then
        the batches' images are on the device). A split or sample this object built keeps one loader, whose workers persist
        across the levels of one ``evaluate``; any other dataset gets a loader of its own."""
        kept = any(dataset is d for d in (*self._cache.values(), *self._samples.values()))
        key = (id(dataset), batch_size)
        if kept and key in self._loaders:
            return self._loaders[key]
        self._say_path(dataset)
        loader = image_loader(dataset, self.device, batch_size=batch_size, shuffle=False,
                              num_workers=self.num_workers, pin_memory=self.pin_memory,
                              persistent_workers=kept and self.num_workers > 0)
        if kept:
            self._loaders[key] = loader
        return loader

    def _say_path(self, dataset) -> None:
        """Log where ``dataset``'s images are decoded (:func:`input_path`), once per distinct answer."""
        said = input_path(dataset, self.device)
        if self._log is not None and said[1] is not None and said not in self._paths_said:
            self._paths_said.add(said)
            self._log(f"images of {self.config.name} decoded on the {said[0].upper()} ({said[1]})")

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
        if (split, n) not in self._samples:
            picks = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
            self._samples[(split, n)] = torch.utils.data.Subset(dataset, picks)
        return self._samples[(split, n)]

    def provides(self, capability: str) -> bool:
        """Whether the dataset provides ``capability`` (:data:`prunelens.data.registry.CAPABILITIES`)."""
        return capability in self.entry.provides

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

    def checked_class_names(self) -> list[str]:
        """The class names, after checking that every split has the same ones in the same order
        (a label means the same class in training and evaluation). A dataset whose classes follow
        from its options says so without building its splits."""
        if self.entry.class_names is not None:
            return list(self.entry.class_names(self.options))
        names = {split: list(self.split(split).class_names) for split in self.entry.splits}
        first, reference = next(iter(names.items()))
        for split, other in names.items():
            if other != reference:
                raise DataError(f"dataset '{self.config.name}': the {split} split's classes differ "
                                f"from the {first} split's ({class_difference(reference, other)}); "
                                "every split needs the same class folders")
        return reference

    def check_against(self, class_names: list[str] | None, where: str) -> None:
        """The evaluation split has the classes a pool was trained on (``class_names``), in order."""
        if class_names is None:
            return
        own = self.class_names
        if own != class_names:
            raise DataError(f"the {self.eval_split} split of dataset '{self.config.name}' does not have "
                            f"the classes {where} was trained on ({class_difference(class_names, own)}): "
                            "point data.root at the dataset the pool was built from")


def class_difference(expected: list[str], found: list[str]) -> str:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if not missing and not extra:
        return "same classes in another order"
    parts = [f"missing {', '.join(map(str, missing[:5]))}" if missing else "",
             f"extra {', '.join(map(str, extra[:5]))}" if extra else ""]
    return "; ".join(p for p in parts if p)
