"""Patch features for LOST from any backbone of a pool, through its architecture spec
(:meth:`prunelens.models.ArchSpec.lost_tokens`).

* Conv nets: the output of the feature layer (ResNet: the last stage) as a (B, C, h, w) grid, one
  feature per cell. LOST's reference code LayerNorm'ed these with ``nn.LayerNorm(feats.shape[1:])``,
  i.e. over the whole (patches × channels) map of each image with unit weight and zero bias:
  ``layernorm="map"``; ``"channels"`` normalises each patch over its channels, ``"none"`` keeps
  the raw activations. Swin's last-stage tokens come through the same path.
* ViTs: the *keys* of the last attention layer, computed from the input it receives and its own
  ``in_proj`` weights — those of the checkpoint being evaluated — for the patch tokens. The
  reference reshapes its qkv output into heads and back; concatenating the heads in order gives
  the key vector itself.

Images are normalised (``spec.normalize``) and then zero-padded at the bottom/right to a multiple
of the stride, as the reference does (padding after normalisation = zeros in input space; the
reference pads to its ``--patch_size``, 16 by default, which is the stride of the ViT-S/16 and of
the dilated ResNet50 it used; here it is always ``spec.stride``, so the grid is exactly the padded
size / stride and a cell is ``stride`` pixels on both axes). ViTs run
at any padded size: patch embedding, CLS and position embeddings are computed here, with the
position embeddings interpolated to the grid (bicubic, ``align_corners=True``, the CLS entry kept:
torchvision's ``interpolate_embeddings``, generalised to non-square grids), because torchvision's
``VisionTransformer.forward`` only accepts its training size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.errors import ModelError

LayerNormMode = Literal["auto", "map", "channels", "none"]


@dataclass
class PatchFeatures:
    features: torch.Tensor            # (B, N, D), patches in raster order of the grid
    grid_hw: tuple[int, int]
    stride: tuple[float, float]       # pixels per grid cell (padded size / grid size), (y, x)
    padded_hw: tuple[int, int]


def pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom/right to H, W multiples of ``stride`` (LOST's padding)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % stride, 0, (-h) % stride))


def _layer_norm(feats: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "map":
        return F.layer_norm(feats, feats.shape[1:])
    if mode == "channels":
        return F.layer_norm(feats, feats.shape[-1:])
    if mode == "none":
        return feats
    raise ValueError(f"layernorm must be one of auto, map, channels, none; got {mode!r}")


def resolve_layernorm(spec, layernorm: LayerNormMode) -> str:
    return spec.lost_layernorm if layernorm == "auto" else layernorm


def normalize_and_pad(images: torch.Tensor, spec, stride: int,
                      image_hw: torch.Tensor | None = None) -> torch.Tensor:
    """Model input: ``spec.normalize(images)``, zero outside each image, padded to a stride multiple.

    ``images`` (B, C, H, W) in [0, 1]; with ``image_hw`` (B, 2), image j occupies only the top-left
    ``image_hw[j]`` of the tensor (images of different sizes batched together) and everything
    beyond it is set to 0 *after* normalisation, exactly as if each were padded on its own.
    """
    x = spec.normalize(images)
    if image_hw is not None:
        hw = torch.as_tensor(image_hw, device=x.device).view(-1, 2, 1, 1)
        rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
        cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
        inside = (rows < hw[:, 0]) & (cols < hw[:, 1])
        x = x * inside.unsqueeze(1).to(x.dtype)
    return pad_to_stride(x, stride)


@torch.no_grad()
def patch_features(model: nn.Module, images: torch.Tensor, spec=None,
                   layernorm: LayerNormMode = "auto",
                   image_hw: torch.Tensor | None = None) -> PatchFeatures:
    """LOST patch features of ``images`` in [0, 1], (B, 3, H, W) (see the module docstring).

    ``image_hw`` (B, 2): true sizes of images batched at the top-left of a larger tensor; they
    must share one padded size (see :func:`normalize_and_pad`).
    """
    from prunelens.models import spec_for

    spec = spec if spec is not None else spec_for(model)
    if not spec.has_spatial_features:
        raise ModelError(f"LOST needs a spatial feature map; {type(model).__name__} "
                         f"(family '{spec.family}') has none")
    stride = int(spec.stride(model))
    x = normalize_and_pad(images, spec, stride, image_hw)
    grid = spec.lost_tokens(model, x)                      # (B, D, h, w)
    grid_hw = tuple(grid.shape[-2:])
    feats = grid.flatten(2).transpose(1, 2)
    feats = _layer_norm(feats.float(), resolve_layernorm(spec, layernorm))
    padded_hw = (x.shape[-2], x.shape[-1])
    scale = (padded_hw[0] / grid_hw[0], padded_hw[1] / grid_hw[1])
    return PatchFeatures(feats, (int(grid_hw[0]), int(grid_hw[1])), scale, padded_hw)
