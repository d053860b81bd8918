"""Magnitude pruning masks, kept exact through training.

Selection: among the weights still alive, remove the ``k`` of smallest magnitude, where
``k = round(amount × alive)`` — globally (one ranking over every prunable weight) or per layer.
The candidate vector and ``torch.topk(..., largest=False)`` are the same as in
``torch.nn.utils.prune.global_unstructured(..., pruning_method=L1Unstructured)``, so the masks
are identical to PyTorch's, ties included.
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunelens.models.registry import spec_for
from prunelens.models.spec import ArchSpec


def prunable_parameters(model: nn.Module, spec: ArchSpec | None = None, *,
                        exclude_first_layer: bool = False, exclude_classifier: bool = False,
                        exclude_attention: bool = False, exclude: Iterable[str] = (),
                        biases: bool = False) -> dict[str, nn.Parameter]:
    """The parameters a run prunes: the spec's prunable weights minus the configured exclusions;
    with ``biases`` each kept weight ``<layer>.weight`` is followed by its ``<layer>.bias``."""
    spec = spec or spec_for(model)
    params = spec.prunable(model)
    dropped = set()
    if exclude_first_layer:
        dropped.add(spec.first_layer(model))
    if exclude_classifier:
        dropped.add(spec.classifier(model))
    if exclude_attention:
        dropped.update(spec.attention_parameters(model))
    patterns = list(exclude)
    kept = {n: p for n, p in params.items()
            if n not in dropped and not any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
    if not biases:
        return kept
    named = dict(model.named_parameters())
    out = {}
    for n, p in kept.items():
        out[n] = p
        bias = layer_of(n) + "bias"
        if layer_of(n) != n and n.endswith("weight") and bias in named:
            out[bias] = named[bias]
    return out


def layer_of(name: str) -> str:
    """The layer of a parameter: ``fc1.weight`` and ``fc1.bias`` → ``fc1.``; any other name (e.g.
    ``attn.in_proj_weight``) is a layer of its own."""
    for suffix in ("weight", "bias"):
        if name == suffix or name.endswith("." + suffix):
            return name[:-len(suffix)]
    return name


def prunable_from_config(model: nn.Module, prune_cfg) -> dict[str, nn.Parameter]:
    return prunable_parameters(
        model, exclude_first_layer=prune_cfg.exclude_first_layer,
        exclude_classifier=prune_cfg.exclude_classifier,
        exclude_attention=prune_cfg.exclude_attention, exclude=prune_cfg.exclude,
        biases=prune_cfg.biases)


def layer_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Parameter names grouped by layer, in order: a layer's weight and bias are ranked together."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(layer_of(n), []).append(n)
    return groups


def cumulative_ratio(rate: float, rounds: int, start: float = 0.0) -> float:
    """IMP.py:89, 182: ``ratios = ratio*np.ones(lprun)`` with ``ratio`` the ``init_sparsity``
    (``start``, IMP.py:58), then ``ratios += rat_factor*(1-ratios)``, ``rounds`` times (iterated as
    they do, so that floor(ratio × N) rounds as theirs)."""
    ratio = float(start)
    for _ in range(rounds):
        ratio += rate * (1 - ratio)
    return ratio


def cumulative_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], ratio: float,
                     scope: str = "layerwise", min_alive: int | dict[str, int] = 0
                     ) -> dict[str, torch.Tensor]:
    """Pellegrini & Biroli's ``get_mask`` (SiftingFeatures src/Utils.py:52-74): per group (a layer's
    entries, its bias included when pruned, for layerwise scope; every entry for global), the
    magnitudes with pruned entries counting 0 (58-63), ``ncutoff = int(ratio × N)`` (64), the
    threshold the ``ncutoff``-th smallest (66-67), kept where ``>= threshold`` (68-69: ties kept).
    ``min_alive`` caps ``ncutoff`` so that at least that many entries stay alive. Entries already
    pruned stay pruned (theirs too, whenever the threshold is above 0)."""
    groups = layer_groups(weights) if scope == "layerwise" else {"": list(weights)}
    out = {}
    for prefix, names in groups.items():
        scores = torch.cat([(weights[n].detach().abs() * masks[n]).reshape(-1) for n in names])
        old = torch.cat([masks[n].reshape(-1) for n in names])
        floor = (sum(min_alive.get(n, 0) for n in names) if isinstance(min_alive, dict)
                 else int(min_alive))
        ncutoff = min(int(ratio * len(scores)), len(scores) - max(1, floor))
        threshold = torch.sort(scores).values[ncutoff]
        keep = (scores >= threshold) & old
        start = 0
        for n in names:
            size = weights[n].numel()
            out[n] = keep[start:start + size].view_as(masks[n])
            start += size
    return out


def dense_masks(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}


def is_bias(name: str) -> bool:
    """A layer's bias (``fc1.bias``), as :func:`prunable_parameters` adds it with ``biases``."""
    return name == "bias" or name.endswith(".bias")


