"""Class-independent response of first-layer units, and the weights of translated copies.

Pellegrini & Biroli (ICML 2022) find first-layer units of pruned fully connected nets with a
"class independent response", and "similar weights" for units whose masks are translated copies
of each other. Measured here, on tensors:

**Response.** a_u(x) is the first layer's *pre-activation* for image x: a Linear row's w_u·x + b_u,
or a conv channel's map averaged over positions. Pre-activation because it is what the unit's
(masked) weights compute, whatever follows the layer (a ReLU in an FCN, BatchNorm then ReLU in a
ResNet: nothing the spec describes), and because η² below is invariant to a per-unit affine map, so
an eval-mode BatchNorm after the layer would not change it.

**Class selectivity**, one of two measures:

* ``eta2``: η²_u = SS_between / SS_total of a_u over images grouped by class, the correlation
  ratio of Fisher's one-way ANOVA (η² = F(K−1) / (F(K−1) + N−K); Cohen 1973, *Educ. Psychol.
  Meas.* 33:107; Richardson 2011, *Educ. Res. Rev.* 6:135, Eq. 1). 0: every class has the same mean
  response; 1: the response is a function of the class.
* ``on_off_information``: I(1[a_u > 0]; y) in bits, the mutual information between the unit's
  on/off state (its ReLU's, in an FCN) and the class (Cover & Thomas 2006, Eq. 2.28): the
  class-conditional neuron states that PSP-entropy is built on (Tartaglione et al. 2020).

**Shuffled-label baseline.** The same measure with the labels permuted (P seeded permutations, class
sizes kept) is what the unit shows when its response does not depend on the class. A unit is
*class-independent* when its selectivity is not above the ``quantile`` (0.95) of its own shuffled
distribution: it fails a one-sided permutation test at level 1 − quantile (Good 2005,
*Permutation, Parametric and Bootstrap Tests of Hypotheses*, Ch. 3). A unit whose response is
constant over the images (disconnected) gets NaN and is left out of the fraction.

**Weights of translated copies.** For sampled pairs (i, j) of connected units, the masks' best
shift s (:func:`~prunelens.analysis.connectivity.best_shift`) and their similarity there
(:func:`~prunelens.analysis.connectivity.shift_similarity`, the cosine of the shifted masks) are
found; pairs with similarity ≥ ``match`` are translated copies. Their weights are compared at that
shift, cos(i, j) = Σ_c Σ_p w_i,c(p)·w_j,c(p + s) / (‖w_i‖·‖w_j‖); the reference is the same cosine for
all sampled (random) pairs, each at its own best mask shift.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prunelens.analysis import connectivity as conn
from prunelens.results import Record

MEASURES = ("eta2", "on_off_information")


# ---- responses -----------------------------------------------------------------------------------
class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the first layer has run."""


@torch.no_grad()
def first_layer_responses(model: nn.Module, spec, images: torch.Tensor, batch_size: int = 256
                          ) -> torch.Tensor:
    """Pre-activations a_u(x) of the first layer's units, (N, U) float64 on the CPU.

    ``images`` are (N, C, H, W) in [0, 1]; they are normalised by the spec and sent through the model
    until its first prunable layer has run. Conv channels are averaged over positions.
    """
    module = spec.first_layer_module(model)
    conv = spec.first_layer_units(model) == "kernels"
    captured: list[torch.Tensor] = []

    def hook(_, __, output):
        captured.append(output.flatten(2).mean(2) if conv else output)  # rows: (N, U) already
        raise _Captured

    device = next(model.parameters()).device
    handle = module.register_forward_hook(hook)
    try:
        for start in range(0, len(images), batch_size):
            try:
                spec.forward(model, spec.normalize(images[start:start + batch_size].to(device)))
            except _Captured:
                pass
    finally:
        handle.remove()
    return torch.cat(captured).double().cpu() if captured else torch.zeros(0, 0, dtype=torch.float64)


