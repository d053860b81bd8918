"""Attention maps of vision transformers: last-layer class-token attention and attention rollout.

torchvision's ViT calls its ``nn.MultiheadAttention`` modules with ``need_weights=False``, so the
probabilities are never materialised. They are recomputed here from what each module receives:
P = softmax(Q Kᵀ / √d) with Q, K the module's query/key inputs projected by its ``in_proj`` weights
(Vaswani et al. 2017, eq. 1), per head.

* :func:`attention_map` — last layer, class token → patch tokens, averaged over heads (the map the
  paper used).
* :func:`attention_rollout` — Abnar & Zuidema 2020, eq. 1 with the residual connection folded in:
  Ã_l = 0.5·Ā_l + 0.5·I (Ā_l the head-averaged attention of layer l, rows renormalised), and
  rollout = Ã_L ··· Ã_1; the class token's row over the patch tokens is the map.

Where the class token is, how Q and K are projected and how the patch tokens lie on their grid are
architecture facts of the spec (:meth:`~prunelens.models.ArchSpec.class_token_row`,
:meth:`~prunelens.models.ArchSpec.query_key`, :meth:`~prunelens.models.ArchSpec.tokens_to_grid`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.errors import ModelError
from prunelens.explain._common import check_images, forward, resolve_spec
from prunelens.models import ArchSpec


def attention_probabilities(module: nn.MultiheadAttention, query: torch.Tensor,
                            key: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d) per head, (B, heads, L, S), of an ``nn.MultiheadAttention`` for its inputs
    (Q, K from :meth:`prunelens.models.ArchSpec.query_key`)."""
    q, k = ArchSpec.query_key(module, query, key)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


@torch.no_grad()
def all_attention(model: nn.Module, x: torch.Tensor, spec: ArchSpec | None = None,
                  last_only: bool = False) -> list[torch.Tensor]:
    """Attention probabilities (B, heads, N, N) of every class-token attention module of the spec
    (in layer order) for ``x``."""
    check_images(x)
    spec = resolve_spec(model, spec)
    modules = spec.class_token_attention(model)
    if not modules:
        raise ModelError(f"{type(model).__name__} has no attention over a class token; attention maps "
                         "apply to ViTs (not to CNNs or Swin's window attention)")
    if last_only:
        modules = modules[-1:]
    return spec.capture_attention(modules, lambda: forward(model, x, spec))


def class_token_map(attention: torch.Tensor, x: torch.Tensor, spec: ArchSpec,
                    upsample: bool = True) -> torch.Tensor:
    """The class token's row of (B, N, N) attention, over the patch tokens, as a (B, H, W) map
    (upsampled bilinearly to the input size) or (B, h, w)."""
    row = spec.class_token_row(attention)                 # (B, N)
    grid = spec.tokens_to_grid(row.unsqueeze(-1))         # (B, 1, h, w)
    if upsample:
        grid = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return grid[:, 0]


def attention_map(model: nn.Module, x: torch.Tensor, *, spec: ArchSpec | None = None,
                  upsample: bool = True) -> torch.Tensor:
    """Last-layer attention of the class token to the patches, mean over heads → (B, H, W)."""
    spec = resolve_spec(model, spec)
    probs = all_attention(model, x, spec, last_only=True)[-1]
    return class_token_map(probs.mean(1), x, spec, upsample)


def rollout(attentions: list[torch.Tensor], identity_weight: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer (B, heads, N, N) attention → (B, N, N)."""
    result = None
    for probs in attentions:
        a = probs.mean(1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = (1 - identity_weight) * a + identity_weight * eye
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def attention_rollout(model: nn.Module, x: torch.Tensor, *, spec: ArchSpec | None = None,
                      identity_weight: float = 0.5, upsample: bool = True) -> torch.Tensor:
    """Attention rollout's class-token row over the patches → (B, H, W)."""
    spec = resolve_spec(model, spec)
    return class_token_map(rollout(all_attention(model, x, spec), identity_weight), x, spec, upsample)
