"""LOST: unsupervised single-object discovery from patch features (Siméoni et al., BMVC 2021).

For the patch features F (B, N, D) of images on an (h, w) grid, LOST

1. builds the patch similarity A = F Fᵀ (raw dot products, Sec. 3.1);
2. gives every patch its degree d_p = #{q ≠ p : A[p, q] > 0}; the seed is the patch of lowest
   degree (Eq. 2);
3. expands the seed into S = the k lowest-degree patches q with A[seed, q] > 0 (Eq. 3; the seed
   itself is among them whenever A[seed, seed] > 0);
4. sums the rows of A over S and keeps the cells where the sum is > 0 (Eq. 4);
5. boxes the 4-connected component of that mask which contains the seed.

Behaviours of the reference code (valeoai/LOST, ``object_discovery.py``) kept here on purpose:

* **Ties.** The reference orders patches with ``torch.argsort(-degree.float(), descending=True)``,
  an *unstable* sort. ``tie_break="reference"`` makes the very same call, so on the same torch build
  and device the seed and the k expansion patches are the reference's. Measured on torch 2.13 CPU:
  equal degrees come out in index order only for N ≤ 16 patches; for larger N the order of equal
  keys is whatever torch's introsort leaves (deterministic for a given input, not index order,
  batched rows identical to single rows); CUDA sorts may differ again. ``tie_break="index"`` uses a
  stable sort instead (equal degrees in raster order, lowest index first) — the same on every device.
* **Degree.** Counted on a copy of A with the diagonal zeroed and negatives zeroed, with ``> 0``:
  a similarity of exactly 0 is not an edge. Seed expansion and the map use the raw A.
* **Boxes.** The component's cells give ``[min col, min row, max col + 1, max row + 1]`` (exclusive
  max), scaled by the stride (pixels per cell: the patch size for ViTs, padded size / grid size for
  CNNs) and clipped to the *unpadded* image on the max side only: the images were zero-padded at the
  bottom/right to a multiple of the stride, so a component touching the padding ends at the image
  border, while min coordinates never need clipping.
* **Seed in background.** When the summed map is not > 0 at the seed (its expansion set is empty:
  the seed's feature has no positive similarity, not even with itself, e.g. an all-zero feature),
  the reference raises ``ValueError("The seed is in the background component.")``; so does
  :func:`lost` (:class:`SeedInBackgroundError`), unless asked to return NaN boxes for those images.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

from prunelens.errors import ModelError

TieBreak = Literal["reference", "index"]


class SeedInBackgroundError(ModelError, ValueError):
    """The seed patch fell outside the thresholded seed-expansion map (as the reference, an error)."""

    def __init__(self, images: list) -> None:
        self.images = images   # positions in the batch, or image ids when raised by the suite
        super().__init__(
            f"LOST: the seed is in the background component for image(s) {images}: "
            "the seed patch has no positive similarity to any patch, not even itself (typically an "
            "all-zero feature vector, e.g. a dead feature map after heavy pruning). The reference "
            "implementation stops here too. To score such images as misses instead, use "
            "seed_in_background='miss' in the discovery suite options (or on_background='nan' in "
            "prunelens.discovery.lost); a LayerNorm over the feature map also avoids zero features.")


class LostResult(NamedTuple):
    boxes: torch.Tensor   # (B, 4) float: xmin, ymin, xmax (exclusive), ymax (exclusive), pixels
    seeds: torch.Tensor   # (B,) long: seed patch index in raster order of the (h, w) grid


def similarity(features: torch.Tensor) -> torch.Tensor:
    """Patch similarity A = F Fᵀ, (B, N, N), raw dot products (LOST Sec. 3.1).

    On a CPU the product goes through numpy: its BLAS computes F Fᵀ as a symmetric rank-k update
    (half the multiply-adds, the result exactly symmetric), while torch's bmm computes every entry:
    about 2x slower at 196 patches × 768/2048 features (``benchmarks/lost.py``, similarity row).
    """
    if features.device.type == "cpu" and features.dtype in (torch.float32, torch.float64):
        f = features.detach().numpy()
        return torch.from_numpy(f @ np.swapaxes(f, 1, 2))
    return features @ features.transpose(1, 2)


def degree(A: torch.Tensor) -> torch.Tensor:
    """Per-patch degree (B, N): number of positive entries of each row of A, diagonal ignored (Eq. 2)."""
    positive = A > 0
    positive.diagonal(dim1=1, dim2=2).fill_(False)
    return positive.sum(-1, dtype=torch.int32)  # int32 accumulation: 2x faster than the default int64


def rank_patches(deg: torch.Tensor, tie_break: TieBreak = "reference") -> torch.Tensor:
    """Patch indices (B, N) by increasing degree; ties as documented in the module docstring."""
    if tie_break == "reference":
        return torch.argsort(-deg.to(torch.float32), dim=-1, descending=True)
    if tie_break == "index":
        return torch.sort(deg, dim=-1, stable=True).indices
    raise ValueError(f"tie_break must be 'reference' or 'index', got {tie_break!r}")


def seed_expansion_map(A: torch.Tensor, order: torch.Tensor, k_patches: int) -> torch.Tensor:
    """Sum of the rows of A over the expansion set S (Eq. 3-4), (B, N); S is built from ``order``."""
    rows = torch.arange(A.shape[0], device=A.device)
    seeds = order[:, 0]
    potentials = order[:, :k_patches]
    similar = A[rows, seeds].gather(1, potentials) > 0
    weights = torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device)
    weights.scatter_(1, potentials, similar.to(A.dtype))
    return torch.bmm(weights.unsqueeze(1), A).squeeze(1)


def seed_component(foreground: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The 4-connected component of ``foreground`` (B, h, w) that holds each seed, (B, h, w) bool.

    Grown from the seed by 4-neighbour dilation restricted to the foreground until it stops
    changing (scipy.ndimage.label's default structure is the same cross). Empty when the seed is
    not foreground.
    """
    b, h, w = foreground.shape
    rows = torch.arange(b, device=foreground.device)
    flat_fg = foreground.reshape(b, h * w)
    component = torch.zeros_like(flat_fg)
    component[rows, seeds] = flat_fg[rows, seeds]
    component = component.view(b, h, w)
    while True:
        grown = component.clone()
        grown[:, 1:] |= component[:, :-1]
        grown[:, :-1] |= component[:, 1:]
        grown[:, :, 1:] |= component[:, :, :-1]
        grown[:, :, :-1] |= component[:, :, 1:]
        grown &= foreground
        if torch.equal(grown, component):
            return component
        component = grown


