"""CorLoc and best IoU of predicted boxes, and the box datasets they are measured on.

CorLoc (Deselaers et al., ECCV 2010; as used by LOST): the fraction of images whose predicted box
has IoU ≥ 0.5 with *any* ground-truth box of the image. Next to it we report the mean over images
of the best IoU. Boxes are ``xmin, ymin, xmax, ymax`` in pixels with exclusive max (a box of width
``xmax - xmin``), 0-based; IoU is computed exactly in float64. (The reference's ``bbox_iou`` adds
``eps=1e-7`` to heights and to the union, which only moves IoUs of exactly 0.5 below 0.5.)

A *box dataset* is anything with ``name``, ``item_ids``, ``n_skipped``, ``len()``,
``image(i)`` → float (3, H, W) in [0, 1] and ``boxes(i)`` → (G, 4) float: the synthetic split
(:class:`SyntheticBoxes`) and VOC (:class:`prunelens.data.voc_annotations.VOCBoxes`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from prunelens.stats import mean_ci, seeded_rng

CORLOC_IOU = 0.5


class BoxDataset(Protocol):
    name: str               # dataset column of the records: "synthetic", "voc07", "voc12"
    item_ids: list[str]
    n_skipped: int          # images dropped before evaluation (no ground-truth box left)

    def __len__(self) -> int: ...
    def image(self, i: int) -> torch.Tensor: ...
    def boxes(self, i: int) -> torch.Tensor: ...


class SyntheticBoxes:
    """The first ``n`` images of a synthetic split (one object, its mask's box) as a box dataset."""

    name = "synthetic"
    n_skipped = 0

    def __init__(self, split, n: int | None = None) -> None:
        n = len(split) if n is None else min(int(n), len(split))
        self.split, self.n = split, n
        self.item_ids = list(split.item_ids[:n])

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> torch.Tensor:
        return self.split.images[i].float() / 255.0

    def boxes(self, i: int) -> torch.Tensor:
        return self.split.boxes[i:i + 1].float()


def pad_boxes(boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image boxes (G_i, 4) into (B, G, 4) float64 and a validity mask (B, G)."""
    g = max([len(b) for b in boxes] + [1])
    out = torch.zeros(len(boxes), g, 4, dtype=torch.float64)
    valid = torch.zeros(len(boxes), g, dtype=torch.bool)
    for i, b in enumerate(boxes):
        out[i, :len(b)] = torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)
        valid[i, :len(b)] = True
    return out, valid


def box_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted box (B, 4) with each of its image's boxes (B, G, 4): (B, G) float64."""
    p = pred.to(torch.float64).unsqueeze(1)
    g = gt.to(torch.float64)
    iw = (torch.minimum(p[..., 2], g[..., 2]) - torch.maximum(p[..., 0], g[..., 0])).clamp(min=0)
    ih = (torch.minimum(p[..., 3], g[..., 3]) - torch.maximum(p[..., 1], g[..., 1])).clamp(min=0)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    union = area_p + area_g - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def best_iou(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Best IoU (B,) of each predicted box over its image's valid boxes; 0 when it has none.

    A NaN predicted box (no object found) has IoU 0 with everything.
    """
    iou = torch.nan_to_num(box_iou(pred, gt), nan=0.0)
    return torch.where(valid, iou, torch.zeros_like(iou)).amax(1)


def corloc_hits(best: torch.Tensor, threshold: float = CORLOC_IOU) -> torch.Tensor:
    """Per-image CorLoc (B,) float: 1 where the best IoU is ≥ ``threshold``."""
    return (best >= threshold).to(torch.float64)


@dataclass(frozen=True)
class CorLocSummary:
    corloc: float
    ci_low: float
    ci_high: float
    mean_iou: float
    n: int
    n_skipped: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def summarize_corloc(hits, ious, n_skipped: int = 0, n_boot: int = 1000,
                     confidence: float = 0.95, key: tuple = ()) -> CorLocSummary:
    """CorLoc with its percentile-bootstrap CI over images (:mod:`prunelens.stats`), mean best IoU,
    counts. ``key`` seeds the bootstrap as :func:`prunelens.stats.summarize` seeds it — (run,
    suite, metric, method, dataset, condition, level) — so both give the same interval."""
    hits = np.asarray(hits, dtype=float)
    ious = np.asarray(ious, dtype=float)
    mean, lo, hi = mean_ci([hits], n_boot, confidence, seeded_rng(*key))
    mean_iou = float(ious.mean()) if len(ious) else math.nan
    return CorLocSummary(mean, lo, hi, mean_iou, int(len(hits)), int(n_skipped))
