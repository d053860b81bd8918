"""Small models with non-trivial weights for the explain tests (shared by tests/test_explain*.py)."""
from __future__ import annotations

import torch
from torch import nn

from prunelens.models import create_model


def lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval-mode model whose BatchNorm statistics and (zero-initialised) ViT head are random, so
    gradients and BN folding are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        head = getattr(getattr(model, "heads", None), "head", None)
        if head is not None:
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.5)
    return model.eval()


def small(name: str, dtype=torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    options = {"small_resnet": {"widths": (8, 16)},
               "small_vit": {"image_size": 32, "patch_size": 8, "num_layers": 2, "hidden_dim": 32,
                             "mlp_dim": 64, "num_heads": 4},
               "lenet5": {"in_channels": 3, "input_size": 32}}.get(name, {})
    return lively(create_model(name, 5, **options), seed).to(dtype)


def images(n: int = 3, size: int = 32, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)