def random_keep_mask(uniform: torch.Tensor, sparsity: float) -> torch.Tensor:
    """SiftingFeatures src/Utils.py:99 (and 106 for conv layers): an entry is dropped where its
    uniform draw is ``< spars``, ``np.where(np.random.uniform(0.0,1.0,shape)<spars[si],0,1)``."""
    return ~(uniform < sparsity)


def random_initial_masks(params: dict[str, nn.Parameter], sparsity: float,
                         generator_of: Callable[[str], torch.Generator]) -> dict[str, torch.Tensor]:
    """Pellegrini & Biroli's first mask, ``make_mask`` (SiftingFeatures src/Utils.py:93-101): each
    weight of a pruned layer dropped independently with probability ``sparsity``
    (:func:`random_keep_mask` of float64 uniforms drawn by ``generator_of(name)``, one stream per
    parameter); biases kept (``np.ones((par[1]))``, Utils.py:100), also when they are pruned later.
    ``sparsity`` 0 gives :func:`dense_masks` and draws nothing."""
    if sparsity == 0:
        return dense_masks(params)
    return {n: (torch.ones_like(p, dtype=torch.bool, device="cpu") if is_bias(n) else
                random_keep_mask(torch.rand(p.shape, generator=generator_of(n), dtype=torch.float64),
                                 sparsity))
            for n, p in params.items()}


def _n_to_prune(alive: int, amount: float | int) -> int:
    # the rounding of torch.nn.utils.prune._compute_nparams_toprune
    return int(amount) if isinstance(amount, int) else round(amount * alive)


def _prune_smallest(scores: torch.Tensor, alive: torch.Tensor, k: int) -> torch.Tensor:
    """New flat keep-mask: drop the k smallest |scores| among the alive entries."""
    keep = alive.clone()
    if k <= 0:
        return keep
    alive_idx = alive.nonzero().squeeze(1)
    drop = torch.topk(scores[alive_idx].abs(), k=k, largest=False).indices
    keep[alive_idx[drop]] = False
    return keep


def magnitude_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                    amount: float | int, scope: str = "global",
                    min_alive: int | dict[str, int] = 0) -> dict[str, torch.Tensor]:
    """Masks after one pruning step.

    ``amount``: a float is the fraction of the *alive* weights to remove (per scope), an int the
    number. ``min_alive`` caps the step so that at least that many weights stay alive (a number
    for global scope, a number per layer for layerwise).
    """
    if scope == "global":
        names = list(weights)
        scores = torch.cat([weights[n].detach().reshape(-1) for n in names])
        alive = torch.cat([masks[n].reshape(-1) for n in names])
        n_alive = int(alive.sum())
        k = min(_n_to_prune(n_alive, amount), max(0, n_alive - int(min_alive)))
        keep = _prune_smallest(scores, alive, k)
        out, start = {}, 0
        for n in names:
            size = weights[n].numel()
            out[n] = keep[start:start + size].view_as(masks[n])
            start += size
        return out
    if scope == "layerwise":  # a layer's weight and bias (when both are pruned) ranked together
        out = {}
        for names in layer_groups(weights).values():
            scores = torch.cat([weights[n].detach().reshape(-1) for n in names])
            alive = torch.cat([masks[n].reshape(-1) for n in names])
            n_alive = int(alive.sum())
            floor = (sum(min_alive[n] for n in names) if isinstance(min_alive, dict)
                     else int(min_alive))
            k = min(_n_to_prune(n_alive, amount), max(0, n_alive - floor))
            keep, start = _prune_smallest(scores, alive, k), 0
            for n in names:
                size = weights[n].numel()
                out[n] = keep[start:start + size].view_as(masks[n])
                start += size
        return out
    raise ValueError(f"unknown pruning scope '{scope}'")


