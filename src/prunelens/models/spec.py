"""One spec per architecture family: every per-architecture fact lives here.

A spec answers, for a model of its family: which parameters are prunable, which of them are the
first layer and the classifier, the GradCAM target layer and how its activation becomes a
(B, C, h, w) grid, the feature layer used by LOST, the attention modules, the feature stride and
the input normalisation. Code elsewhere asks :func:`spec_for` and never tests architecture names.
"""
from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=64)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], channels: int, device: torch.device,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation constants as (1, C, 1, 1) tensors, made once per device and dtype (a fresh
    host-to-device copy at every call would synchronise a CUDA stream at every step)."""
    m, s = torch.tensor(mean, dtype=dtype), torch.tensor(std, dtype=dtype)
    if channels != m.numel():
        m, s = m.mean().expand(channels), s.mean().expand(channels)
    return m.reshape(1, -1, 1, 1).to(device), s.reshape(1, -1, 1, 1).to(device)


class ArchSpec:
    """Base spec. Subclasses override what differs; the defaults suit plain CNN/MLP stacks."""

    family = "generic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    #: fnmatch patterns of parameter names that are never prunable in this family
    never_prune: tuple[str, ...] = ()
    #: names (last component) of the parameters torchvision's references/classification/train.py
    #: gives ``--transformer-embedding-decay``: it matches "class_token", "position_embedding" and
    #: "relative_position_bias_table" against the parameter's own name
    embedding_names: tuple[str, ...] = ()

    # ---- pruning -----------------------------------------------------------------------------
    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Weights of every Conv/Linear layer and attention input projection, in module order.

        ``nn.MultiheadAttention.in_proj_weight`` is included: the reference code built its list of
        layers from Conv/Linear modules only and so never pruned it.
        """
        params = dict(model.named_parameters())
        names: list[str] = []
        for mod_name, module in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                names.append(prefix + "weight")
            elif isinstance(module, nn.MultiheadAttention):
                if module.in_proj_weight is not None:
                    names.append(prefix + "in_proj_weight")
                else:
                    names += [prefix + f"{p}_proj_weight" for p in "qkv"]
        return {n: params[n] for n in names
                if n in params and not any(fnmatch.fnmatchcase(n, p) for p in self.never_prune)}

    def first_layer(self, model: nn.Module) -> str:
        """Name of the first prunable weight (the layer that sees the pixels)."""
        return next(iter(self.prunable(model)))

    def classifier(self, model: nn.Module) -> str:
        """Name of the output layer's weight."""
        return list(self.prunable(model))[-1]

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]

    def first_layer_images(self, model: nn.Module, tensor: torch.Tensor) -> torch.Tensor | None:
        """The first layer's weight (or mask) as one image per unit, (U, C, H, W), or None.

        Conv kernels are their own images; a fully connected first layer needs the input shape.
        """
        return tensor if tensor.dim() == 4 else None

    def attention_parameters(self, model: nn.Module) -> list[str]:
        """Prunable weights of the attention projections (q/k/v and output)."""
        prunable = self.prunable(model)
        names = []
        for mod_name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                names += [n for n in prunable if n.startswith(f"{mod_name}.")]
        return names

    def embedding_parameters(self, model: nn.Module) -> list[str]:
        """The transformer embeddings of ``model`` in the sense of torchvision's training recipe."""
        return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in self.embedding_names]

    # ---- inputs ------------------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1], (B, C, H, W), to the model's input space.

        Single-channel inputs use the mean of the per-channel statistics.
        """
        mean, std = _stats(tuple(self.mean), tuple(self.std), x.shape[1], x.device, x.dtype)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = _stats(tuple(self.mean), tuple(self.std), x.shape[1], x.device, x.dtype)
        return x * std + mean

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits for inputs of any size the architecture allows (ViTs: not only their own)."""
        return model(x)

    # ---- spatial features (GradCAM, LOST) ----------------------------------------------------
    has_spatial_features = False
    #: GradCAM reads the *input* of ``gradcam_layer`` rather than its output (see ViTSpec)
    gradcam_uses_input = False
    #: LayerNorm LOST applies to CNN feature maps by default: over the whole map, as the
    #: reference code; token models use their features as they are
    lost_layernorm = "map"

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        raise ModelError(f"{type(model).__name__} has no spatial feature map for GradCAM")

    def to_grid(self, activation: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Turn the GradCAM/feature layer's output into a (B, C, h, w) grid."""
        return activation

    def feature_layer(self, model: nn.Module) -> nn.Module:
        """The layer whose output LOST uses as patch features (see discovery.lost)."""
        return self.gradcam_layer(model)

    def stride(self, model: nn.Module) -> int:
        """Pixels per cell of the feature grid."""
        raise ModelError(f"{type(model).__name__} has no spatial feature map")

    # ---- penultimate features (linear probes) ------------------------------------------------
    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier, (B, D): the representation a linear probe reads.

        Default: captured by a forward pre-hook on the module of :meth:`classifier`; families
        override it with the direct computation (no classifier pass).
        """
        module = model.get_submodule(self.classifier(model).rsplit(".", 1)[0])
        captured: list[torch.Tensor] = []
        handle = module.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
        try:
            self.forward(model, x)
        finally:
            handle.remove()
        return captured[-1].flatten(1)


class ResNetSpec(ArchSpec):
    """torchvision ResNets and the built-in SmallResNet: stages named ``layer1`` … ``layerN``."""

    family = "resnet"
    has_spatial_features = True

    @staticmethod
    def _stages(model: nn.Module) -> list[nn.Sequential]:
        return [m for n, m in model.named_children() if n.startswith("layer")]

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return self._stages(model)[-1][-1]  # last block of the last stage

    def feature_layer(self, model: nn.Module) -> nn.Module:
        return self._stages(model)[-1]

    def stride(self, model: nn.Module) -> int:
        s = model.conv1.stride[0]
        if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            s *= model.maxpool.stride if isinstance(model.maxpool.stride, int) else model.maxpool.stride[0]
        for stage in self._stages(model):
            downsample = stage[0].downsample
            if downsample is not None:
                s *= downsample[0].stride[0]
        return s

    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled output of the last stage (the input of ``fc``)."""
        x = model.relu(model.bn1(model.conv1(x)))
        if isinstance(getattr(model, "maxpool", None), nn.Module):
            x = model.maxpool(x)
        for stage in self._stages(model):
            x = stage(x)
        return torch.flatten(model.avgpool(x), 1)


def interpolate_pos_embedding(pos_embedding: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Position embeddings (1, 1 + s², D) of a square s×s grid resized to (1, 1 + h·w, D).

    The CLS entry is kept; the grid part is resized bicubically with ``align_corners=True`` as
    torchvision's ``interpolate_embeddings`` does, here to any (h, w).
    """
    cls_pos, grid_pos = pos_embedding[:, :1], pos_embedding[:, 1:]
    n, dim = grid_pos.shape[1:]
    side = math.isqrt(n)
    if side * side != n:
        raise ModelError(f"ViT position embeddings cover {n} patches, not a square grid")
    h, w = grid_hw
    if (h, w) == (side, side):
        return pos_embedding
    grid = grid_pos.transpose(1, 2).reshape(1, dim, side, side)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)
    return torch.cat([cls_pos, grid.reshape(1, dim, h * w).transpose(1, 2)], 1)


class ViTSpec(ArchSpec):
    """torchvision VisionTransformer (vit_b_32 and the built-in small_vit)."""

    family = "vit"
    has_spatial_features = True
    lost_layernorm = "none"
    # the position embedding is encoder.pos_embedding, a name torchvision's recipe does not match:
    # it keeps the ordinary weight decay there, and so here
    embedding_names = ("class_token",)
    # the classifier reads only the class token after the last block, so the patch tokens leaving
    # it have exactly zero gradient; GradCAM uses the tokens entering it (pytorch-grad-cam does too)
    gradcam_uses_input = True

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """torchvision's forward at any size multiple of the patch (interpolated positions)."""
        if x.shape[-2:] == (model.image_size, model.image_size):
            return model(x)
        return model.heads(self.penultimate_features(model, x))

    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The class token after the encoder's final LayerNorm (the input of ``heads``), at any
        size multiple of the patch (interpolated positions)."""
        patches = model.conv_proj(x)                      # (B, D, h, w)
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], 1)
        tokens = tokens + interpolate_pos_embedding(model.encoder.pos_embedding, tuple(patches.shape[-2:]))
        tokens = model.encoder.ln(model.encoder.layers(model.encoder.dropout(tokens)))
        return tokens[:, 0]

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.encoder.layers[-1]

    def to_grid(self, activation: torch.Tensor, model: nn.Module) -> torch.Tensor:
        tokens = activation[:, 1:]  # drop CLS
        b, n, c = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ModelError(f"ViT has {n} patch tokens, not a square grid")
        return tokens.transpose(1, 2).reshape(b, c, side, side)

    def feature_layer(self, model: nn.Module) -> nn.Module:
        return self.attention_modules(model)[-1]

    def stride(self, model: nn.Module) -> int:
        return int(model.patch_size)


class SwinSpec(ArchSpec):
    """torchvision SwinTransformer (v1 and v2); its stages output (B, h, w, C)."""

    family = "swin"
    has_spatial_features = True
    lost_layernorm = "none"
    # Swin v1's learned bias tables; v2 computes its biases with cpb_mlp and has no such parameter
    embedding_names = ("relative_position_bias_table",)
    # the continuous position-bias MLP of Swin v2 generates attention biases; it is not a weight
    # layer of the network's function, so it is left dense
    never_prune = ("*cpb_mlp*",)

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.features[-1]

    def to_grid(self, activation: torch.Tensor, model: nn.Module) -> torch.Tensor:
        return activation.permute(0, 3, 1, 2)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if type(m).__name__.startswith("ShiftedWindowAttention")]

    def attention_parameters(self, model: nn.Module) -> list[str]:
        prunable = self.prunable(model)
        names = []
        for mod_name, module in model.named_modules():
            if type(module).__name__.startswith("ShiftedWindowAttention"):
                names += [f"{mod_name}.{p}.weight" for p in ("qkv", "proj")]
        return [n for n in names if n in prunable]

    def feature_layer(self, model: nn.Module) -> nn.Module:
        return model.features[-1]

    def stride(self, model: nn.Module) -> int:
        patch = model.features[0][0].stride[0]
        merges = sum(1 for m in model.features if type(m).__name__.startswith("PatchMerging"))
        return patch * 2 ** merges

    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Final-norm features average-pooled over the grid (the input of ``head``)."""
        return model.flatten(model.avgpool(model.permute(model.norm(model.features(x)))))


class FCNSpec(ArchSpec):
    """The fully connected net: the first layer's rows reshape to the input's (C, H, W)."""

    family = "fcn"

    def first_layer_images(self, model: nn.Module, tensor: torch.Tensor) -> torch.Tensor | None:
        return tensor.reshape(tensor.shape[0], *model.input_shape)

    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer after its ReLU (the input of ``classifier``)."""
        return model.layers[:-1](x)


class LeNetSpec(ArchSpec):
    family = "lenet"
    has_spatial_features = True

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.features.conv2

    def stride(self, model: nn.Module) -> int:
        return 2

    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last fully connected hidden layer after its ReLU (the input of ``classifier``)."""
        return model.head[:-1](model.features(x))


def _family_table() -> list[tuple[type, Callable[[], ArchSpec]]]:
    from prunelens._compat import torchvision
    from prunelens.models import builtins

    tvm = torchvision().models
    return [
        (tvm.ResNet, ResNetSpec),
        (builtins.SmallResNet, ResNetSpec),
        (tvm.VisionTransformer, ViTSpec),
        (tvm.SwinTransformer, SwinSpec),
        (builtins.FCN, FCNSpec),
        (builtins.LeNet5, LeNetSpec),
    ]


def spec_for(model: nn.Module) -> ArchSpec:
    """The spec of a model's architecture family (DDP/compiled wrappers are looked through)."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner) if type(inner).__name__ == "DistributedDataParallel" else inner
    for cls, spec in _family_table():
        if isinstance(inner, cls):
            return spec()
    raise ModelError(f"prunelens has no architecture spec for {type(inner).__name__}; "
                     "add one in prunelens/models/spec.py")
