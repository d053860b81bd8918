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

``paper_swin_attention_image`` transcribes the Swin attention map of the same file
(``get_attention_map`` ≈L429-443 + ``build_attention_image`` ≈L446-488, the map itself ≈L453-463;
``patch_size = 4`` in ``main()``'s swin branch). The tensor it reads, ``last_attention_swin.pt``,
was written by a modified Swin that is not in the repository: presumably the last block's. It needs torch (``nn.functional.interpolate``), as their code does.

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


def paper_swin_attention_image(attention, patch_size: int, original_h: int, original_w: int):
    """The (H, W) map ``build_attention_image`` draws before its RGBA colouring, from ``attention``
    = the (nW, heads, N, N) softmax probabilities their modified torchvision Swin saved for one image
    (``torch.load('/home/cassano/last_attention_swin.pt')``: each block overwrites it, so the last
    block's):

    * ``get_attention_map``: ``w_featmap = int(math.sqrt(attention.shape[-2]))`` (8 for swin_v2_t),
      ``h_featmap`` likewise from ``shape[-1]``; ``original_w, original_h`` are the PIL image size
      (``get_image``: ``(original_w, original_h) = original_image.size``), i.e. W and H;
    * ``build_attention_image``: ``attention[0, :, 0, :]`` ("Swin non ha il CLS quindi parto da
      zero": batch·window 0, query token 0, every key, per head), reshaped to (heads, w_featmap,
      h_featmap), ``interpolate(..., scale_factor=patch_size, mode="nearest")``, ``torch.sum(...,
      dim=0)`` over heads, then ``interpolate(..., size=(original_h, original_w), mode='bilinear',
      align_corners=False)`` and ``squeeze()``.

    ``main()`` never scores this map (its swin branch saves the RGBA PNG, and the code after it uses
    ``heatmap_gc``, undefined for swin), so its later ``np.transpose(hat)`` is not part of it.
    """
    import math

    import torch
    from torch import nn

    number_of_heads = attention.shape[1]
    w_featmap = int(math.sqrt(attention.shape[-2]))
    h_featmap = int(math.sqrt(attention.shape[-1]))
    attention = attention[0, :, 0, :].reshape(number_of_heads, -1)
    attention = attention.reshape(number_of_heads, w_featmap, h_featmap)
    attention = nn.functional.interpolate(attention.unsqueeze(0), scale_factor=patch_size, mode="nearest")[0].cpu()
    attention = torch.sum(attention, dim=0)
    image = nn.functional.interpolate(attention.unsqueeze(0).unsqueeze(0), size=(original_h, original_w),
                                      mode="bilinear", align_corners=False)
    return image.squeeze()
