"""Sharpness of the minimum a (pruned) model sits in (Tartaglione, Bragagnolo & Grangetto,
ICANN 2020, Sec. 4.2: gradual pruning finds sharper, well-generalizing minima).

* :func:`loss_increase` — L(w ⊙ (1 + σ·ε)) − L(w), ε ~ N(0, 1) per weight, over M draws: a
  *relative* perturbation, so a weight is moved in proportion to its size and a pruned weight
  (w = 0, or masked) stays exactly 0 — the perturbed net has the pruned architecture.
* :func:`hessian_top_eigenvalue` — the eigenvalue of largest magnitude of the loss Hessian with
  respect to the unpruned weights (the Hessian projected on the mask, P·H·P), by power iteration
  on Hessian-vector products (Pearlmutter 1994: H·v = ∇(∇L · v)) on a fixed batch.

The model is evaluated with :func:`torch.func.functional_call`, so its own parameters are never
modified; it is used in the mode it is in (``eval()`` for BatchNorm with running statistics).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mask_for(name: str, weight: torch.Tensor, masks: dict[str, torch.Tensor] | None
              ) -> torch.Tensor | None:
    if not masks or name not in masks:
        return None
    return masks[name].to(device=weight.device, dtype=weight.dtype)


def _weights(model: nn.Module, names: Iterable[str] | None,
             masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The parameters to perturb (``names``, else the masked ones, else every parameter), with
    their masks applied: the pruned network is w ⊙ m even if a weight under a 0 is not 0."""
    params = dict(model.named_parameters())
    if names is None:
        names = list(masks) if masks else list(params)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise KeyError(f"model has no parameter(s) {unknown}")
    out = {}
    for n in names:
        w, mask = params[n].detach(), _mask_for(n, params[n], masks)
        out[n] = w * mask if mask is not None else w
    return out


def _mean_loss(model: nn.Module, params: dict[str, torch.Tensor],
               batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn) -> torch.Tensor:
    total, count = 0.0, 0
    for x, y in batches:
        out = functional_call(model, params, (x,))
        total = total + loss_fn(out, y) * len(y)
        count += len(y)
    return total / count


def _prepare(model: nn.Module, batches, transform) -> list[tuple[torch.Tensor, torch.Tensor]]:
    device = next(model.parameters()).device
    transform = transform or (lambda x: x)
    return [(transform(x.to(device)), torch.as_tensor(y).to(device)) for x, y in batches]


@torch.no_grad()
def loss_increase(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  sigma: float, n_draws: int = 10, masks: dict[str, torch.Tensor] | None = None,
                  params: Iterable[str] | None = None, loss_fn: LossFn = nn.functional.cross_entropy,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  seed: int = 0) -> tuple[float, torch.Tensor]:
    """Base loss and the loss increase of each of ``n_draws`` relative perturbations of size σ.

    Perturbed are ``params`` (names), by default the masked ones (every parameter without
    ``masks``); the loss is the mean of ``loss_fn`` over all images of ``batches``.
    """
    data = _prepare(model, batches, transform)
    weights = _weights(model, params, masks)
    base = float(_mean_loss(model, weights, data, loss_fn))
    g = torch.Generator().manual_seed(int(seed))
    increases = torch.empty(n_draws, dtype=torch.float64)
    for draw in range(n_draws):
        moved = {}
        for name, w in weights.items():
            noise = torch.randn(w.shape, generator=g).to(device=w.device, dtype=w.dtype)
            new = w * (1 + sigma * noise)
            mask = _mask_for(name, w, masks)
            moved[name] = new * mask if mask is not None else new
        increases[draw] = float(_mean_loss(model, moved, data, loss_fn)) - base
    return base, increases


@dataclass
class TopEigenvalue:
    eigenvalue: float
    iterations: int
    converged: bool


def hessian_top_eigenvalue(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                           masks: dict[str, torch.Tensor] | None = None,
                           params: Iterable[str] | None = None,
                           loss_fn: LossFn = nn.functional.cross_entropy,
                           transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           max_iter: int = 50, tol: float = 1e-3, seed: int = 0) -> TopEigenvalue:
    """Largest-magnitude eigenvalue of ∇²L on ``batch`` w.r.t. ``params`` (default: the masked
    parameters, or all), restricted to unpruned weights; stops when the Rayleigh quotient changes
    by less than ``tol`` (relative) between iterations."""
    (x, y), = _prepare(model, [batch], transform)
    weights = {n: w.clone().requires_grad_(True) for n, w in _weights(model, params, masks).items()}
    masks_of = {n: _mask_for(n, w, masks) for n, w in weights.items()}

    def project(vs):
        return [v * masks_of[n] if masks_of[n] is not None else v for n, v in zip(weights, vs)]

    # the fused CPU/GPU attention kernels have no double backward; the math kernel does
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        loss = loss_fn(functional_call(model, weights, (x,)), y)
        grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    g = torch.Generator().manual_seed(int(seed))
    v = project([torch.randn(w.shape, generator=g).to(w) for w in weights.values()])
    norm = torch.sqrt(sum((t * t).sum() for t in v))
    v = [t / norm for t in v]
    eigenvalue, previous = 0.0, None
    for iteration in range(1, max_iter + 1):
        with torch.enable_grad():
            hv = torch.autograd.grad(grads, list(weights.values()), grad_outputs=v, retain_graph=True)
        hv = project([t.detach() for t in hv])
        eigenvalue = float(sum((a * b).sum() for a, b in zip(v, hv)))
        norm = torch.sqrt(sum((t * t).sum() for t in hv))
        if float(norm) == 0.0:
            return TopEigenvalue(0.0, iteration, True)
        v = [t / norm for t in hv]
        if previous is not None and abs(eigenvalue - previous) <= tol * max(abs(eigenvalue), 1e-12):
            return TopEigenvalue(eigenvalue, iteration, True)
        previous = eigenvalue
    return TopEigenvalue(eigenvalue, max_iter, False)
