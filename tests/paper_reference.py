"""Test oracle: RMA / RRA as Cassano et al.'s code computes them (numpy only, no prunelens code).

Written from the authors' ``evaluate_single`` in EIDOSLAB/pruning-for-vision-representation,
commit 77e7758caac92f8a0dbc95192d5b6180b430c5ce, file ``explainations_evaluation_metrics.py``
(line numbers counted by hand, ±2; see /work/research/issue19_paper_code.md §1):

* L235-236: a (C, H, W) heatmap is cropped to the ground truth's (H, W);
* L262-266: with ``pooling_type=None`` (GradCAM, attention) the heatmap is min-max normalised with
  ``sys.float_info.epsilon`` added to ``max - min``; otherwise it is channel-pooled (CLEVR-XAI
  pooling; the paper's IG uses ``'l2-norm,sq'``) and not normalised;
* L278-281: the ground truth is min-max normalised (no eps) and binarised at ``>= .5``;
* L284-291: RMA = Σ(h · GT) / (Σ h + eps): a blank map scores 0, not NaN;
* L295-302: RRA ranks pixels by ``np.argsort(np.ravel(h))[::-1]``, takes the first
  ``int(|GT| + eps)`` = |GT| of them and divides the GT pixels among them by ``|GT| + eps``.

Only the 3-D heatmap path (GradCAM's (1, H, W), IG's (3, H, W)) is written here; the ViT 2-D path
(the GT zero-padded in normalised space) is not needed by these tests.

The ascending sort is made ``kind="stable"``, so reversing it ranks tied pixels by descending raster
index ("the later pixel wins"); numpy's default kind does that for an all-equal map but not for every
map with ties, so the paper's own order among mixed ties is implementation-defined.
"""
from __future__ import annotations

import sys

import numpy as np

EPS = sys.float_info.epsilon  # the one eps of evaluate_single


def pool_l2_sq(heatmap: np.ndarray) -> np.ndarray:
    """CLEVR-XAI ``'l2-norm,sq'`` pooling (pool_heatmap, L207): Σ_c R_c², (C, H, W) -> (H, W)."""
    return np.sum(heatmap.astype(np.float64) ** 2, axis=0)


def binarise(ground_truth: np.ndarray) -> np.ndarray:
    """L278-281: min-max over the array (no eps), then 1 where >= .5 and 0 elsewhere."""
    g = ground_truth.astype(np.float64)
    g = (g - g.min()) / (g.max() - g.min())
    return np.where(g >= .5, 1.0, 0.0)


def paper_scores(heatmap: np.ndarray, ground_truth: np.ndarray, pooling: str | None) -> dict[str, float]:
    """``{"mass": RMA, "rank": RRA}`` of one image as ``evaluate_single`` scores it.

    heatmap: (C, H, W); ground_truth: (H', W') with H' <= H, W' <= W (any two-valued array);
    pooling: None (min-max with eps, as for GradCAM) or ``"l2-norm,sq"`` (as for IG).
    """
    h = heatmap[:, :ground_truth.shape[0], :ground_truth.shape[1]].astype(np.float64)
    if pooling is None:
        h = (h - h.min()) / ((h.max() - h.min()) + EPS)
    elif pooling == "l2-norm,sq":
        h = pool_l2_sq(h)
    else:
        raise ValueError(pooling)
    gt = binarise(ground_truth)
    flat = np.ravel(h * np.ones_like(gt))   # a (1, H, W) map broadcasts against the (H, W) GT
    gt_flat = np.ravel(gt)
    mass = np.sum(flat * gt_flat) / (np.sum(flat) + EPS)
    ranked = np.argsort(flat, kind="stable")[::-1]
    n = np.sum(gt_flat) + EPS
    rank = np.sum(gt_flat[ranked[:int(n)]]) / n
    return {"mass": float(mass), "rank": float(rank)}
