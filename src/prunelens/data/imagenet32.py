"""Downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017): ImageNet32/64 batches.

On-disk layout (as extracted from the official archives; ``data.root`` may be the folder holding
the files or a parent of ``Imagenet32_train/`` and ``Imagenet32_val/``)::

    train_data_batch_1 … train_data_batch_10   pickled {'data', 'labels', 'mean'}
    val_data                                    pickled {'data', 'labels'}

``data`` is uint8 (N, 3·S·S) in channel-row-column order (S = 32 or 64), ``labels`` are 1-based
in the order of the ILSVRC2015 devkit's ``map_clsloc.txt`` (label 1 = n02119789 kit fox, 2 =
n02100735 English setter, …; the release scripts' ``get_label_dict``), not the sorted-wnid order
of torchvision's ImageFolder: class c here is label c + 1 there. The shipped superclass maps
``imagenet_mixed10`` and ``imagenet_sifting10`` (``data/superclass_maps/``) list every label's wnid
in this order.
The ``.npz`` edition (same names + ``.npz``) is read too. Pickles are read with
:func:`~prunelens.data.arrays.safe_unpickle`, never with plain :mod:`pickle`.

Splits: ``train`` = the train batches minus the last ``val_size`` images of the last batch
(``val``); ``test`` = ``val_data``. ``data_ratio`` keeps a seeded random fraction of each train
batch, so a fraction of ImageNet never needs the whole of it in memory (Pellegrini & Biroli 2022
train on 0.3 of it, Sec. 5).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from prunelens.data.arrays import (ArrayImages, TaskOptions, apply_task, find_files, first_n,
                                   images_from_rows, labels_tensor, safe_unpickle)
from prunelens.data.registry import ExistingFolder, register_dataset
from prunelens.errors import DataError

NUM_CLASSES = 1000


class ImageNet32Options(TaskOptions):
    root: ExistingFolder = Field(description="folder with train_data_batch_* and val_data")
    val_size: int = Field(10000, ge=0, description="images held out from the last train batch")


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
        if not {"data", "labels"} <= set(raw):
            raise DataError(f"{path} lacks the keys 'data' and 'labels' (has {sorted(raw)})")
    else:
        raw = safe_unpickle(path, required=("data", "labels"), optional=("mean",))
    images = images_from_rows(path, raw["data"])
    labels = labels_tensor(path, raw["labels"], NUM_CLASSES, offset=1)
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _batch_number(path: Path) -> int:
    match = re.search(r"_(\d+)(\.npz)?$", path.name)
    return int(match.group(1)) if match else 0


def _train_files(root: Path) -> list[Path]:
    files = [p for p in find_files(root, "train_data_batch_*", "imagenet32")
             if re.fullmatch(r"train_data_batch_\d+(\.npz)?", p.name)]
    by_number: dict[int, Path] = {}
    for p in files:  # when both editions are present, read the .npz (no pickle at all)
        if p.suffix == ".npz" or _batch_number(p) not in by_number:
            by_number[_batch_number(p)] = p
    if not by_number:
        raise DataError(f"imagenet32: no train_data_batch_N files in {root} or its subfolders; "
                        "data.root must point at the extracted downsampled-ImageNet files")
    return [by_number[k] for k in sorted(by_number)]


def _class_names() -> list[str]:
    return [f"class {k:04d}" for k in range(NUM_CLASSES)]


def _load(options: ImageNet32Options, split: str, seed: int) -> ArrayImages:
    root = Path(options.root).expanduser()
    if split == "test":
        found = (find_files(root, "val_data.npz", "imagenet32")
                 or find_files(root, "val_data", "imagenet32"))
        if not found:
            raise DataError(f"imagenet32: no val_data file in {root} or its subfolders (it is the "
                            "test split)")
        images, labels = _read_batch(found[0])
        return ArrayImages(images, labels, _class_names(), [f"val-{i:05d}" for i in range(len(labels))])
    files = _train_files(root)
    images, labels, ids = [], [], []
    for number, path in enumerate(files):
        last = number == len(files) - 1
        if split == "val" and not last:
            continue  # val is the tail of the last batch: the others are not even read
        x, y = _read_batch(path)
        index = torch.arange(len(y))
        if last:
            if options.val_size >= len(y):
                raise DataError(f"imagenet32: val_size={options.val_size} is not smaller than the "
                                f"{len(y)} images of {path.name}; lower data.val_size")
            cut = len(y) - options.val_size
            index = index[cut:] if split == "val" else index[:cut]
        if split == "train" and options.data_ratio < 1.0:
            g = torch.Generator().manual_seed(int(seed) * 1000 + number)
            keep = max(1, int(round(options.data_ratio * len(index))))
            index = index[torch.randperm(len(index), generator=g)[:keep].sort().values]
        images.append(x[index])
        labels.append(y[index])
        ids += [f"{path.stem}-{i:06d}" for i in index.tolist()]
    return ArrayImages(torch.cat(images), torch.cat(labels), _class_names(), ids)


@register_dataset("imagenet32", ImageNet32Options)
def build(options: ImageNet32Options, split: str, seed: int, n: int | None = None) -> ArrayImages:
    dataset = _load(options, split, seed)
    # data_ratio was applied batch by batch above; only the superclasses remain
    dataset = apply_task(dataset, options.model_copy(update={"data_ratio": 1.0}), split, seed)
    return first_n(dataset, n)
