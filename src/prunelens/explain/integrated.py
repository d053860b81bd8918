"""Integrated Gradients (Sundararajan, Taly & Yan 2017, eq. 1 and its Riemann approximation eq. 3).

IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂f(x' + α(x − x'))/∂x_i dα, approximated by a quadrature
Σ_k w_k ∇f(x' + α_k (x − x')). Rules (named as in Captum):

* ``riemann_left`` / ``riemann_right`` / ``riemann_middle``: n equal steps, w_k = 1/n, nodes at
  the left ends, right ends or midpoints of the n intervals;
* ``riemann_trapezoid``: nodes α_k = k/(n−1), weights 1/(n−1) halved at both ends — the composite
  trapezoid rule, whose weights sum to 1. (Captum 0.9 uses weights 1/n here, so its trapezoid
  attributions are (n−1)/n times these.)
* ``gausslegendre``: n-point Gauss–Legendre nodes and weights mapped from [−1, 1] to [0, 1].

The baseline x' defaults to a black image in pixel space, normalised with the spec. The rows
(noise sample × step × image) are evaluated in chunks whose size follows a memory cap. With
``noise_samples > 0``, SmoothGrad (Smilkov et al. 2017) wraps IG: Gaussian noise of standard
deviation ``noise_std`` (in the model's input space, as Captum's NoiseTunnel) is added to x, IG is
computed for each noisy copy and the attributions are averaged.

Completeness (the paper's Proposition 1): Σ_i IG_i(x) = f(x) − f(x'). The returned gap is
|Σ_i IG_i − (f(x) − f(x'))| per image (with noise: against the mean of f over the noisy copies).
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from prunelens.errors import ConfigError
from prunelens.explain._common import check_images, forward, resolve_spec, select_targets, target_scores
from prunelens.models import ArchSpec

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


class IGResult(NamedTuple):
    attributions: torch.Tensor      # (B, C, H, W)
    completeness_gap: torch.Tensor  # (B,)


def quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Nodes α_k in [0, 1] and weights w_k of an n-step rule (float64)."""
    if method not in RULES:
        raise ConfigError(f"unknown integration rule '{method}'; choose one of {', '.join(RULES)}")
    n = int(n_steps)
    if n < 1 or (method == "riemann_trapezoid" and n < 2):
        raise ConfigError(f"n_steps must be >= {2 if method == 'riemann_trapezoid' else 1} for {method}, got {n}")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


def black_baseline(x: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
    """A black image (0 in pixel space) in the model's input space, shaped like ``x``."""
    return spec.normalize(torch.zeros_like(x[:1])).expand_as(x)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None,
                         baseline: torch.Tensor | None = None, n_steps: int = 50,
                         method: str = "gausslegendre", *, noise_samples: int = 0,
                         noise_std: float = 1.0, generator: torch.Generator | None = None,
                         internal_batch_size: int | None = None, memory_cap_mb: float = 1024.0,
                         spec: ArchSpec | None = None, fold_bn: bool = True) -> IGResult:
    """Integrated Gradients of normalised images ``x`` (B, C, H, W) for ``target`` (predicted class
    when None). Returns the attributions and the completeness gap per image.

    ``internal_batch_size`` rows are evaluated at a time; when None it follows ``memory_cap_mb``
    (the activation memory of one row is measured on a probe forward pass); on a CPU also at most
    :data:`CPU_MAX_ROWS` and few enough that no activation of a chunk exceeds
    :data:`CPU_FRESH_PAGES_BYTES`. ``fold_bn`` evaluates an equivalent copy of an eval-mode model with BatchNorm folded into the preceding convolutions
    (:func:`fold_batchnorm`): the same function, fewer operations.
    """
    check_images(x)
    alphas, weights = quadrature(n_steps, method)
    if noise_samples < 0 or noise_std < 0:
        raise ConfigError(f"noise_samples and noise_std must be >= 0, got {noise_samples}, {noise_std}")
    x = x.detach()
    spec = resolve_spec(model, spec)
    if baseline is None:
        baseline = black_baseline(x, spec)
    baseline = baseline.detach().to(x).expand_as(x)
    net = fold_batchnorm(model) if fold_bn else model

    def f(z: torch.Tensor) -> torch.Tensor:
        return forward(net, z, spec)

    # the folded copy keeps its convolutions channels-last: feed it that layout
    layout = torch.channels_last if net is not model else torch.contiguous_format
    rows = _rows_per_chunk(net, f, x, internal_batch_size, memory_cap_mb)
    f_x = _logits(f, x, rows)
    target = select_targets(f_x, target)
    inputs = x.unsqueeze(0)
    if noise_samples > 0:
        noise = torch.randn((noise_samples, *x.shape), generator=generator, dtype=x.dtype,
                            device="cpu" if generator is None else generator.device).to(x.device)
        inputs = inputs + noise_std * noise
        f_x = _logits(f, inputs.flatten(0, 1), rows).view(noise_samples, *f_x.shape).mean(0)
    path_grads = _path_gradients(f, inputs, baseline, target, alphas, weights, rows, layout)
    attributions = ((inputs - baseline) * path_grads).mean(0)
    delta = target_scores(f_x, target) - target_scores(_logits(f, baseline, rows), target)
    gap = (attributions.flatten(1).sum(1) - delta).abs()
    return IGResult(attributions, gap)


