"""A straightforward per-image numpy/scipy LOST, written from the paper's description (Siméoni et
al., BMVC 2021, Sec. 3) and the documented behaviour of its code: the oracle of the LOST tests and
the peer of benchmarks/lost.py. One image at a time, no batching, scipy's connected components.
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch


def order_stable(degree: np.ndarray) -> np.ndarray:
    """Increasing degree, equal degrees in index order."""
    return np.argsort(degree, kind="stable")


def order_like_reference(degree: np.ndarray) -> np.ndarray:
    """The reference code's own sort call (torch.argsort of -degree, descending, unstable)."""
    return torch.argsort(torch.from_numpy(-degree.astype(np.float32)), descending=True).numpy()


def lost_one_image(feats: np.ndarray, grid_hw, stride, image_hw, k_patches=100,
                   order=order_stable):
    """(box [xmin, ymin, xmax, ymax] in pixels, seed index) of one image's features (N, D)."""
    return lost_from_affinity(feats @ feats.T, grid_hw, stride, image_hw, k_patches, order)


def lost_from_affinity(affinity: np.ndarray, grid_hw, stride, image_hw, k_patches=100,
                       order=order_stable):
    """The steps of :func:`lost_one_image` after the patch similarity (N, N)."""
    h, w = grid_hw
    sy, sx = (stride, stride) if np.isscalar(stride) else stride
    positive = affinity > 0
    np.fill_diagonal(positive, False)
    degree = positive.sum(axis=1)
    ranked = order(degree)
    seed = ranked[0]
    candidates = ranked[:k_patches]
    expansion = candidates[affinity[seed, candidates] > 0]
    summed = affinity[expansion].sum(axis=0)
    labels, _ = scipy.ndimage.label(summed.reshape(h, w) > 0)
    component = labels[seed // w, seed % w]
    if component == 0:
        raise ValueError("The seed is in the background component.")
    rows, cols = np.nonzero(labels == component)
    box = [cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy]
    box[2] = min(box[2], image_hw[1])
    box[3] = min(box[3], image_hw[0])
    return np.asarray(box, dtype=np.float64), int(seed)
