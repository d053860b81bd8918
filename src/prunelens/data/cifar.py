"""CIFAR-10 and CIFAR-100, "python version" batches (Krizhevsky 2009).

On-disk layout (``data.root`` is the extracted folder or its parent)::

    cifar-10-batches-py/  data_batch_1 … data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Every file is a pickled dict; ``data`` is uint8 (N, 3072) in channel-row-column order. The files
are read with :func:`~prunelens.data.arrays.safe_unpickle` (numpy arrays, lists and strings only).

Splits: ``train`` = the training files minus the last ``val_size`` images of the last one
(``val``); ``test`` = the test file. CIFAR-100 labels are the 100 ``fine`` classes or the 20
``coarse`` superclasses (``label_type``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from prunelens.data.arrays import (ArrayImages, TaskOptions, apply_task, find_files, first_n,
                                   images_from_rows, labels_tensor, safe_unpickle)
from prunelens.data.registry import ExistingFolder, register_dataset
from prunelens.errors import DataError


class CIFAR10Options(TaskOptions):
    root: ExistingFolder = Field(description="the extracted cifar-10-batches-py / cifar-100-python folder")
    val_size: int = Field(5000, ge=0, description="images held out from the last training file")


class CIFAR100Options(CIFAR10Options):
    label_type: Literal["fine", "coarse"] = "fine"


def _only(root: Path, name: str, what: str) -> Path:
    found = find_files(root, name, what)
    if not found:
        raise DataError(f"{what}: no file '{name}' in {root} or its subfolders; data.root must "
                        f"point at the extracted {what} python-version folder")
    return found[0]


def _read(path: Path, label_key: str, num_classes: int, extra_keys: tuple[str, ...] = ()
          ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    raw = safe_unpickle(path, required=("data", label_key, "filenames"),
                        optional=("batch_label", *extra_keys))
    images = images_from_rows(path, raw["data"])
    labels = labels_tensor(path, raw[label_key], num_classes)
    names = [str(n) for n in raw["filenames"]]
    if not len(images) == len(labels) == len(names):
        raise DataError(f"{path}: {len(images)} images, {len(labels)} labels, {len(names)} filenames")
    return images, labels, names


def _hold_out(parts: list[tuple[torch.Tensor, torch.Tensor, list[str]]], split: str, val_size: int,
              what: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Train parts → (train minus the tail of the last part) or that tail (``val``)."""
    x_last, y_last, n_last = parts[-1]
    if val_size >= len(y_last):
        raise DataError(f"{what}: val_size={val_size} is not smaller than the {len(y_last)} images "
                        "of the last training file; lower data.val_size")
    cut = len(y_last) - val_size
    if split == "val":
        return x_last[cut:], y_last[cut:], n_last[cut:]
    parts = [*parts[:-1], (x_last[:cut], y_last[:cut], n_last[:cut])]
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
            [name for p in parts for name in p[2]])


def _finish(x, y, ids, class_names, options, split, seed, n) -> ArrayImages:
    dataset = apply_task(ArrayImages(x, y, class_names, ids), options, split, seed)
    return first_n(dataset, n)


@register_dataset("cifar10", CIFAR10Options)
def build_cifar10(options: CIFAR10Options, split: str, seed: int, n: int | None = None
                  ) -> ArrayImages:
    root = Path(options.root).expanduser()
    meta = safe_unpickle(_only(root, "batches.meta", "cifar10"), required=("label_names",),
                         optional=("num_cases_per_batch", "num_vis"))
    class_names = [str(c) for c in meta["label_names"]]
    if split == "test":
        x, y, ids = _read(_only(root, "test_batch", "cifar10"), "labels", len(class_names))
    else:
        files = [p for p in find_files(root, "data_batch_*", "cifar10")
                 if re.fullmatch(r"data_batch_\d+", p.name)]
        if not files:
            raise DataError(f"cifar10: no data_batch_N files in {root} or its subfolders")
        files.sort(key=lambda p: int(p.name.rsplit("_", 1)[1]))
        parts = [_read(p, "labels", len(class_names)) for p in files]
        x, y, ids = _hold_out(parts, split, options.val_size, "cifar10")
    return _finish(x, y, ids, class_names, options, split, seed, n)


@register_dataset("cifar100", CIFAR100Options)
def build_cifar100(options: CIFAR100Options, split: str, seed: int, n: int | None = None
                   ) -> ArrayImages:
    root = Path(options.root).expanduser()
    meta = safe_unpickle(_only(root, "meta", "cifar100"),
                         required=("fine_label_names", "coarse_label_names"))
    class_names = [str(c) for c in meta[f"{options.label_type}_label_names"]]
    other = "coarse_labels" if options.label_type == "fine" else "fine_labels"
    key = f"{options.label_type}_labels"
    path = _only(root, "test" if split == "test" else "train", "cifar100")
    x, y, ids = _read(path, key, len(class_names), extra_keys=(other,))
    if split != "test":
        x, y, ids = _hold_out([(x, y, ids)], split, options.val_size, "cifar100")
    return _finish(x, y, ids, class_names, options, split, seed, n)