@torch.no_grad()
def _logits(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
    return torch.cat([f(chunk) for chunk in x.split(rows_per_chunk)])


def _path_gradients(f: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor,
                    alphas: np.ndarray, weights: np.ndarray, rows_per_chunk: int,
                    layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Σ_k w_k ∇f(x' + α_k (x − x')) for every noisy copy s and image i: (S, B, C, H, W).

    Row r of the flattened (copy, step, image) grid is copy r // (n·B), step (r // B) % n and image
    r % B; chunks of rows are built on the fly, so memory follows the chunk size only.
    """
    s, b = inputs.shape[:2]
    n = len(alphas)
    alpha = torch.as_tensor(alphas, dtype=inputs.dtype, device=inputs.device)
    weight = torch.as_tensor(weights, dtype=inputs.dtype, device=inputs.device)
    diff = (inputs - baseline).reshape(s * b, *inputs.shape[2:])
    base = baseline.reshape(b, *inputs.shape[2:])
    total = torch.zeros_like(diff)
    view = (-1,) + (1,) * (inputs.dim() - 2)
    for start in range(0, s * n * b, rows_per_chunk):
        r = torch.arange(start, min(start + rows_per_chunk, s * n * b), device=inputs.device)
        copy_image, step, image = (r // (n * b)) * b + r % b, (r // b) % n, r % b
        z = (base[image] + alpha[step].view(view) * diff[copy_image])
        z = z.contiguous(memory_format=layout).requires_grad_(True)
        with torch.enable_grad():
            score = target_scores(f(z), target[image]).sum()
        grad, = torch.autograd.grad(score, z)
        total.index_add_(0, copy_image, grad * weight[step].view(view))
    return total.view_as(inputs)


# ---- memory cap ------------------------------------------------------------------------------------
_ROW_BYTES: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


#: On a CPU, chunks this small keep more of a pass in cache: resnet18 at 224 px on 2 cores ran IG
#: 1.24x faster with 16 rows per chunk than with the 76 a 1 GB cap allows (benchmarks/rq1.py --rows).
CPU_MAX_ROWS = 16

#: glibc serves allocations above this size (the ceiling of its dynamic mmap threshold) with fresh
#: mmap'ed pages, which the kernel zero-fills on first touch at every chunk. Keeping each
#: activation of a chunk below it lets the heap reuse freed memory: resnet18 at 224 px on 2 CPU
#: cores ran IG 6 % faster with 8 rows per chunk (25.7 MB stem activations) than with 16 (51 MB).
CPU_FRESH_PAGES_BYTES = 32 * 2**20


def _rows_per_chunk(net: nn.Module, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    internal_batch_size: int | None, memory_cap_mb: float) -> int:
    if internal_batch_size is not None:
        if internal_batch_size < 1:
            raise ConfigError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        return int(internal_batch_size)
    if memory_cap_mb <= 0:
        raise ConfigError(f"memory_cap_mb must be > 0, got {memory_cap_mb}")
    per_row, largest = _row_bytes(net, x[:1], f)
    rows = max(1, int(memory_cap_mb * 2**20 // per_row))
    if x.device.type != "cpu":
        return rows
    below_fresh_pages = max(1, CPU_FRESH_PAGES_BYTES // largest)
    return min(rows, CPU_MAX_ROWS, below_fresh_pages)


def rows_per_chunk(model: nn.Module, x: torch.Tensor, memory_cap_mb: float = 1024.0, *,
                   spec: ArchSpec | None = None, fold_bn: bool = True) -> int:
    """How many rows :func:`integrated_gradients` evaluates at a time under ``memory_cap_mb``."""
    spec = resolve_spec(model, spec)
    net = fold_batchnorm(model) if fold_bn else model
    return _rows_per_chunk(net, lambda z: forward(net, z, spec), x, None, memory_cap_mb)


def row_memory_bytes(net: nn.Module, x1: torch.Tensor,
                     f: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """Bytes one input row costs in a forward (``f``, default ``net``) + input-gradient pass: the
    activations autograd saves for backward (measured once per model, input shape and dtype; weights
    excluded) plus the row, its gradient and the gradient buffer."""
    return _row_bytes(net, x1, f)[0]


def _row_bytes(net: nn.Module, x1: torch.Tensor,
               f: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[int, int]:
    """(:func:`row_memory_bytes`, bytes of the largest single activation of one row)."""
    key = (tuple(x1.shape[1:]), x1.dtype, x1.device)
    cache = _ROW_BYTES.setdefault(net, {})
    if key not in cache:
        weights = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        z = x1.detach().clone().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            (f or net)(z)
        row = x1.numel() * x1.element_size()
        cache[key] = (sum(seen.values()) + 3 * row, max([row, *seen.values()]))
    total, largest = cache[key]
    return max(1, total), max(1, largest)


# ---- BatchNorm folding -----------------------------------------------------------------------------
_FOLDED: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is an affine map, so conv→BN equals one convolution with rescaled weights
    and a bias: the copy computes the same function (up to float rounding) with fewer passes over
    the activations, forward and backward. Its convolution weights are stored channels-last, the
    layout oneDNN and cuDNN convolve fastest (fed channels-last inputs by
    :func:`integrated_gradients`). Models in training mode, without BatchNorm, or that
    ``torch.fx`` cannot trace are returned unchanged. The copy is cached until a parameter or buffer
    of ``model`` changes.
    """
    if model.training or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    stamp = tuple((t.data_ptr(), t._version) for t in [*model.parameters(), *model.buffers()])
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with warnings.catch_warnings():  # the module imports deprecated torch.jit helpers
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse
        folded = fuse(model, inplace=False)
        if any(isinstance(m, nn.Conv2d) for m in folded.modules()):
            folded = folded.to(memory_format=torch.channels_last)
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, AttributeError, NotImplementedError):
        folded = model  # torch.fx cannot trace it (data-dependent control flow): use it as it is
    _FOLDED[model] = (stamp, folded)
    return folded
