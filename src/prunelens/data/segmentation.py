"""Ground-truth segmentation for localisation metrics: one interface over VOC and the synthetic data.

A *segmentation set* has ``item_ids``, ``len()`` and ``batch(indices)`` → :class:`SegmentationBatch`:
images (uint8) and a label map that follows the VOC convention — 0 background, 255 "ignore"
(excluded from every count), any other value the class of that pixel (a VOC palette index, or
``label + 1`` for the synthetic shapes). From it come the class-agnostic object masks (the paper's
ground truth) or the masks of a given class.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

BACKGROUND = 0
IGNORE = 255


@dataclass
class SegmentationBatch:
    images: torch.Tensor     # uint8 (B, 3, H, W)
    label_map: torch.Tensor  # uint8 (B, H, W): 0 background, 255 ignored, else class index
    item_ids: list[str]

    def __len__(self) -> int:
        return len(self.item_ids)

    def images01(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Images as float in [0, 1] on ``device``."""
        return self.images.to(device).float().div_(255)

    @property
    def ignore(self) -> torch.Tensor:
        return self.label_map == IGNORE

    def object_masks(self) -> torch.Tensor:
        """Class-agnostic ground truth: every pixel of every object (B, H, W) bool."""
        return (self.label_map != BACKGROUND) & (self.label_map != IGNORE)

    def class_masks(self, classes: torch.Tensor) -> torch.Tensor:
        """Pixels of class ``classes[i]`` in image i (B, H, W); a class < 1 gives an empty mask."""
        classes = torch.as_tensor(classes, device=self.label_map.device).view(-1, 1, 1)
        return (self.label_map.to(torch.int64) == classes) & (classes > BACKGROUND) & (classes != IGNORE)


class SegmentationSet(Protocol):
    item_ids: list[str]

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> SegmentationBatch: ...


class SyntheticSegmentation:
    """The first ``limit`` images of a :class:`~prunelens.data.synthetic.SyntheticShapes` split with
    their object masks (label map value = shape label + 1)."""

    def __init__(self, dataset, limit: int | None = None) -> None:
        n = len(dataset) if limit is None else min(int(limit), len(dataset))
        self.images = dataset.images[:n]
        self.labels = dataset.labels[:n]
        masks = dataset.masks[:n]
        self.label_map = torch.where(masks, (self.labels + 1).view(-1, 1, 1), BACKGROUND).to(torch.uint8)
        self.item_ids = list(dataset.item_ids[:n])

    def __len__(self) -> int:
        return len(self.item_ids)

    def batch(self, indices: Sequence[int]) -> SegmentationBatch:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return SegmentationBatch(self.images[idx], self.label_map[idx], [self.item_ids[i] for i in idx.tolist()])


def iter_batches(dataset: SegmentationSet, batch_size: int,
                 sizes: Sequence[tuple[int, int]] | None = None) -> Iterator[SegmentationBatch]:
    """Batches of up to ``batch_size`` consecutive items; with per-item ``sizes`` (H, W), a batch
    also ends where the size changes (full-resolution images cannot be stacked)."""
    n = len(dataset)
    start = 0
    while start < n:
        stop = min(start + batch_size, n)
        if sizes is not None:
            end = start + 1
            while end < stop and sizes[end] == sizes[start]:
                end += 1
            stop = end
        yield dataset.batch(range(start, stop))
        start = stop
