"""One spec per architecture family: every per-architecture fact lives here.

Which architecture has which spec is the registry's (:mod:`prunelens.models.registry`). A spec
answers, for a model of its family: which parameters are prunable, which of them are the
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
from torch.overrides import TorchFunctionMode

from prunelens.errors import ModelError
from prunelens.models.builtins import InputBatchNorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: what a map of local window attention shows (:meth:`ArchSpec.window_attention_map`): the
#: attention tokens *receive* (prunelens's definition) or the paper's first-window row
WINDOW_ATTENTION_MAPS = ("received", "paper_first_window")


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
    #: what kind of network the family is, in the papers' terms: "convolutional", "transformer"
    #: (self-attention), "dense" (fully connected); None when unknown. Claims that the papers state
    #: for CNNs and ViTs read it, so a new family says which it is here, not in the claims.
    design: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    #: fnmatch patterns of parameter names that are never prunable in this family
    never_prune: tuple[str, ...] = ()
    #: tokens that precede the patch tokens in this family's token sequences (class and distillation
    #: tokens; timm's name): 0 for conv nets and Swin, 1 for torchvision's ViT
    num_prefix_tokens: int = 0
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

    def class_token_attention(self, model: nn.Module) -> list[nn.MultiheadAttention]:
        """The attention modules whose token sequences start with a class token (in layer order);
        empty for families without one."""
        return []

    def window_attention_map(self, model: nn.Module, x: torch.Tensor, kind: str = "received"
                             ) -> torch.Tensor | None:
        """A relevance map (B, h, w) from local window attention, of ``kind`` (one of
        :data:`WINDOW_ATTENTION_MAPS`), or None for families without it (see :class:`SwinSpec`)."""
        return None

    def attention_not_applicable(self, model: nn.Module, method: str) -> str:
        """Why attention-based method ``method`` does not apply to this family."""
        return (f"the '{self.family}' architecture has no attention over a class token, which "
                f"{method} maps are read from")

    def capture_attention(self, modules: list[nn.Module], run: Callable[[], object]
                          ) -> list[torch.Tensor]:
        """Attention probabilities (B, heads, N, N) of each of ``modules`` (in order) while
        ``run()`` does a forward pass. Default: ``nn.MultiheadAttention``, whose probabilities
        are recomputed from the query and key each module receives (softmax(QKᵀ/√d), per head)."""
        found: dict[int, torch.Tensor] = {}

        def hook(module, args, kwargs):
            masked = any(kwargs.get(name) is not None for name in ("attn_mask", "key_padding_mask"))
            if masked or kwargs.get("is_causal"):
                raise ModelError("attention maps do not support attention masks")
            query = args[0] if args else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs["key"]
            q, k = self.query_key(module, query, key)
            found[id(module)] = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)

        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return [found[id(m)] for m in modules]

    @staticmethod
    def query_key(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Q and K of an ``nn.MultiheadAttention`` for the inputs it receives, per head:
        (B, heads, L, d) each, from its packed ``in_proj`` weights (or separate q/k projections)."""
        if module.bias_k is not None or module.add_zero_attn:
            raise ModelError("attention maps do not support nn.MultiheadAttention with add_bias_kv or "
                             "add_zero_attn")
        if not module.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        e, h = module.embed_dim, module.num_heads
        if module.in_proj_weight is not None:
            w_q, w_k = module.in_proj_weight[:e], module.in_proj_weight[e:2 * e]
        else:
            w_q, w_k = module.q_proj_weight, module.k_proj_weight
        b_q = b_k = None
        if module.in_proj_bias is not None:
            b_q, b_k = module.in_proj_bias[:e], module.in_proj_bias[e:2 * e]
        q = F.linear(query, w_q, b_q).unflatten(-1, (h, e // h)).transpose(1, 2)
        k = F.linear(key, w_k, b_k).unflatten(-1, (h, e // h)).transpose(1, 2)
        return q, k

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, …) tokens without the prefix tokens (:attr:`num_prefix_tokens`)."""
        return tokens[:, self.num_prefix_tokens:]

    def class_token_row(self, attention: torch.Tensor) -> torch.Tensor:
        """(B, N) attention of the class token to every token, from (B, N, N) attention."""
        raise ModelError(f"the '{self.family}' family has no class token")

    def tokens_to_grid(self, tokens: torch.Tensor, grid_hw: tuple[int, int] | None = None
                       ) -> torch.Tensor:
        """Token features (B, N, C), prefix tokens included, as a (B, C, h, w) grid of the patch
        tokens (a square grid unless ``grid_hw`` is given)."""
        tokens = self.patch_tokens(tokens)
        b, n, c = tokens.shape
        if grid_hw is None:
            side = math.isqrt(n)
            grid_hw = (side, side)
        if grid_hw[0] * grid_hw[1] != n:
            raise ModelError(f"{n} patch tokens do not fill a {grid_hw[0]}x{grid_hw[1]} grid")
        return tokens.transpose(1, 2).reshape(b, c, *grid_hw)

    def first_layer_images(self, model: nn.Module, tensor: torch.Tensor) -> torch.Tensor | None:
        """The first layer's weight (or mask) as one image per unit, (U, C, H, W), or None.

        Conv kernels are their own images; a fully connected first layer needs the input shape.
        """
        return tensor if self.first_layer_units(model) == "kernels" else None

    def first_layer_module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.first_layer(model).rsplit(".", 1)[0])

    def first_layer_units(self, model: nn.Module) -> str | None:
        """What a unit of the first layer is: ``kernels`` (a conv filter over the pixels), ``rows``
        (a fully connected unit over the flattened image), or None (neither can be seen as an image)."""
        return "kernels" if isinstance(self.first_layer_module(model), nn.Conv2d) else None

    def unit_dim(self, module: nn.Module) -> int:
        """The dimension of ``module``'s output that indexes its units (neurons, channels)."""
        return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1

    def second_layer(self, model: nn.Module) -> str | None:
        """The weight of the layer that reads the first layer's units directly, when its mask can be
        composed with the first's (fully connected stacks), else None."""
        return None

    def neuron_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every module whose outputs are neurons (PSP-entropy): the Conv and Linear layers."""
        return {name: m for name, m in model.named_modules()
                if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}

    def attention_parameters(self, model: nn.Module) -> list[str]:
        """Prunable weights of the attention projections (q/k/v and output)."""
        prunable = self.prunable(model)
        names = []
        for mod_name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                names += [n for n in prunable if n.startswith(f"{mod_name}.")]
        return names

    def norm_modules(self, model: nn.Module) -> set[str]:
        """The normalisation layers (the modules torchvision's ``set_weight_decay`` puts in its
        norm group: batch, layer, group, instance and local response norms)."""
        kinds = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                 nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
        return {name for name, m in model.named_modules() if isinstance(m, kinds)}

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
    #: local window attention, read by :meth:`window_attention_map` (Swin)
    has_window_attention = False
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

    def lost_tokens(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """LOST's patch features of model inputs ``x``: (B, C, h, w), one feature per grid cell.
        Default: the output of :meth:`feature_layer` laid on its grid (the forward pass stops there)."""
        return self.to_grid(activation_of(self.feature_layer(model), lambda: self.forward(model, x)), model)

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
    design = "convolutional"
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
    design = "transformer"
    has_spatial_features = True
    lost_layernorm = "none"
    num_prefix_tokens = 1  # the class token, first
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
        return self.tokens_to_grid(activation)

    def class_token_attention(self, model: nn.Module) -> list[nn.MultiheadAttention]:
        return self.attention_modules(model)

    def class_token_row(self, attention: torch.Tensor) -> torch.Tensor:
        return attention[:, 0]

    def feature_layer(self, model: nn.Module) -> nn.Module:
        return self.attention_modules(model)[-1]

    def lost_tokens(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The *keys* of the last attention layer (LOST's choice for ViTs), heads concatenated, for
        the patch tokens, on the (h, w) patch grid of ``x``."""
        layer = self.feature_layer(model)
        tokens = activation_of(layer, lambda: self.forward(model, x), pre=True)
        _, k = self.query_key(layer, tokens, tokens)          # (B, heads, N, d)
        keys = k.transpose(1, 2).flatten(2)                   # (B, N, heads·d)
        stride = self.stride(model)
        return self.tokens_to_grid(keys, (x.shape[-2] // stride, x.shape[-1] // stride))

    def stride(self, model: nn.Module) -> int:
        return int(model.patch_size)


class SwinSpec(ArchSpec):
    """torchvision SwinTransformer (v1 and v2); its stages output (B, h, w, C)."""

    family = "swin"
    design = "transformer"
    has_spatial_features = True
    has_window_attention = True
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

    def window_attention_map(self, model: nn.Module, x: torch.Tensor, kind: str = "received"
                             ) -> torch.Tensor:
        """``received`` (the default): attention *received*, on the last stage's token grid (B, h, w).
        ``paper_first_window``: Cassano et al.'s map (:meth:`first_window_map`).

        For every block of the last stage, with P = softmax(attention) of each window (B·nW,
        heads, N, N), the attention token k receives is the mean over heads and over the window's
        N queries q of P[q → k]. Windows are laid back on the padded grid, the cyclic shift of
        shifted blocks is undone, and the padding cropped; the map is the mean over the stage's
        blocks. Swin has no class token, so there is no class-specific row as in a ViT: this map
        says which tokens the model attends to, whatever the class.
        """
        if kind not in WINDOW_ATTENTION_MAPS:
            raise ModelError(f"unknown window attention map '{kind}'; one of {', '.join(WINDOW_ATTENTION_MAPS)}")
        blocks = [m for m in model.features[-1].modules()
                  if type(m).__name__.startswith("ShiftedWindowAttention")]
        if kind == "paper_first_window":
            return self.first_window_map(model, x, blocks[-1])
        captured = _capture_window_attention(blocks, lambda: self.forward(model, x))
        maps = [_received_on_grid(probs, shape, block) for block, (shape, probs) in captured.items()]
        return torch.stack(maps).mean(0)

    def first_window_map(self, model: nn.Module, x: torch.Tensor, block: nn.Module) -> torch.Tensor:
        """Cassano et al.'s Swin attention map, (B, wh·p, ww·p) for window size wh×ww and patch
        size p (``explainations_evaluation_metrics.py`` ``build_attention_image``, EIDOSLAB/
        pruning-for-vision-representation@77e7758): of the softmax probabilities (B·nW, heads, N, N)
        ``block`` computes (their saved ``last_attention_swin.pt``, presumably the last block's: the code that saved it is
        not in the repository), the first
        window's first query row, ``attention[0, :, 0, :]``, per head, reshaped to (heads, wh, ww),
        upsampled ×p nearest (``patch_size = 4`` in their ``main()``: swin_v2_t's patch size) and
        summed over heads. Their code then resizes it bilinearly to the image, as the pipeline does
        with every window map.

        It covers the top-left window only (after the block's cyclic shift), stretched over the whole
        image; it is kept as the paper's choice, not as a map of the image's relevance.
        """
        captured = _capture_window_attention([block], lambda: self.forward(model, x))
        (b, _, _, _), probs = captured[block]
        wh, ww = block.window_size
        rows = probs[::probs.shape[0] // b, :, 0, :]                # window 0 of each image, query 0
        grid = rows.reshape(b, probs.shape[1], wh, ww)
        patch = int(model.features[0][0].stride[0])
        return F.interpolate(grid, scale_factor=patch, mode="nearest").sum(1)

    def attention_not_applicable(self, model: nn.Module, method: str) -> str:
        if method == "rollout":
            return ("attention rollout multiplies attention matrices over one token sequence up to a "
                    "class token; Swin attends within shifted local windows and has no class token, "
                    "so the product is not defined")
        return super().attention_not_applicable(model, method)

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
    """The fully connected net: the first layer's rows reshape to the input's (C, H, W).

    With ``input_norm: batch`` (:class:`~prunelens.models.builtins.InputBatchNorm` before every
    Linear layer) the prunable weights are still the Linear weights only (:meth:`ArchSpec.prunable`
    takes Conv/Linear weights; the normalisations' ``weight``/``bias`` are per-feature affine
    parameters, as the authors never prune their gamma/beta: Utils.py:52-74 masks W and b only),
    and the normalisations are norm modules (the norm weight-decay group).
    """

    family = "fcn"
    design = "dense"

    def norm_modules(self, model: nn.Module) -> set[str]:
        return super().norm_modules(model) | {name for name, m in model.named_modules()
                                              if isinstance(m, InputBatchNorm)}

    def first_layer_images(self, model: nn.Module, tensor: torch.Tensor) -> torch.Tensor | None:
        return tensor.reshape(tensor.shape[0], *model.input_shape)

    def first_layer_units(self, model: nn.Module) -> str | None:
        return "rows"

    def second_layer(self, model: nn.Module) -> str | None:
        names = list(self.prunable(model))
        return names[1] if len(names) > 1 else None

    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer after its ReLU (and after ``bn_classifier`` with ``input_norm:
        batch``): the input of ``classifier``."""
        return model.layers[:-1](x)


class LeNetSpec(ArchSpec):
    family = "lenet"
    design = "convolutional"
    has_spatial_features = True

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.features.conv2

    def stride(self, model: nn.Module) -> int:
        return 2

    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last fully connected hidden layer after its ReLU (the input of ``classifier``)."""
        return model.head[:-1](model.features(x))


class _Captured(Exception):
    """Raised by a hook to stop a forward pass once the wanted activation is captured."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


def activation_of(module: nn.Module, run: Callable[[], object], *, pre: bool = False) -> torch.Tensor:
    """The first input (``pre``) or the output of ``module`` when ``run()`` calls it; the forward
    pass stops there."""
    def pre_hook(_mod, args, kwargs):
        raise _Captured(args[0] if args else kwargs["query"])

    def post_hook(_mod, _args, output):
        raise _Captured(output[0] if isinstance(output, tuple) else output)

    handle = (module.register_forward_pre_hook(pre_hook, with_kwargs=True) if pre
              else module.register_forward_hook(post_hook))
    try:
        run()
    except _Captured as captured:
        return captured.value
    finally:
        handle.remove()
    raise ModelError(f"the layer {type(module).__name__} was not called in the forward pass")


class _SoftmaxCapture(TorchFunctionMode):
    """Keeps the output of every ``F.softmax`` called while ``current`` names a module."""

    def __init__(self) -> None:
        super().__init__()
        self.current: nn.Module | None = None
        self.found: dict[nn.Module, list[torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.softmax and self.current is not None:
            self.found.setdefault(self.current, []).append(out)
        return out


def _capture_window_attention(blocks: list[nn.Module], run: Callable[[], object]
                              ) -> dict[nn.Module, tuple[tuple[int, ...], torch.Tensor]]:
    """Per window-attention module: its input's shape (B, H, W, C) and the attention
    probabilities its forward computed (torchvision's ``shifted_window_attention`` calls
    ``F.softmax`` once per forward)."""
    mode, shapes = _SoftmaxCapture(), {}

    def enter(module, args):
        shapes[module] = tuple(args[0].shape)
        mode.current = module

    def leave(module, args, output):
        mode.current = None

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(enter),
                                            b.register_forward_hook(leave))]
    try:
        with mode:
            run()
    finally:
        for handle in handles:
            handle.remove()
    if any(len(mode.found.get(b, [])) != 1 for b in blocks):
        raise ModelError("Swin's window attention did not compute its probabilities with one softmax "
                         "per block (a torchvision version prunelens does not know)")
    return {b: (shapes[b], mode.found[b][0]) for b in blocks}


def _received_on_grid(probs: torch.Tensor, shape: tuple[int, ...], block: nn.Module) -> torch.Tensor:
    """Attention received per token (mean over heads and queries) of one block's windows,
    (B·nW, heads, N, N), back on the block's (B, H, W) grid: windows un-partitioned, the shift
    undone, the padding cropped — the inverse of torchvision's ``shifted_window_attention``."""
    b, h, w, _ = shape
    wh, ww = block.window_size
    pad_h, pad_w = h + (wh - h % wh) % wh, w + (ww - w % ww) % ww
    received = probs.mean(1).mean(1)                                   # (B·nW, N)
    grid = received.view(b, pad_h // wh, pad_w // ww, wh, ww).permute(0, 1, 3, 2, 4)
    grid = grid.reshape(b, pad_h, pad_w)
    shift = [0 if wh >= pad_h else block.shift_size[0], 0 if ww >= pad_w else block.shift_size[1]]
    if sum(shift) > 0:
        grid = torch.roll(grid, shifts=(shift[0], shift[1]), dims=(1, 2))
    return grid[:, :h, :w]