def random_masks_like(reference: dict[str, torch.Tensor], within: dict[str, torch.Tensor],
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random keep-masks with each layer's kept count of ``reference`` (the random-mask control of
    Frankle & Carbin 2019 / OpenLTH, layerwise): drawn uniformly among the entries alive in
    ``within`` (so successive controls stay nested), or among all entries where too few are."""
    out = {}
    for name, ref in reference.items():
        keep = int(ref.bool().sum())
        pool = within[name].flatten().bool()
        candidates = torch.nonzero(pool if int(pool.sum()) >= keep else torch.ones_like(pool)).flatten()
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:keep]]
        flat = torch.zeros(ref.numel(), dtype=torch.bool)
        flat[chosen] = True
        out[name] = flat.reshape(ref.shape)
    return out


class Masker:
    """Keeps pruned weights exactly zero during training.

    Before every optimiser step the gradients of pruned weights are zeroed (so momentum and Adam
    moments stay zero there); after it the weights are multiplied by the mask (so weight decay or
    any other update cannot revive them).
    """

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
        self.names = list(params)
        self.params = [params[n] for n in self.names]
        self.masks = [masks[n].to(device=params[n].device, dtype=params[n].dtype) for n in self.names]
        self._handles: list = []

    @torch.no_grad()
    def apply_(self) -> None:
        if self.params:
            torch._foreach_mul_([p.data for p in self.params], self.masks)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    def attach(self, optimizer: torch.optim.Optimizer) -> Masker:
        self._handles.append(optimizer.register_step_pre_hook(lambda *_: self.mask_grads_()))
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply_()))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def sparsity(model: nn.Module, params: dict[str, nn.Parameter] | None = None) -> float:
    """Fraction of exactly-zero weights over the prunable parameters (the spec's, by default)."""
    params = params if params is not None else spec_for(model).prunable(model)
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    return zeros / total if total else 0.0


def layer_sparsity(model: nn.Module, params: dict[str, nn.Parameter] | None = None) -> list[dict]:
    """Per-layer report: name, shape, number of weights, zeros, sparsity."""
    params = params if params is not None else spec_for(model).prunable(model)
    rows = []
    for name, p in params.items():
        zeros = int((p == 0).sum())
        rows.append({"name": name, "shape": list(p.shape), "numel": p.numel(), "zeros": zeros,
                     "sparsity": zeros / p.numel()})
    return rows


def mask_sparsity(masks: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Overall and per-layer sparsity of a set of keep-masks."""
    total = sum(m.numel() for m in masks.values())
    alive = sum(int(m.sum()) for m in masks.values())
    per_layer = {n: 1.0 - int(m.sum()) / m.numel() for n, m in masks.items()}
    return (1.0 - alive / total if total else 0.0), per_layer


def conv_linear_sparsity(model: nn.Module, layer_sparsity: dict[str, float]) -> float:
    """Pruned weights over every ``nn.Conv2d`` and ``nn.Linear`` weight of ``model`` (only its
    architecture is read): the sparsity Cassano et al.'s code reports (EIDOSLAB/pruning-for-vision-
    representation, train.py ``compute_sparsity_global``: zeros / numel over those weights; biases,
    norms and MultiheadAttention's ``in_proj_weight`` count in neither). ``layer_sparsity``: the
    per-layer pruned fraction of the pruned weights (level.json). Counted from the masks, so a
    weight that is zero without being pruned is not counted; their count includes it."""
    sizes = {f"{name}.weight" if name else "weight": m.weight.numel()
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    total = sum(sizes.values())
    pruned = sum(round(s * sizes[name]) for name, s in layer_sparsity.items() if name in sizes)
    return pruned / total if total else math.nan


def alive_units_fraction(mask: torch.Tensor) -> float:
    """Fraction of units (rows / output channels, dim 0) with at least one incoming connection,
    as an exact ratio of counts (a float32 mean would put 1 of 5 units above 0.2, and the
    strict stop rule, ``prune.stop_when: not_above``, compares with equality)."""
    mask = mask.detach().bool()
    if mask.ndim <= 1:
        return float(mask.any())
    units = mask.flatten(1).any(1)
    return int(units.sum()) / len(units)


def alive_unit_fraction(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per layer: :func:`alive_units_fraction` of each mask."""
    return {n: alive_units_fraction(m) for n, m in masks.items()}
