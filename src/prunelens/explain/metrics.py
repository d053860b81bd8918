"""Localisation metrics of heatmaps against ground-truth masks (Arras, Osman & Samek 2022, CLEVR-XAI).

* Relevance Mass Accuracy (their eq. 1): RMA = R_within / R_total, the share of the (non-negative)
  relevance that falls inside the ground-truth mask GT.
* Relevance Rank Accuracy (their eq. 2): RRA = |P_top-K ∩ GT| / K with K = |GT|, the share of the K
  most relevant pixels that lie inside GT.

A heatmap is first pooled to one non-negative value per pixel (:func:`pool_heatmaps`; the CLEVR-XAI
pooling names). Pixels marked ``ignore`` (e.g. the 255 border of VOC masks) are left out of both
numerator and denominator, and out of the ranking. An empty mask or a heatmap with non-finite
values gives NaN for that item; callers count NaNs instead of averaging them away.

A *blank* map (all zero after pooling and min-max; min-max turns a constant map into one) has no
relevance to share out. ``blank_maps="nan"`` (the default) gives NaN for it. ``blank_maps="score"``
scores it as Cassano et al.'s code does (explainations_evaluation_metrics.py ``evaluate_single``,
L284-302 of commit 77e7758): their RMA divides by ``Σ h + sys.float_info.epsilon``, so a blank map
scores RMA = 0 and is kept in the mean; their RRA ranks the blank map's all-equal pixels like any
other map, so its RRA is whatever the tie rule makes of K all-equal places (``ties="paper"``: the
share of GT among the last K pixels in raster order; ``"expected"``: K / N; ``"index"``: the share
among the first K). It is 0 only when none of those pixels is in GT.

Ties in RRA are scored by the *expected* value under uniformly random tie-breaking (``ties=
"expected"``, the default): the pixels strictly above the K-th largest value all count, and of the
``t`` pixels equal to it, which share the remaining ``K - n_above`` places, a fraction
``|tied ∩ GT| / t`` is inside GT. The result does not depend on pixel order. ``ties="index"`` is
Quantus' rule instead: it ranks the flattened map with ``np.argsort(-a)`` and takes the first K,
so equal values rank in index order (raster order, the earlier pixel first) — exactly so with a
stable sort, which prunelens uses; numpy's default sort may order ties otherwise on some machines.
``ties="paper"`` is the order of Cassano et al.'s code, ``np.argsort(np.ravel(h))[::-1]``
(``evaluate_single``, L295): an ascending sort, reversed, so among equal values the pixel with the
*higher* raster index ranks first — the opposite of ``index``. numpy's default (unstable) sort
keeps that order for an all-equal map but not in general; prunelens makes it deterministic as a
stable ascending sort reversed, i.e. a descending sort that breaks ties by descending index.

``minmax=True`` rescales each pooled map to [0, 1] over its (not ignored) pixels before scoring,
``(h − min) / (max − min)``, as the paper's code does for GradCAM and attention maps: the
relevance floor no longer counts towards the mass, so RMA rises wherever the floor is spread over
the background. RRA only changes through the ties it creates at the minimum.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from prunelens.errors import DataError

#: Channel poolings of CLEVR-XAI (Arras et al. 2022, sec. 4.2), plus ``none`` for maps that are
#: already one non-negative channel (GradCAM after its ReLU, attention).
POOLINGS = ("none", "sum,abs", "sum,pos", "max-norm", "l1-norm", "l2-norm", "l2-norm,sq")

#: what a blank (all-zero) map scores: NaN, or RMA 0 and RRA by the tie rule (module docstring)
BLANK_MAPS = ("nan", "score")


def pool_heatmaps(heatmaps: torch.Tensor, pooling: str = "none") -> torch.Tensor:
    """(B, H, W) or (B, C, H, W) relevance → (B, H, W) non-negative map.

    ``sum,abs`` = |Σ_c R_c|, ``sum,pos`` = max(Σ_c R_c, 0), ``max-norm`` = max_c |R_c|, ``l1-norm``,
    ``l2-norm``, ``l2-norm,sq`` = Σ_c R_c². A (B, H, W) map is treated as one channel. ``none``
    requires a non-negative map and returns it as is.
    """
    if pooling not in POOLINGS:
        raise DataError(f"unknown heatmap pooling '{pooling}'; choose one of {', '.join(POOLINGS)}")
    if heatmaps.dim() not in (3, 4):
        raise DataError(f"heatmaps must be (B, H, W) or (B, C, H, W), got shape {tuple(heatmaps.shape)}")
    if pooling == "none":
        if heatmaps.dim() == 4:
            if heatmaps.shape[1] != 1:
                raise DataError(f"pooling 'none' needs one channel, got {heatmaps.shape[1]}; "
                                "choose a channel pooling such as 'l2-norm,sq'")
            heatmaps = heatmaps[:, 0]
        if heatmaps.numel() and float(heatmaps.min()) < 0:
            raise DataError("pooling 'none' needs a non-negative heatmap; this one has negative "
                            "values: choose 'sum,pos' (positive relevance) or 'sum,abs'")
        return heatmaps
    r = heatmaps if heatmaps.dim() == 4 else heatmaps.unsqueeze(1)
    if pooling == "sum,abs":
        return r.sum(1).abs()
    if pooling == "sum,pos":
        return r.sum(1).clamp(min=0)
    if pooling == "max-norm":
        return r.abs().amax(1)
    if pooling == "l1-norm":
        return r.abs().sum(1)
    if pooling == "l2-norm":
        return torch.linalg.vector_norm(r, dim=1)
    return r.square().sum(1)  # l2-norm,sq


class _Prepared(NamedTuple):
    h: torch.Tensor                 # pooled relevance (B, N), 0 on ignored pixels
    gt: torch.Tensor                # ground truth (B, N) bool, ignored pixels removed
    valid: torch.Tensor | None      # pixels not ignored (B, N), None when none are ignored
    k: torch.Tensor                 # |GT| (B,)
    total: torch.Tensor             # relevance mass (B,)
    undefined: torch.Tensor         # items whose scores are NaN (B,)
    blank: torch.Tensor             # items scored as blank maps: RMA 0, RRA by the tie rule (B,)


def _prepare(heatmaps: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None,
             pooling: str, minmax: bool = False, blank_maps: str = "nan") -> _Prepared:
    h = pool_heatmaps(heatmaps, pooling)
    if masks.shape != h.shape:
        raise DataError(f"masks of shape {tuple(masks.shape)} do not match heatmaps of shape "
                        f"{tuple(h.shape)} (after pooling); resize the heatmaps to the mask size")
    if ignore is not None and ignore.shape != h.shape:
        raise DataError(f"ignore mask of shape {tuple(ignore.shape)} does not match heatmaps of shape "
                        f"{tuple(h.shape)}")
    b = h.shape[0]
    h, gt = h.reshape(b, -1), masks.reshape(b, -1).to(torch.bool)
    valid = None
    if ignore is not None:
        valid = ~ignore.reshape(b, -1).to(torch.bool)
        h, gt = torch.where(valid, h, 0), gt & valid
    if minmax:
        h = _minmax(h, valid)
    k = torch.count_nonzero(gt, dim=1)
    total = h.sum(1)
    if blank_maps not in BLANK_MAPS:
        raise DataError(f"unknown blank-map rule '{blank_maps}'; choose one of {', '.join(BLANK_MAPS)}")
    # a non-finite value makes the total non-finite too
    undefined = (k == 0) | ~torch.isfinite(total)
    blank = (total == 0) & ~undefined
    if blank_maps == "nan":
        undefined, blank = undefined | blank, torch.zeros_like(blank)
    return _Prepared(h, gt, valid, k, total, undefined, blank)


def relevance_mass_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor,
                            ignore: torch.Tensor | None = None, pooling: str = "none",
                            blank_maps: str = "nan") -> torch.Tensor:
    """RMA per item (B,): relevance inside the mask over all relevance (Arras et al. 2022, eq. 1)."""
    p = _prepare(heatmaps, masks, ignore, pooling, blank_maps=blank_maps)
    return _mass_accuracy(p)


def relevance_rank_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor,
                            ignore: torch.Tensor | None = None, pooling: str = "none",
                            ties: str = "expected", minmax: bool = False,
                            blank_maps: str = "nan") -> torch.Tensor:
    """RRA per item (B,): share of the K = |GT| top-ranked pixels inside GT (Arras et al. 2022, eq. 2).

    Ties at the K-th value count fractionally (``expected``, see the module docstring), by pixel
    index with the earlier pixel first (``index``, as Quantus) or the later pixel first (``paper``,
    as Cassano et al.'s ``np.argsort(h)[::-1]``).
    """
    _check_ties(ties)
    return _RANKING[ties](_prepare(heatmaps, masks, ignore, pooling, minmax, blank_maps))


def localisation_scores(heatmaps: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None = None,
                        pooling: str = "none", ties: str = "expected", minmax: bool = False,
                        blank_maps: str = "nan") -> dict[str, torch.Tensor]:
    """``{"rma": (B,), "rra": (B,)}`` with one pooling pass for both metrics."""
    _check_ties(ties)
    p = _prepare(heatmaps, masks, ignore, pooling, minmax, blank_maps)
    return {"rma": _mass_accuracy(p), "rra": _RANKING[ties](p)}


def _check_ties(ties: str) -> None:
    if ties not in _RANKING:
        raise DataError(f"unknown RRA tie rule '{ties}'; choose one of {', '.join(_RANKING)}")


def _minmax(h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(h − min) / (max − min) per row over the valid pixels (0 elsewhere); a constant row → 0."""
    inside = valid if valid is not None else torch.ones_like(h, dtype=torch.bool)
    low = torch.where(inside, h, torch.inf).amin(1, keepdim=True)
    high = torch.where(inside, h, -torch.inf).amax(1, keepdim=True)
    span = high - low
    scaled = (h - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(inside & (span > 0), scaled, torch.zeros_like(h))


def _mass_accuracy(p: _Prepared) -> torch.Tensor:
    # a blank map: 0 / (0 + eps) = 0 in the paper's code
    mass = torch.where(p.blank, 0.0, (p.h * p.gt).sum(1) / torch.where(p.blank, 1.0, p.total))
    return torch.where(p.undefined, torch.nan, mass)


def _rank_accuracy(p: _Prepared) -> torch.Tensor:
    keys, n_bits = _order_keys(p.h, p.valid)
    k = p.k.clamp(min=1)
    _, n_above, n_tied, gt_above, gt_tied = _kth_largest(keys, k, n_bits, p.gt)
    hits = gt_above + (k - n_above) * gt_tied.double() / n_tied
    return torch.where(p.undefined, torch.nan, (hits / k).to(p.h.dtype))


def _rank_accuracy_by_index(p: _Prepared, later_first: bool = False) -> torch.Tensor:
    """RRA with ties broken by pixel index: a stable descending sort of the flattened map, whose
    first K pixels are the top K (ignored pixels sort last). Ties rank the earlier pixel first
    (Quantus), or with ``later_first`` the later one (the paper's ``np.argsort(h)[::-1]``: the
    same stable sort of the row read backwards, its mask read backwards with it)."""
    h = p.h if p.valid is None else torch.where(p.valid, p.h, -torch.inf)
    gt = p.gt
    if later_first:
        h, gt = h.flip(1), gt.flip(1)
    order = torch.sort(h, dim=1, descending=True, stable=True).indices
    top = torch.arange(h.shape[1], device=h.device).unsqueeze(0) < p.k.unsqueeze(1)
    hits = (gt.gather(1, order) & top).sum(1)
    return torch.where(p.undefined, torch.nan, hits.to(p.h.dtype) / p.k.clamp(min=1).to(p.h.dtype))


def _rank_accuracy_later_first(p: _Prepared) -> torch.Tensor:
    return _rank_accuracy_by_index(p, later_first=True)


def _order_keys(h: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Non-negative integers that sort like the non-negative values ``h``; with ``valid``, valid
    pixels get keys >= 1 and the others 0, below all of them.

    The IEEE-754 bit pattern of a non-negative float, read as a signed integer of the same width, is
    monotonic in the value; ``+ 0.0`` turns a -0.0 into +0.0 first.
    """
    if h.dtype == torch.float64:
        keys, n_bits = (h + 0.0).view(torch.int64), 63
    else:
        keys, n_bits = (h.to(torch.float32) + 0.0).view(torch.int32), 31
    if valid is None:
        return keys, n_bits
    keys += 1
    return keys * valid, n_bits


def _kth_largest(keys: torch.Tensor, k: torch.Tensor, n_bits: int, marked: torch.Tensor,
                 digit_bits: int = 11) -> tuple[torch.Tensor, ...]:
    """Per row of non-negative integer ``keys`` (B, N) below 2**n_bits: the k-th largest key ``t``,
    the number of keys > t and == t, and the same two counts among the ``marked`` (B, N) keys.

    Radix select, most significant digit first: per pass, one histogram (``bincount``) of the
    candidates' next digit for all rows at once — marked keys in a second histogram — whatever the
    k of each row. After the first pass only the keys sharing the chosen leading digit remain
    candidates; they are gathered into a flat list, so later passes touch few values. A key that
    stopped being a candidate lands in a row's first or last slot.
    """
    b = keys.shape[0]
    values, flags = keys, marked
    rows = torch.arange(b, device=keys.device, dtype=keys.dtype).unsqueeze(1)
    prefix = torch.zeros(b, dtype=keys.dtype, device=keys.device)
    remaining = k.to(torch.int64).clone()
    marked_above = torch.zeros_like(remaining)
    decided = n_bits  # bits at and above this position are fixed in ``prefix``
    while decided > 0:
        shift = max(0, decided - digit_bits)
        width = decided - shift
        radix = 1 << width
        slots = radix + 2  # per row: [below the candidates, digit 0 .. radix-1, above them]
        digit = values >> shift
        if decided < n_bits:
            digit = (digit - (prefix << width)[rows]).clamp_(-1, radix)
        first_slot = rows * slots + 1
        slot = digit + torch.where(flags, first_slot + b * slots, first_slot)  # marked: 2nd histogram
        hist = torch.bincount(slot.reshape(-1), minlength=2 * b * slots).view(2, b, slots)[:, :, 1:-1]
        at_or_above = hist.flip(2).cumsum(2).flip(2)
        at_or_above_all = at_or_above.sum(0)
        chosen = (at_or_above_all >= remaining.unsqueeze(1)).sum(1) - 1
        index = (chosen + 1).clamp(max=radix - 1).view(1, b, 1).expand(2, b, 1)
        strictly_above = torch.where(chosen + 1 < radix, at_or_above.gather(2, index).squeeze(2), 0)
        remaining = remaining - strictly_above.sum(0)
        marked_above = marked_above + strictly_above[1]
        if decided == n_bits:  # keep only the candidates, as a flat list with their rows
            row_index, column = (digit == chosen.to(keys.dtype).unsqueeze(1)).nonzero(as_tuple=True)
            values, rows = keys[row_index, column], row_index.to(keys.dtype)
            flags = marked[row_index, column]
        prefix = (prefix << width) | chosen.to(keys.dtype)
        decided = shift
    tied = hist.gather(2, chosen.view(1, b, 1).expand(2, b, 1)).squeeze(2)
    return prefix, k - remaining, tied.sum(0), marked_above, tied[1]


#: RRA tie rules (module docstring)
_RANKING = {"expected": _rank_accuracy, "index": _rank_accuracy_by_index, "paper": _rank_accuracy_later_first}
#: the RRA tie rules' names
TIE_RULES = tuple(_RANKING)
