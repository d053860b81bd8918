"""Small built-in architectures that train on a CPU in minutes.

* :class:`FCN` — the fully connected net of Pellegrini & Biroli (e.g. 3072-1024-1024-1024-C).
* :class:`LeNet5` — LeCun et al. 1998, as used by Tartaglione et al. for PSP-entropy.
* :class:`SmallResNet` — a CIFAR-style ResNet built from torchvision's ``BasicBlock`` with the same
  module names as torchvision's ResNet (``conv1``, ``bn1``, ``layerN``, ``fc``), so the ResNet spec
  covers it.
* ``small_vit`` — torchvision's own ``VisionTransformer`` at a small width, so the ViT spec covers it.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from prunelens._compat import torchvision


class FCN(nn.Module):
    """Fully connected ReLU network on flattened images: input -> widths... -> classes."""

    def __init__(self, num_classes: int, input_shape: Sequence[int] = (3, 32, 32),
                 widths: Sequence[int] = (1024, 1024, 1024)) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1 or any(int(w) < 1 for w in widths):
            raise ValueError(f"input_shape {tuple(input_shape)} and widths {tuple(widths)} must be positive")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = int(torch.tensor(self.input_shape).prod())
        for i, width in enumerate(widths, start=1):
            layers[f"fc{i}"] = nn.Linear(fan_in, int(width))
            layers[f"relu{i}"] = nn.ReLU()
            fan_in = int(width)
        layers["classifier"] = nn.Linear(fan_in, num_classes)
        self.layers = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LeNet5(nn.Module):
    """LeNet-5: two 5x5 conv + max-pool stages, then three fully connected layers."""

    def __init__(self, num_classes: int, in_channels: int = 1, input_size: int = 28,
                 channels: Sequence[int] = (6, 16), hidden: Sequence[int] = (120, 84)) -> None:
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_channels, c1, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c1, c2, 5), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        ))
        side = ((input_size // 2) - 4) // 2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet5 (needs >= 12)")
        fan_in = c2 * side * side
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for i, width in enumerate(hidden, start=3):
            layers[f"fc{i}"] = nn.Linear(fan_in, int(width))
            layers[f"relu{i}"] = nn.ReLU()
            fan_in = int(width)
        layers["classifier"] = nn.Linear(fan_in, num_classes)
        self.head = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (stride ``stem_stride``), one stage per width, stride 2 between."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64),
                 blocks: int | Sequence[int] = 1, stem_stride: int = 2) -> None:
        super().__init__()
        basic_block = torchvision().models.resnet.BasicBlock
        widths = [int(w) for w in widths]
        blocks = [int(blocks)] * len(widths) if isinstance(blocks, int) else [int(b) for b in blocks]
        if not widths or min(widths) < 1 or len(blocks) != len(widths) or min(blocks) < 1 or stem_stride < 1:
            raise ValueError(f"widths {widths} must be positive, one per stage, with as many blocks "
                             f"counts {blocks} (each >= 1) and stem_stride {stem_stride} >= 1")
        self.conv1 = nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        fan_in = widths[0]
        for i, (width, n_blocks) in enumerate(zip(widths, blocks), start=1):
            stride = 1 if i == 1 else 2
            stage = []
            for b in range(n_blocks):
                downsample = None
                if b == 0 and (stride != 1 or fan_in != width):
                    downsample = nn.Sequential(nn.Conv2d(fan_in, width, 1, stride, bias=False),
                                               nn.BatchNorm2d(width))
                stage.append(basic_block(fan_in, width, stride if b == 0 else 1, downsample))
                fan_in = width
            self.add_module(f"layer{i}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(fan_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def small_vit(num_classes: int, image_size: int = 64, patch_size: int = 8, num_layers: int = 4,
              num_heads: int = 4, hidden_dim: int = 64, mlp_dim: int = 128,
              dropout: float = 0.0) -> nn.Module:
    """A small torchvision ``VisionTransformer`` (same modules as ``vit_b_32``)."""
    return torchvision().models.VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout, num_classes=num_classes)