def component_box(component: torch.Tensor) -> torch.Tensor:
    """Grid box (B, 4) = [min col, min row, max col + 1, max row + 1] of non-empty masks (B, h, w)."""
    _, h, w = component.shape
    cols, rows = component.any(1), component.any(2)
    ar_w = torch.arange(w, device=component.device)
    ar_h = torch.arange(h, device=component.device)
    xmin = torch.where(cols, ar_w, w).amin(1)
    xmax = torch.where(cols, ar_w, -1).amax(1) + 1
    ymin = torch.where(rows, ar_h, h).amin(1)
    ymax = torch.where(rows, ar_h, -1).amax(1) + 1
    return torch.stack([xmin, ymin, xmax, ymax], 1)


def _pairs(value, batch: int, device, what: str) -> torch.Tensor:
    """(B, 2) float64 tensor (y, x) from a scalar, a pair, or per-image pairs."""
    t = torch.as_tensor(value, dtype=torch.float64, device=device)
    if t.ndim == 0:
        t = t.expand(2)
    if t.shape == (2,):
        t = t.expand(batch, 2)
    if t.shape != (batch, 2):
        raise ModelError(f"LOST: {what} must be a number, an (h, w) pair or one pair per image "
                         f"(shape ({batch}, 2)); got shape {tuple(t.shape)}")
    return t


def lost(features: torch.Tensor, grid_hw: tuple[int, int], stride, image_hw,
         k_patches: int = 100, *, tie_break: TieBreak = "reference",
         on_background: Literal["raise", "nan"] = "raise") -> LostResult:
    """LOST boxes of a batch of images of one (padded) size (Siméoni et al. 2021, Eq. 2-4).

    Args:
        features: (B, N, D) patch features, patches in raster order of the (h, w) grid.
        grid_hw: (h, w) with h * w = N.
        stride: pixels per grid cell: a number, a (sy, sx) pair, or one pair per image.
        image_hw: size of the *unpadded* image(s): an (H, W) pair or one pair per image (B, 2);
            boxes are clipped to it.
        k_patches: size of the candidate set for the seed expansion.
        tie_break: ``"reference"`` (the reference's unstable torch sort) or ``"index"`` (stable).
        on_background: ``"raise"`` a :class:`SeedInBackgroundError` when the seed is not in the
            thresholded map (as the reference), or give those images NaN boxes (``"nan"``).

    Returns:
        ``LostResult(boxes, seeds)``: boxes (B, 4) float32 ``xmin, ymin, xmax, ymax`` in pixels with
        exclusive max, seeds (B,) the seed's patch index.
    """
    if features.ndim != 3:
        raise ModelError(f"LOST: features must be (batch, patches, dim), got shape {tuple(features.shape)}")
    return lost_from_similarity(similarity(features.float()), grid_hw, stride, image_hw, k_patches,
                                tie_break=tie_break, on_background=on_background)


def lost_from_similarity(A: torch.Tensor, grid_hw: tuple[int, int], stride, image_hw,
                         k_patches: int = 100, *, tie_break: TieBreak = "reference",
                         on_background: Literal["raise", "nan"] = "raise") -> LostResult:
    """:func:`lost` from a precomputed patch similarity A = F Fᵀ, (B, N, N)."""
    b, n = A.shape[:2]
    h, w = (int(s) for s in grid_hw)
    if h * w != n:
        raise ModelError(f"LOST: features have {n} patches but grid_hw={tuple(grid_hw)} has {h * w}")
    if k_patches < 1:
        raise ModelError(f"LOST: k_patches must be >= 1, got {k_patches}")
    if on_background not in ("raise", "nan"):
        raise ValueError(f"on_background must be 'raise' or 'nan', got {on_background!r}")
    order = rank_patches(degree(A), tie_break)
    seeds = order[:, 0]
    foreground = (seed_expansion_map(A, order, k_patches) > 0).view(b, h, w)
    component = seed_component(foreground, seeds)
    found = component.flatten(1).any(1)
    if not bool(found.all()) and on_background == "raise":
        raise SeedInBackgroundError(torch.nonzero(~found).flatten().tolist())
    scale = _pairs(stride, b, A.device, "stride")
    size = _pairs(image_hw, b, A.device, "image_hw")
    grid_box = component_box(component).to(torch.float64)
    boxes = grid_box * scale[:, [1, 0, 1, 0]]
    boxes[:, 2] = torch.minimum(boxes[:, 2], size[:, 1])
    boxes[:, 3] = torch.minimum(boxes[:, 3], size[:, 0])
    boxes[~found] = float("nan")
    return LostResult(boxes.to(torch.float32), seeds)
