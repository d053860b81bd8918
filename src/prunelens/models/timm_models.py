"""Any timm model by name (``timm:<model name>``), with one generic spec derived from timm's own
metadata: ``pretrained_cfg`` (mean, std, first conv, classifier), ``num_prefix_tokens`` and
``cls_token`` (class, distillation and register tokens), ``feature_info`` (the last stage's module
and reduction), ``output_fmt`` (NHWC stages), ``no_weight_decay()`` (embeddings) and
``forward_head(pre_logits=True)`` (penultimate features). No per-model code: the next timm model
needs none.

timm is an optional extra (``pip install 'prunelens[timm]'``) imported only when a ``timm:`` name
is used. Models are always built with ``pretrained=False``; ``weights: timm`` loads timm's
pretrained weights only from the Hugging Face hub cache, offline (nothing is ever downloaded).
"""
from __future__ import annotations

import types
from pathlib import Path

import torch
from torch import nn

from prunelens._compat import torchvision
from prunelens.errors import ModelError
from prunelens.models.spec import IMAGENET_MEAN, IMAGENET_STD, ArchSpec, activation_of

PREFIX = "timm:"
#: ``model.weights`` value that asks for timm's pretrained weights from the local hub cache
TIMM_WEIGHTS = "timm"


def is_timm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def timm_module() -> types.ModuleType:
    """The ``timm`` module (imported lazily: prunelens works without it)."""
    torchvision()  # timm imports torchvision; on a CPU torch it needs prunelens's workaround first
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need timm, which is not installed: "
                         "pip install 'prunelens[timm]'") from None
    return timm


def timm_name(name: str) -> str:
    """The timm model name of ``timm:<name>``, checked against timm's registry."""
    model_name = name[len(PREFIX):]
    timm = timm_module()
    if not model_name or not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:8]}*")[:5] if model_name else []
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelError(f"timm has no model '{model_name}'{hint}; see timm.list_models()")
    return model_name