# ---- selectivity measures ------------------------------------------------------------------------
def _class_sums(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Σ over the images of each class, (K, U)."""
    return torch.zeros(num_classes, values.shape[1], dtype=values.dtype).index_add_(0, labels, values)


def eta_squared(responses: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
                ) -> torch.Tensor:
    """η²_u = SS_between / SS_total of each unit's response grouped by class, (U,) (see module)."""
    r = responses.double()
    labels = labels.long()
    k = int(num_classes or int(labels.max()) + 1)
    centred = r - r.mean(0)
    counts = torch.bincount(labels, minlength=k).double()
    sums = _class_sums(centred, labels, k)
    between = (sums.square() / counts.clamp(min=1).unsqueeze(1)).sum(0)
    total = centred.square().sum(0)
    return torch.where(total > 0, between / total.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def on_off_information(responses: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
                       ) -> torch.Tensor:
    """I(1[a_u > 0]; y) in bits for each unit, (U,) (see module)."""
    labels = labels.long()
    k = int(num_classes or int(labels.max()) + 1)
    n = len(labels)
    on = (responses > 0).double()
    class_size = torch.bincount(labels, minlength=k).double().unsqueeze(1)     # (K, 1)
    joint_on = _class_sums(on, labels, k)                                      # (K, U)
    info = torch.zeros(on.shape[1], dtype=torch.float64)
    for joint, state in ((joint_on, on.mean(0)), (class_size - joint_on, 1 - on.mean(0))):
        expected = class_size * state                                          # n_k · p(s)
        ratio = torch.where(joint > 0, joint / expected.clamp(min=1e-300), 1.0)
        info += torch.special.xlogy(joint / n, ratio).sum(0)
    return info / math.log(2)


_MEASURE: dict[str, Callable[..., torch.Tensor]] = {"eta2": eta_squared,
                                                    "on_off_information": on_off_information}


def _measure(name: str) -> Callable[..., torch.Tensor]:
    if name not in _MEASURE:
        raise ValueError(f"measure must be one of {MEASURES}, got {name!r}")
    return _MEASURE[name]


def shuffled_selectivity(responses: torch.Tensor, labels: torch.Tensor, n_permutations: int = 200,
                         seed: int = 0, measure: str = "eta2", num_classes: int | None = None
                         ) -> torch.Tensor:
    """The measure under ``n_permutations`` seeded permutations of the labels, (P, U)."""
    fn = _measure(measure)
    k = int(num_classes or int(labels.max()) + 1)
    g = torch.Generator().manual_seed(int(seed))
    labels = labels.long()
    return torch.stack([fn(responses, labels[torch.randperm(len(labels), generator=g)], k)
                        for _ in range(n_permutations)])


@dataclass
class ClassIndependence:
    """Per unit: ``selectivity``, the mean (``shuffled_mean``) and ``quantile`` (``threshold``) of its
    shuffled-label distribution, the permutation ``p_value`` and ``independent`` (1.0 / 0.0, NaN for
    a constant response); ``fraction``: share of class-independent units among the others."""

    measure: str
    selectivity: torch.Tensor
    shuffled_mean: torch.Tensor
    threshold: torch.Tensor
    p_value: torch.Tensor
    independent: torch.Tensor
    fraction: float


def class_independence(responses: torch.Tensor, labels: torch.Tensor, n_permutations: int = 200,
                       quantile: float = 0.95, seed: int = 0, measure: str = "eta2",
                       num_classes: int | None = None) -> ClassIndependence:
    """Selectivity of every unit against its shuffled-label baseline (see module)."""
    responses = responses.double()
    k = int(num_classes or int(labels.max()) + 1)
    observed = _measure(measure)(responses, labels, k)
    null = shuffled_selectivity(responses, labels, n_permutations, seed, measure, k)
    threshold = torch.quantile(null, quantile, dim=0)
    p_value = (1 + (null >= observed - 1e-12).sum(0)) / (1 + n_permutations)
    constant = (responses.amax(0) - responses.amin(0)) == 0
    nan = torch.full_like(observed, math.nan)
    independent = torch.where(constant, nan, (observed <= threshold).double())
    live = ~constant
    fraction = float(independent[live].mean()) if live.any() else math.nan
    return ClassIndependence(measure, torch.where(constant, nan, observed), null.mean(0), threshold,
                             torch.where(constant, nan, p_value.double()), independent, fraction)


# ---- weights of translated copies ----------------------------------------------------------------
@dataclass
class PairWeights:
    """For pairs (P, 2) of units: their masks' best ``shift`` (P, 2) and ``mask_similarity`` there,
    and the cosine ``weight_similarity`` of their weights at that shift."""

    pairs: torch.Tensor
    shift: torch.Tensor
    mask_similarity: torch.Tensor
    weight_similarity: torch.Tensor


def pair_weight_similarity(units: torch.Tensor, weights: torch.Tensor, pairs: torch.Tensor) -> PairWeights:
    """Masks ``units`` (U, C, H, W) bool and (masked) ``weights`` of the same shape; ``pairs`` (P, 2)."""
    a, b = units[pairs[:, 0]], units[pairs[:, 1]]
    mask_sim, _ = conn.shift_similarity(a, b)
    shift = conn.best_shift(a, b)
    wa, wb = weights[pairs[:, 0]].double(), weights[pairs[:, 1]].double()
    corr = conn.shift_correlation(wa, wb)                                # (P, 2H, 2W)
    h2, w2 = corr.shape[-2:]
    at = corr[torch.arange(len(pairs)), shift[:, 0] % h2, shift[:, 1] % w2]
    norm = wa.flatten(1).norm(dim=1) * wb.flatten(1).norm(dim=1)
    cos = torch.where(norm > 0, at / norm.clamp(min=1e-300), math.nan)
    return PairWeights(pairs, shift, mask_sim, cos)


# ---- records for one level -----------------------------------------------------------------------
def selectivity_records(model: nn.Module, spec, masks: dict[str, torch.Tensor], images: torch.Tensor,
                        labels: torch.Tensor, *, suite: str = "connectivity", num_classes: int | None = None,
                        batch_size: int = 256, n_permutations: int = 200, quantile: float = 0.95,
                        measure: str = "eta2", n_pairs: int = 1024, match: float = 0.9, seed: int = 0
                        ) -> Iterator[Record]:
    """Records of one level for the first layer (``method`` = the layer, ``item`` = unit or pair
    ``i-j``, ``condition`` = the selectivity measure):

    * ``class_selectivity``, ``class_selectivity_shuffled`` (mean of the shuffled baseline) per unit;
    * ``class_independent_fraction``: 1/0 per unit (NaN: constant response), so the mean over units
      is the fraction and bootstrap CIs apply;
    * ``translated_weight_similarity`` per sampled pair whose masks are translated copies
      (similarity ≥ ``match``), ``translated_weight_similarity_random`` per sampled pair, and
      ``translated_pair_fraction`` (share of sampled pairs that are translated copies).
    """
    name = spec.first_layer(model)
    layer = name.removesuffix(".weight")
    responses = first_layer_responses(model, spec, images, batch_size)
    ci = class_independence(responses, labels.cpu(), n_permutations, quantile, seed, measure, num_classes)
    for u in range(len(ci.selectivity)):
        for metric, values in (("class_selectivity", ci.selectivity),
                               ("class_selectivity_shuffled", ci.shuffled_mean),
                               ("class_independent_fraction", ci.independent)):
            yield Record(suite, metric, float(values[u]), method=layer, condition=measure, item=str(u))
    yield from _translated_records(model, spec, masks, name, suite, n_pairs, match, seed)


def _translated_records(model: nn.Module, spec, masks: dict[str, torch.Tensor], name: str, suite: str,
                        n_pairs: int, match: float, seed: int) -> Iterator[Record]:
    weight = dict(model.named_parameters())[name].detach().cpu()
    mask = masks.get(name) if masks else None
    mask = (mask if mask is not None else weight != 0).detach().bool().cpu()
    units = spec.first_layer_images(model, mask)
    if units is None:
        return  # the architecture gives no image view of its first layer: no shifts to compare
    weights = spec.first_layer_images(model, weight * mask)
    alive = torch.nonzero(conn.connections_per_unit(units) > 0).flatten()
    pairs = conn.sample_unit_pairs(alive, n_pairs, torch.Generator().manual_seed(int(seed)))
    if not len(pairs):
        return
    result = pair_weight_similarity(units, weights, pairs)
    layer = name.removesuffix(".weight")
    copies = result.mask_similarity >= match
    for (i, j), cos, is_copy in zip(pairs.tolist(), result.weight_similarity.tolist(), copies.tolist()):
        if is_copy:
            yield Record(suite, "translated_weight_similarity", cos, method=layer, item=f"{i}-{j}")
        yield Record(suite, "translated_weight_similarity_random", cos, method=layer, item=f"{i}-{j}")
    yield Record(suite, "translated_pair_fraction", float(copies.double().mean()), method=layer)
