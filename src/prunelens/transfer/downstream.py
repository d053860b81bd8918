"""Downstream tasks of the transfer suite: images and labels that differ from the source task.

* ``texture`` — synthetic images labelled by the object's *texture* (12 textures) instead of its
  shape (the source label): same image distribution, another label;
* ``novel_shapes`` — synthetic images of the shapes the run did not train on (held-out classes:
  shapes ``num_classes`` … 11 of :data:`~prunelens.data.synthetic.SHAPES`);
* ``cifar10``, ``cifar100``, ``imagefolder``, ``fashion_mnist``, ``mnist`` — a local dataset folder
  read by the project's loaders (``fashion_mnist`` / ``mnist``: the four IDX files of the original
  distributions, :mod:`prunelens.data.mnist`). ``fashion_mnist`` is the downstream task of a
  backbone trained on MNIST digits (the entropy configs, after Tartaglione et al.'s abstract: the
  features of gradually pruned models "potentially" fit transfer learning better): the same 28 × 28
  grey images, ten classes the backbone never saw.

Synthetic downstream images are drawn with the run's seed offset by :data:`IMAGE_SEED_OFFSET`, so
none of them is an image the backbone was trained on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from prunelens.data.arrays import ArrayImages
from prunelens.data.synthetic import N_TEXTURES, SHAPES, SyntheticShapes
from prunelens.errors import DataError

SYNTHETIC_TASKS = ("texture", "novel_shapes")
FOLDER_TASKS = ("cifar10", "cifar100", "imagefolder", "fashion_mnist", "mnist")
IMAGE_SEED_OFFSET = 104_729


@dataclass
class Downstream:
    """A downstream task: ``train`` (the probe's fit) and ``test`` splits of (image, label) items."""

    name: str
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    test_ids: list[str]


def item_ids(dataset) -> list[str]:
    """Ids of a dataset's items (through a ``Subset``); positions where it names none."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    index = list(dataset.indices) if isinstance(dataset, torch.utils.data.Subset) else range(len(dataset))
    ids = getattr(base, "item_ids", None)
    return [ids[i] for i in index] if ids is not None else [str(i) for i in index]


def _synthetic(options, split: str, n: int, seed: int, num_classes: int) -> SyntheticShapes:
    return SyntheticShapes(split, n, options.image_size, num_classes, options.texture_correlation,
                           seed=seed + IMAGE_SEED_OFFSET)


def texture_task(options, seed: int, n_train: int, n_test: int) -> Downstream:
    """Fresh synthetic images of the run's shapes, labelled by the texture the object wears."""
    names = [f"texture {k}" for k in range(N_TEXTURES)]
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        shapes = _synthetic(options, split, n, seed, options.num_classes)
        splits[split] = ArrayImages(shapes.images, shapes.texture_labels, names, shapes.item_ids)
    return Downstream("texture", splits["train"], splits["test"], splits["test"].item_ids)


def novel_shapes_task(options, seed: int, n_train: int, n_test: int) -> Downstream:
    """Fresh synthetic images of the shapes the run never saw, labelled by shape (0 = the first
    held-out shape). Images are drawn over all shapes and those of trained shapes dropped."""
    seen = options.num_classes
    held_out = len(SHAPES) - seen
    if held_out < 2:
        raise DataError(f"novel_shapes needs at least 2 shapes the run did not train on; the run uses "
                        f"{seen} of {len(SHAPES)} (data.num_classes): choose evaluate.transfer.dataset: texture")
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        shapes = _synthetic(options, split, math.ceil(1.2 * n * len(SHAPES) / held_out) + 16, seed,
                            len(SHAPES))
        keep = torch.nonzero(shapes.labels >= seen).flatten()[:n]
        splits[split] = ArrayImages(shapes.images[keep], shapes.labels[keep] - seen, list(SHAPES[seen:]),
                                    [shapes.item_ids[i] for i in keep.tolist()])
    return Downstream("novel_shapes", splits["train"], splits["test"], splits["test"].item_ids)


def check_root(name: str, root: str) -> None:
    """A missing dataset folder is a one-line error naming the key and the fix."""
    if not Path(root).expanduser().is_dir():
        raise DataError(f"evaluate.transfer.root: folder '{root}' does not exist; point it at the "
                        f"extracted {name} dataset folder (--set evaluate.transfer.root=DIR)")


def folder_options(name: str, root: str, dataset_options: dict):
    """The options of folder task ``name`` as its loader validates them (its root must be a folder;
    no image is read): what :func:`folder_task` checks first, and the transfer suite's
    ``check_data`` before a run trains."""
    from prunelens.config import validate_section
    from prunelens.data.registry import dataset_entry

    check_root(name, root)
    return validate_section(dataset_entry(name).options, {**dataset_options, "root": root},
                            "evaluate.transfer.dataset_options")


@dataclass(frozen=True)
class _DataConfig:
    """What :class:`~prunelens.data.provider.RunData` reads of a data config."""

    name: str
    options: object


def folder_task(name: str, root: str, dataset_options: dict, seed: int, n_train: int, n_test: int
                ) -> Downstream:
    """``n_train`` images of the dataset's train split and ``n_test`` of its evaluation split
    (evenly spaced, evaluation transforms) from the local folder ``root``."""
    from prunelens.data.provider import RunData

    data = RunData(_DataConfig(name, folder_options(name, root, dataset_options)), seed)
    test = data.sample(data.eval_split, n_test)
    return Downstream(name, data.sample("train", n_train), test, item_ids(test))
