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

The class token is token 0 — the token the spec's ``to_grid`` drops before laying the others on
the patch grid; the grid shape also comes from ``to_grid``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.errors import ModelError
from prunelens.explain._common import check_images, forward, resolve_spec
from prunelens.models import ArchSpec

CLASS_TOKEN = 0


def attention_probabilities(module: nn.MultiheadAttention, query: torch.Tensor,
                            key: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d) per head, (B, heads, L, S), of an ``nn.MultiheadAttention`` for its inputs."""
    if module.bias_k is not None or module.add_zero_attn:
        raise ModelError("attention maps do not support nn.MultiheadAttention with add_bias_kv or "
                         "add_zero_attn")
    if not module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    e, h = module.embed_dim, module.num_heads
    d = e // h
    if module.in_proj_weight is not None:
        w_q, w_k = module.in_proj_weight[:e], module.in_proj_weight[e:2 * e]
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    b_q = b_k = None
    if module.in_proj_bias is not None:
        b_q, b_k = module.in_proj_bias[:e], module.in_proj_bias[e:2 * e]
    q = F.linear(query, w_q, b_q).unflatten(-1, (h, d)).transpose(1, 2)  # (B, h, L, d)
    k = F.linear(key, w_k, b_k).unflatten(-1, (h, d)).transpose(1, 2)    # (B, h, S, d)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)


def class_token_attention(model: nn.Module, spec: ArchSpec) -> list[nn.MultiheadAttention]:
    """The spec's attention modules that are ``nn.MultiheadAttention`` (ViT blocks; Swin's window
    attention has no class token and is left out)."""
    return [m for m in spec.attention_modules(model) if isinstance(m, nn.MultiheadAttention)]


@torch.no_grad()
def all_attention(model: nn.Module, x: torch.Tensor, spec: ArchSpec | None = None,
                  last_only: bool = False) -> list[torch.Tensor]:
    """Attention probabilities (B, heads, N, N) of every attention module (in layer order) for ``x``."""
    check_images(x)
    spec = resolve_spec(model, spec)
    modules = class_token_attention(model, spec)
    if not modules:
        raise ModelError(f"{type(model).__name__} has no nn.MultiheadAttention over a class token; "
                         "attention maps apply to ViTs (not to CNNs or Swin's window attention)")
    if last_only:
        modules = modules[-1:]
    found: dict[int, torch.Tensor] = {}

    def hook(module, args, kwargs):
        masked = any(kwargs.get(name) is not None for name in ("attn_mask", "key_padding_mask"))
        if masked or kwargs.get("is_causal"):
            raise ModelError("attention maps do not support attention masks")
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        found[id(module)] = attention_probabilities(module, query, key)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        forward(model, x, spec)
    finally:
        for handle in handles:
            handle.remove()
    return [found[id(m)] for m in modules]


def _class_token_row_to_map(row: torch.Tensor, x: torch.Tensor, model: nn.Module, spec: ArchSpec,
                            upsample: bool) -> torch.Tensor:
    """(B, N) weights of the class token over all tokens → (B, H, W) map over the patch grid."""
    grid = spec.to_grid(row.unsqueeze(-1), model)  # (B, 1, h, w), class token dropped
    if upsample:
        grid = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return grid[:, 0]


def attention_map(model: nn.Module, x: torch.Tensor, *, spec: ArchSpec | None = None,
                  upsample: bool = True) -> torch.Tensor:
    """Last-layer attention of the class token to the patches, mean over heads → (B, H, W)."""
    spec = resolve_spec(model, spec)
    probs = all_attention(model, x, spec, last_only=True)[-1]
    return _class_token_row_to_map(probs.mean(1)[:, CLASS_TOKEN], x, model, spec, upsample)


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
    joint = rollout(all_attention(model, x, spec), identity_weight)
    return _class_token_row_to_map(joint[:, CLASS_TOKEN], x, model, spec, upsample)
