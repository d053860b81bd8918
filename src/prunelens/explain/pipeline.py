"""All RQ1 methods on one batch, sharing work: one GradCAM pass gives the prediction, the GradCAM map
and (× guided backprop) Guided GradCAM; one forward pass gives both attention maps."""
from __future__ import annotations

import contextlib

from dataclasses import dataclass, field

import torch
from torch import nn

from prunelens.errors import ConfigError
from prunelens.explain._common import check_images, forward, resolve_spec, select_targets
from prunelens.explain.attention import (
    CLASS_TOKEN,
    _class_token_row_to_map,
    all_attention,
    class_token_attention,
    rollout,
)
from prunelens.explain.gradients import _guided_backprop, gradcam_with_logits
from prunelens.explain.integrated import integrated_gradients
from prunelens.explain.metrics import POOLINGS, pool_heatmaps
from prunelens.models import ArchSpec

METHODS = ("gradcam", "guided_gradcam", "integrated_gradients", "attention", "rollout")

#: Channel pooling per method before RMA/RRA. GradCAM and attention maps are one non-negative
#: channel already; for the signed three-channel maps the paper's code used CLEVR-XAI's
#: ``l2-norm,sq`` (squared L2 norm over the colour channels).
DEFAULT_POOLING = {"gradcam": "none", "guided_gradcam": "l2-norm,sq", "integrated_gradients": "l2-norm,sq",
                   "attention": "none", "rollout": "none"}


def applicable_methods(model: nn.Module, spec: ArchSpec | None = None) -> list[str]:
    """Methods that apply to this architecture: GradCAM-based ones need a spatial feature map,
    attention maps need multi-head attention over a class token (ViT), Integrated Gradients applies
    to every model."""
    spec = resolve_spec(model, spec)
    out = []
    if spec.has_spatial_features:
        out += ["gradcam", "guided_gradcam"]
    out.append("integrated_gradients")
    if class_token_attention(model, spec):
        out += ["attention", "rollout"]
    return out


@dataclass
class IGSettings:
    n_steps: int = 50
    method: str = "gausslegendre"
    noise_samples: int = 0
    noise_std: float = 1.0
    memory_cap_mb: float = 1024.0
    internal_batch_size: int | None = None
    generator: torch.Generator | None = None


@dataclass
class BatchExplanation:
    predictions: torch.Tensor                 # predicted class (B,)
    targets: torch.Tensor                     # explained class (B,)
    heatmaps: dict[str, torch.Tensor]         # method → (B, H, W) or (B, C, H, W) attributions
    completeness_gap: torch.Tensor | None = None  # IG: |Σ attributions − (f(x) − f(x'))| (B,)
    pooling: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_POOLING))

    def pooled(self, method: str) -> torch.Tensor:
        """One non-negative map (B, H, W) per image, pooled as ``self.pooling[method]``."""
        return pool_heatmaps(self.heatmaps[method], self.pooling.get(method, DEFAULT_POOLING[method]))


def explain_batch(model: nn.Module, x: torch.Tensor, methods: list[str] | tuple[str, ...] = METHODS, *,
                  spec: ArchSpec | None = None, target: torch.Tensor | int | None = None,
                  ig: IGSettings | None = None, pooling: dict[str, str] | None = None,
                  amp: bool = False, channels_last: bool = False) -> BatchExplanation:
    """Heatmaps of normalised images ``x`` for each of ``methods`` (predicted class when ``target``
    is None).

    ``amp`` runs the model passes under bf16 autocast and ``channels_last`` converts the model and
    images to channels-last (GPU speed options); heatmaps are returned in float32 either way.
    """
    check_images(x)
    if channels_last and x.dim() == 4:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(x.device.type, dtype=torch.bfloat16) if amp
                else contextlib.nullcontext())
    with autocast:
        result = _explain(model, x, methods, spec, target, ig, pooling)
    result.heatmaps = {m: h.float() for m, h in result.heatmaps.items()}
    return result


def _explain(model: nn.Module, x: torch.Tensor, methods, spec, target, ig, pooling) -> BatchExplanation:
    spec = resolve_spec(model, spec)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown attribution method(s) {unknown}; available: {', '.join(METHODS)}")
    pooling = {**DEFAULT_POOLING, **(pooling or {})}
    bad = {m: p for m, p in pooling.items() if p not in POOLINGS}
    if bad:
        raise ConfigError(f"unknown pooling {bad}; choose from {', '.join(POOLINGS)}")
    maps: dict[str, torch.Tensor] = {}
    if "gradcam" in methods or "guided_gradcam" in methods:
        cam, target, logits = gradcam_with_logits(model, x, target, spec=spec)
        maps["gradcam"] = cam
        if "guided_gradcam" in methods:
            guided, _ = _guided_backprop(model, x, target, True, spec)
            maps["guided_gradcam"] = guided * cam.unsqueeze(1)
    else:
        with torch.no_grad():
            logits = forward(model, x, spec)
        target = select_targets(logits, target)
    gap = None
    if "integrated_gradients" in methods:
        s = ig or IGSettings()
        maps["integrated_gradients"], gap = integrated_gradients(
            model, x, target, n_steps=s.n_steps, method=s.method, noise_samples=s.noise_samples,
            noise_std=s.noise_std, generator=s.generator, internal_batch_size=s.internal_batch_size,
            memory_cap_mb=s.memory_cap_mb, spec=spec)
    if "attention" in methods or "rollout" in methods:
        probs = all_attention(model, x, spec)
        if "attention" in methods:
            maps["attention"] = _class_token_row_to_map(probs[-1].mean(1)[:, CLASS_TOKEN], x, model, spec, True)
        if "rollout" in methods:
            maps["rollout"] = _class_token_row_to_map(rollout(probs)[:, CLASS_TOKEN], x, model, spec, True)
    return BatchExplanation(predictions=logits.argmax(1), targets=target,
                            heatmaps={m: maps[m] for m in methods}, completeness_gap=gap,
                            pooling=pooling)
