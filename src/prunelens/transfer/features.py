"""Penultimate features of a frozen backbone, batch by batch on the model's device."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def match_input(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] brought to the model's input (C', H', W'): grey → colour by
    repeating the channel, colour → grey by the channel mean, then a bilinear (antialiased) resize."""
    channels, height, width = (int(s) for s in shape)
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x[:, :1].expand(-1, channels, -1, -1)
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x


@torch.no_grad()
def extract_features(model: nn.Module, spec, dataset: torch.utils.data.Dataset, batch_size: int,
                     device: torch.device | str, input_shape: Sequence[int] | None = None,
                     loader=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (N, D) float32 on the CPU and labels (N,) of ``dataset``, in order.

    Images go through :func:`match_input` (when ``input_shape`` is given) and the spec's
    normalisation; the model is used as it is (call ``model.eval()`` first: frozen backbone).
    ``loader`` reads ``dataset`` in order (default: one without workers).
    """
    feats, labels = [], []
    loader = loader or torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in loader:
        x = x.to(device)
        if input_shape is not None:
            x = match_input(x, input_shape)
        feats.append(spec.penultimate_features(model, spec.normalize(x)).float().cpu())
        labels.append(torch.as_tensor(y).long())
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