def build(name: str, num_classes: int, **options) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=…, **options)``."""
    return timm_module().create_model(timm_name(name), pretrained=False, num_classes=num_classes,
                                      **options)


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def spec_of_name(name: str, options: dict | None = None) -> TimmSpec:
    """The spec of ``timm:<name>`` built with ``options``: read from a model made on the meta
    device (no memory, no initialisation cost)."""
    try:
        with torch.device("meta"):
            model = build(name, 2, **(options or {}))
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - a model whose init needs real tensors: build it for real
        model = build(name, 2, **(options or {}))
    return TimmSpec(model)


def cached_weights(name: str) -> Path:
    """The file of timm's pretrained weights for ``timm:<name>`` in the Hugging Face hub cache,
    looked up offline (``try_to_load_from_cache`` reads only the cache folder, whatever
    ``HF_HUB_OFFLINE`` says); a ModelError that says where to put it when it is not there."""
    model_name = timm_name(name)
    cfg = timm_module().get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise ModelError(f"timm has no Hugging Face weights for '{model_name}': give a local "
                         ".safetensors file as model.weights")
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE, SAFETENSORS_SINGLE_FILE
    except ImportError:
        raise ModelError("weights: timm needs huggingface_hub: pip install 'prunelens[timm]'") from None
    filename = getattr(cfg, "hf_hub_filename", None) or SAFETENSORS_SINGLE_FILE  # the hub's default
    found = try_to_load_from_cache(repo, filename)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    raise ModelError(f"timm weights for '{model_name}' are not on this machine and prunelens never "
                     f"downloads them: put {filename} of the Hugging Face repo {repo} in the hub "
                     f"cache ({HF_HUB_CACHE}), e.g. `hf download {repo} {filename}` on a machine "
                     "with a network, or give a local .safetensors file as model.weights")


class TimmSpec(ArchSpec):
    """Every timm model: facts read from the model's own metadata at construction.

    * token models (``num_prefix_tokens``: ViT, DeiT, EVA …): GradCAM reads the tokens entering the
      last block (behind a class token the tokens leaving it never reach the logits); class-token
      attention is read from timm's ``Attention`` modules with fused attention off; LOST uses the
      last block's keys;
    * stage models (ConvNeXt, EfficientNet, RegNet, ResNet, Swin …): the last ``feature_info``
      stage, laid out as ``output_fmt`` says.
    """

    def __init__(self, model: nn.Module) -> None:
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        self.cfg = cfg
        self.family = f"timm:{cfg.get('architecture') or type(model).__name__}"
        self.design = ("transformer" if any(self._is_attention(m) for m in model.modules())
                       else "convolutional")
        self.mean = tuple(float(v) for v in cfg.get("mean") or IMAGENET_MEAN)
        self.std = tuple(float(v) for v in cfg.get("std") or IMAGENET_STD)
        self.tokens = hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed")
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.has_class_token = self.tokens and getattr(model, "cls_token", None) is not None
        self.channels_last = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
        info = list(getattr(model, "feature_info", None) or [])
        last = info[-1] if info else {}
        self.feature_module = last.get("module") if isinstance(last, dict) else None
        self.reduction = int(last.get("reduction", 0)) if isinstance(last, dict) else 0
        self.has_spatial_features = bool(self.feature_module) and self.reduction > 0
        self.gradcam_uses_input = self.tokens
        self.lost_layernorm = "none" if self.tokens or self.channels_last else "map"
        no_decay = getattr(model, "no_weight_decay", None)
        self.no_decay = set(no_decay()) if callable(no_decay) else set()

    # ---- layers ---------------------------------------------------------------------------------
    def _cfg_weight(self, model: nn.Module, key: str) -> str | None:
        names = self.cfg.get(key)
        names = names if isinstance(names, (list, tuple)) else [names]
        prunable = self.prunable(model)
        found = [f"{n}.weight" for n in names if n and f"{n}.weight" in prunable]
        return found[0] if found else None

    def first_layer(self, model: nn.Module) -> str:
        return self._cfg_weight(model, "first_conv") or super().first_layer(model)

    def classifier(self, model: nn.Module) -> str:
        return self._cfg_weight(model, "classifier") or super().classifier(model)

    def embedding_parameters(self, model: nn.Module) -> list[str]:
        """timm's ``no_weight_decay()`` names (position embeddings, class/register tokens, bias
        tables)."""
        return [n for n, _ in model.named_parameters()
                if n in self.no_decay or n.rsplit(".", 1)[-1] in self.no_decay]

    # ---- attention ------------------------------------------------------------------------------
    @staticmethod
    def _is_attention(module: nn.Module) -> bool:
        """timm's self-attention modules: fused QKV, a switch for fused attention and a dropout that
        receives the probabilities when it is off."""
        return all(hasattr(module, a) for a in ("qkv", "fused_attn", "attn_drop", "num_heads"))

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if self._is_attention(m)]

    def class_token_attention(self, model: nn.Module) -> list[nn.Module]:
        return self.attention_modules(model) if self.has_class_token else []

    def class_token_row(self, attention: torch.Tensor) -> torch.Tensor:
        return attention[:, 0]

    def attention_not_applicable(self, model: nn.Module, method: str) -> str:
        if self.tokens and not self.has_class_token:
            return f"{self.family} has no class token, whose attention row {method} maps are"
        if self.channels_last and self.attention_modules(model):
            return (f"{self.family} attends within local windows and has no class token; prunelens "
                    f"does not read {method} maps from timm's window attention")
        return super().attention_not_applicable(model, method)

    def capture_attention(self, modules: list[nn.Module], run) -> list[torch.Tensor]:
        """Attention probabilities (B, heads, N, N) of each module, in order: fused attention is
        switched off for the pass so that timm computes softmax(q·kᵀ·scale) and hands it to
        ``attn_drop``, where a hook keeps it."""
        found: dict[int, torch.Tensor] = {}
        saved = [m.fused_attn for m in modules]
        handles = []
        for m in modules:
            def keep(_drop, args, owner=m):
                found[id(owner)] = args[0]
            handles.append(m.attn_drop.register_forward_pre_hook(keep))
            m.fused_attn = False
        try:
            run()
        finally:
            for m, fused in zip(modules, saved):
                m.fused_attn = fused
            for handle in handles:
                handle.remove()
        missing = [i for i, m in enumerate(modules) if id(m) not in found]
        if missing:
            raise ModelError(f"{self.family}: attention modules {missing} did not compute their "
                             "probabilities in the forward pass")
        return [found[id(m)] for m in modules]

    def attention_parameters(self, model: nn.Module) -> list[str]:
        prunable = self.prunable(model)
        names = []
        for mod_name, module in model.named_modules():
            if self._is_attention(module):
                names += [n for n in prunable if n.startswith(f"{mod_name}.")]
        return names

    def neuron_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The Conv and Linear layers, but those inside windowed attention (Swin's
        ``WindowAttention``, which has a ``window_size``): they see windows, (B·windows, N, C), so
        their outputs are not one row per image."""
        windowed = [f"{n}." for n, m in model.named_modules()
                    if self._is_attention(m) and hasattr(m, "window_size")]
        return {name: m for name, m in super().neuron_layers(model).items()
                if not any(name.startswith(w) for w in windowed)}

    # ---- spatial features -----------------------------------------------------------------------
    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        if not self.has_spatial_features:
            return super().gradcam_layer(model)
        return model.get_submodule(self.feature_module)

    def to_grid(self, activation: torch.Tensor, model: nn.Module) -> torch.Tensor:
        if self.tokens:
            return self.tokens_to_grid(activation)
        if self.channels_last:
            return activation.permute(0, 3, 1, 2)
        return activation

    def feature_layer(self, model: nn.Module) -> nn.Module:
        if self.tokens:
            blocks = [m for m in self.gradcam_layer(model).modules() if self._is_attention(m)]
            if blocks:
                return blocks[-1]
        return self.gradcam_layer(model)

    def lost_tokens(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Token models: the keys of the last block's attention (LOST's choice for ViTs), heads
        concatenated, on the patch grid; other models: the last stage's feature map."""
        layer = self.feature_layer(model)
        if not (self.tokens and self._is_attention(layer)):
            return super().lost_tokens(model, x)
        tokens = activation_of(layer, lambda: self.forward(model, x), pre=True)
        b, n, _ = tokens.shape
        qkv = layer.qkv(tokens).reshape(b, n, 3, layer.num_heads, -1).permute(2, 0, 3, 1, 4)
        k = qkv[1]
        if hasattr(layer, "k_norm"):
            k = layer.k_norm(k)
        keys = k.transpose(1, 2).flatten(2)                       # (B, N, heads·d)
        stride = self.stride(model)
        return self.tokens_to_grid(keys, (x.shape[-2] // stride, x.shape[-1] // stride))

    def stride(self, model: nn.Module) -> int:
        if not self.has_spatial_features:
            return super().stride(model)
        return self.reduction

    # ---- penultimate features -------------------------------------------------------------------
    def penultimate_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_head(forward_features(x), pre_logits=True)``: the classifier's input
        (for DeiT's two heads, whose logits timm averages, the mean of their inputs)."""
        return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
