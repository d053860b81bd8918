"""Dataset registry: a name in a config → an options model and a builder of splits.

A dataset module registers itself with :func:`register_dataset`. A split is a
``torch.utils.data.Dataset`` whose items are ``(image, label)``, ``image`` a float tensor
(C, H, W) in [0, 1] (models normalise through their spec), and which has ``num_classes`` and
``class_names``.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
import contextlib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from prunelens.errors import ConfigError
from prunelens.options import Options

# name -> module that registers it; imported on first use
DATASET_MODULES = {
    "synthetic": "prunelens.data.synthetic_registry",
    "imagenet": "prunelens.data.imagefolder",
    "imagefolder": "prunelens.data.imagefolder",
    "imagenet32": "prunelens.data.imagenet32",
    "cifar10": "prunelens.data.cifar",
    "cifar100": "prunelens.data.cifar",
    "digits": "prunelens.data.digits",
    "mnist": "prunelens.data.mnist",
    "fashion_mnist": "prunelens.data.mnist",
}


_CHECK_FOLDERS: ContextVar[bool] = ContextVar("check_dataset_folders", default=True)


@contextlib.contextmanager
def folders_unchecked():
    """Validate configs without looking at the disk (reading a stored run's config: its dataset
    may be elsewhere now; the loaders still check when data is read)."""
    token = _CHECK_FOLDERS.set(False)
    try:
        yield
    finally:
        _CHECK_FOLDERS.reset(token)


def _existing_folder(root: str) -> str:
    if _CHECK_FOLDERS.get() and not Path(root).expanduser().is_dir():
        raise ValueError(f"dataset folder '{root}' does not exist; point data.root at the folder "
                         "that holds the dataset in its own on-disk layout")
    return root


#: a dataset's local folder, checked when the config is loaded (before any work starts)
ExistingFolder = Annotated[str, AfterValidator(_existing_folder)]


class DatasetOptions(Options):
    """Base of every dataset's options: unknown keys are errors, integers and booleans strict."""


#: what a dataset can provide beyond images and labels (suites ask for these, never for a name):
#: ``masks`` object masks per image; ``boxes`` object boxes; ``textures`` a texture label per image;
#: ``shape_variants`` silhouette / edge / cue-conflict renderings of the same objects;
#: ``imagenet_classes`` labels in torchvision's ImageNet-1k class order (sorted wnids)
CAPABILITIES = ("masks", "boxes", "textures", "shape_variants", "imagenet_classes")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    options: type[DatasetOptions]
    build: Callable[..., object]  # build(options, split, seed, **overrides) -> Dataset
    splits: tuple[str, ...] = ("train", "val", "test")
    provides: frozenset[str] = frozenset()
    #: class_names(options) → the classes of every split, without building one (for a dataset
    #: whose classes follow from its options: a resume with nothing to do need not build it)
    class_names: Callable[..., list[str]] | None = None


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, options: type[DatasetOptions], splits=("train", "val", "test"),
                     provides: tuple[str, ...] = (), class_names: Callable[..., list[str]] | None = None):
    unknown = set(provides) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"dataset {name}: unknown capabilities {sorted(unknown)}")

    def deco(build):
        _REGISTRY[name] = DatasetEntry(name, options, build, tuple(splits), frozenset(provides),
                                       class_names)
        return build
    return deco


def available_datasets() -> list[str]:
    return sorted(DATASET_MODULES)


def dataset_entry(name: str) -> DatasetEntry:
    if name not in _REGISTRY:
        module = DATASET_MODULES.get(name)
        if module is None:
            raise ConfigError(f"unknown dataset '{name}' (data.name); available: "
                              f"{', '.join(available_datasets())}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not (module + ".").startswith(f"{exc.name}."):  # a missing dependency, not the module
                raise
            raise ConfigError(f"dataset '{name}' is not available in this version of prunelens") from None
    return _REGISTRY[name]
