"""Small built-in architectures that train on a CPU in minutes.

* :class:`FCN` — the fully connected net of Pellegrini & Biroli (e.g. 3072-1024-1024-1024-C),
  optionally as the authors ran it (:class:`InputBatchNorm` on every layer's input, Xavier-normal
  weights, zero biases).
* :class:`LeNet5` — LeCun et al. 1998, as used by Tartaglione et al. for PSP-entropy.
* :class:`SmallResNet` — a CIFAR-style ResNet built from torchvision's ``BasicBlock`` with the same
  module names as torchvision's ResNet (``conv1``, ``bn1``, ``layerN``, ``fc``), so the ResNet spec
  covers it.
* ``small_vit`` — torchvision's own ``VisionTransformer`` at a small width, so the ViT spec covers it.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from prunelens._compat import torchvision


class InputBatchNorm(nn.Module):
    """Batch normalisation of a fully connected layer's input as Pellegrini & Biroli compute it
    (phiandark/SiftingFeatures @386b617, src/Network.py and src/IMP.py), per input feature:

    * training: ``(x - mean) / sqrt(var + eps)`` with the batch mean and the **biased** batch
      variance (``tf.nn.moments``, Network.py:42, 44), gradients through both; ``eps = 1e-10``
      (Network.py:10);
    * then ``weight * x̂ + bias`` (``gamma * in_BN + beta``, Network.py:45), learnable, initialised
      to 1 and 0 (Network.py:32-33);
    * running averages of [mean; biased var]: the **first** training batch's moments are copied
      (IMP.py:162-163, ``amv = mv.copy()`` at step 0), then ``run = 0.99 run + 0.01 batch``
      (IMP.py:60 ``batch_norm_beta = 0.99``, IMP.py:164-167), the moments being those of the
      training forward pass of that step;
    * evaluation: ``(x - running_mean) / sqrt(running_var + eps)`` (Network.py:44), the running
      averages starting at mean 0, var 1 before any training batch (IMP.py:141-144).

    ``nn.BatchNorm1d(momentum=0.01, eps=1e-10)`` differs: it blends the unbiased variance into
    ``running_var`` and blends the first batch into (0, 1) instead of copying it.
    ``num_batches_tracked`` counts the training batches seen (0: the next one is copied).
    """

    def __init__(self, num_features: int, eps: float = 1e-10, beta: float = 0.99) -> None:
        super().__init__()
        self.num_features, self.eps, self.beta = int(num_features), float(eps), float(beta)
        self.weight = nn.Parameter(torch.ones(self.num_features))
        self.bias = nn.Parameter(torch.zeros(self.num_features))
        self.register_buffer("running_mean", torch.zeros(self.num_features))
        self.register_buffer("running_var", torch.ones(self.num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(0)
            var = x.var(0, unbiased=False)
            with torch.no_grad():
                if int(self.num_batches_tracked) == 0:
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
                else:
                    self.running_mean.mul_(self.beta).add_(mean, alpha=1.0 - self.beta)
                    self.running_var.mul_(self.beta).add_(var, alpha=1.0 - self.beta)
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean, self.running_var
        return self.weight * ((x - mean) / torch.sqrt(var + self.eps)) + self.bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, beta={self.beta}"


class FCN(nn.Module):
    """Fully connected ReLU network on flattened images: input -> widths... -> classes.

    Options (their defaults are the plain net, so pools built before they existed keep their
    identity):

    * ``input_norm``: ``none``, or ``batch`` = an :class:`InputBatchNorm` on the input of every
      Linear layer, the classifier included (``bn1`` before ``fc1`` … ``bn_classifier`` before
      ``classifier``), as Pellegrini & Biroli (src/Network.py:29 applies it to layer types ``f`` and
      ``x``, Network.py:40-47);
    * ``init``: ``default`` (torch's ``nn.Linear`` init), or ``xavier_normal`` = weights drawn from
      N(0, 2 / (fan_in + fan_out)) (plain, not truncated) and zero biases, every Linear layer
      (Network.py:30-31).
    """

    def __init__(self, num_classes: int, input_shape: Sequence[int] = (3, 32, 32),
                 widths: Sequence[int] = (1024, 1024, 1024),
                 input_norm: Literal["none", "batch"] = "none",
                 init: Literal["default", "xavier_normal"] = "default") -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1 or any(int(w) < 1 for w in widths):
            raise ValueError(f"input_shape {tuple(input_shape)} and widths {tuple(widths)} must be positive")
        if input_norm not in ("none", "batch") or init not in ("default", "xavier_normal"):
            raise ValueError(f"input_norm must be 'none' or 'batch' (got {input_norm!r}), init "
                             f"'default' or 'xavier_normal' (got {init!r})")
        batch = input_norm == "batch"
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = math.prod(self.input_shape)  # no tensor: the net must build on the meta device too
        for i, width in enumerate(widths, start=1):
            if batch:
                layers[f"bn{i}"] = InputBatchNorm(fan_in)
            layers[f"fc{i}"] = nn.Linear(fan_in, int(width))
            layers[f"relu{i}"] = nn.ReLU()
            fan_in = int(width)
        if batch:
            layers["bn_classifier"] = InputBatchNorm(fan_in)
        layers["classifier"] = nn.Linear(fan_in, num_classes)
        self.layers = nn.Sequential(layers)
        if init == "xavier_normal":
            for module in self.layers:
                if isinstance(module, nn.Linear):
                    fan_out, fan_in = module.weight.shape
                    with torch.no_grad():
                        module.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
                        module.bias.zero_()

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
