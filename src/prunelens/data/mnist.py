"""MNIST and Fashion-MNIST from their IDX files in a local folder.

The folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), the layout of the original distribution.
The last ``n_val`` training images form the validation split.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from prunelens.data.registry import DatasetOptions, ExistingFolder, register_dataset
from prunelens.errors import DataError

_FILES = {"train": "train", "val": "train", "test": "t10k"}
_MAGIC = {1: 2049, 3: 2051}  # labels, images
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle-boot"]


class MNISTOptions(DatasetOptions):
    root: ExistingFolder
    n_val: int = Field(5000, ge=0)



def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array (big-endian header: magic, then one uint32 size per dimension)."""
    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise DataError(f"{path} (or {path.name}.gz) is missing")
    try:
        with (gzip.open if found.suffix == ".gz" else open)(found, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise DataError(f"cannot read {found} ({exc}); download it again") from None
    header = np.frombuffer(raw[:4 + 4 * ndim], dtype=">u4")
    if header[0] != _MAGIC[ndim]:
        raise DataError(f"{found} is not an IDX file of {ndim} dimension(s) (magic {header[0]})")
    shape = tuple(int(s) for s in header[1:])
    data = np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{found} is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


class MNISTSplit(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str], prefix: str) -> None:
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.item_ids = [f"{prefix}-{i:05d}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255.0, int(self.labels[i])


def _builder(class_names: list[str]):
    def build(options: MNISTOptions, split: str, seed: int) -> MNISTSplit:
        root = Path(options.root).expanduser()
        stem = _FILES[split]
        images = read_idx(root / f"{stem}-images-idx3-ubyte", 3)
        labels = read_idx(root / f"{stem}-labels-idx1-ubyte", 1)
        if len(images) != len(labels):
            raise DataError(f"{root}: {len(images)} {stem} images but {len(labels)} labels")
        if split != "test":
            cut = len(images) - options.n_val
            sl = slice(0, cut) if split == "train" else slice(cut, None)
            images, labels = images[sl], labels[sl]
        return MNISTSplit(images, labels, class_names, split)
    return build


register_dataset("mnist", MNISTOptions)(_builder([str(d) for d in range(10)]))
register_dataset("fashion_mnist", MNISTOptions)(_builder(FASHION_CLASSES))
