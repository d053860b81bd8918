"""All RQ1 methods on one batch, sharing work: one GradCAM pass gives the prediction, the GradCAM map
and (× guided backprop) Guided GradCAM; one forward pass gives both attention maps.

The methods are one table, :data:`ATTRIBUTION_METHODS`: name, title, default channel pooling, what
the architecture needs for it, and how it is computed from the passes a batch shares
(:class:`SharedPasses`). Adding a method is one row (``docs/architecture.md``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.errors import ConfigError
from prunelens.explain._common import check_images, forward, resolve_spec, select_targets
from prunelens.explain.attention import all_attention, class_token_map, rollout
from prunelens.explain.gradients import _guided_backprop, gradcam_with_logits
from prunelens.explain.integrated import integrated_gradients
from prunelens.explain.metrics import POOLINGS, pool_heatmaps
from prunelens.models import ArchSpec
from prunelens.models.spec import WINDOW_ATTENTION_MAPS


@dataclass
class IGSettings:
    n_steps: int = 50
    method: str = "gausslegendre"
    noise_samples: int = 0
    noise_std: float = 1.0
    memory_cap_mb: float = 1024.0
    internal_batch_size: int | None = None
    generator: torch.Generator | None = None
    #: ``black``: a black image in pixel space (normalised by the spec); ``zero``: 0 in the model's
    #: normalised input space (Captum's default, which the paper's code used)
    baseline: Literal["black", "zero"] = "black"


class SharedPasses:
    """The passes of one batch that several methods share, each computed on first use: the
    GradCAM pass (map, explained classes, logits), the explained classes from a plain forward pass
    when no GradCAM is asked for, and the attention probabilities of every layer."""

    def __init__(self, model: nn.Module, x: torch.Tensor, spec: ArchSpec, methods, target,
                 ig: IGSettings | None, guide_gelu: bool = True,
                 window_attention: str = "received") -> None:
        self.model, self.x, self.spec, self.target, self.ig = model, x, spec, target, ig or IGSettings()
        self.guide_gelu, self.window_attention = guide_gelu, window_attention
        self.uses_gradcam = any(ATTRIBUTION_METHODS[m].needs == "spatial" for m in methods)
        self.completeness_gap: torch.Tensor | None = None

    @cached_property
    def gradcam(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return gradcam_with_logits(self.model, self.x, self.target, spec=self.spec)

    @cached_property
    def logits_and_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_gradcam:
            _, targets, logits = self.gradcam
            return logits, targets
        with torch.no_grad():
            logits = forward(self.model, self.x, self.spec)
        return logits, select_targets(logits, self.target)

    @property
    def targets(self) -> torch.Tensor:
        return self.logits_and_targets[1]

    @cached_property
    def attention(self) -> list[torch.Tensor]:
        return all_attention(self.model, self.x, self.spec)


def _gradcam(p: SharedPasses) -> torch.Tensor:
    return p.gradcam[0]


def _guided_gradcam(p: SharedPasses) -> torch.Tensor:
    guided, _ = _guided_backprop(p.model, p.x, p.targets, p.guide_gelu, p.spec)
    return guided * p.gradcam[0].unsqueeze(1)


def _integrated_gradients(p: SharedPasses) -> torch.Tensor:
    s = p.ig
    baseline = torch.zeros_like(p.x) if s.baseline == "zero" else None  # None: black (the default)
    attributions, p.completeness_gap = integrated_gradients(
        p.model, p.x, p.targets, baseline=baseline, n_steps=s.n_steps, method=s.method, noise_samples=s.noise_samples,
        noise_std=s.noise_std, generator=s.generator, internal_batch_size=s.internal_batch_size,
        memory_cap_mb=s.memory_cap_mb, spec=p.spec)
    return attributions


def _attention(p: SharedPasses) -> torch.Tensor:
    """The class token's last-layer attention (ViT), or a map of local window attention (Swin,
    :meth:`prunelens.models.spec.SwinSpec.window_attention_map`: the attention tokens receive, or
    the paper's first-window row), resized bilinearly to the image."""
    if p.spec.class_token_attention(p.model):
        return class_token_map(p.attention[-1].mean(1), p.x, p.spec)
    with torch.no_grad():
        grid = p.spec.window_attention_map(p.model, p.x, p.window_attention)
    return F.interpolate(grid.unsqueeze(1), size=p.x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _rollout(p: SharedPasses) -> torch.Tensor:
    return class_token_map(rollout(p.attention), p.x, p.spec)


@dataclass(frozen=True)
class AttributionMethod:
    """One attribution method. ``needs``: ``spatial`` (a spatial feature map), ``class_token``
    (attention over a class token), ``attention`` (that, or local window attention) or None (every
    model). ``default_pooling`` turns its map into one non-negative value per pixel before RMA/RRA
    (:data:`prunelens.explain.metrics.POOLINGS`)."""

    name: str
    title: str
    default_pooling: str
    needs: Literal["spatial", "class_token", "attention"] | None
    compute: Callable[[SharedPasses], torch.Tensor]

    def applies_to(self, model: nn.Module, spec: ArchSpec) -> bool:
        return self.why_not(model, spec) is None

    def why_not(self, model: nn.Module, spec: ArchSpec) -> str | None:
        """Why the method does not apply to this architecture (None when it does)."""
        if self.needs == "spatial" and not spec.has_spatial_features:
            return f"needs a spatial feature map, which the '{spec.family}' architecture lacks"
        class_token = bool(spec.class_token_attention(model)) if self.needs else False
        if self.needs == "class_token" and not class_token:
            return spec.attention_not_applicable(model, self.name)
        if self.needs == "attention" and not (class_token or spec.has_window_attention):
            return spec.attention_not_applicable(model, self.name)
        return None


#: Every attribution method. GradCAM and attention maps are one non-negative channel already; for
#: the signed three-channel maps the paper's code used CLEVR-XAI's ``l2-norm,sq`` (squared L2 norm
#: over the colour channels).
ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {m.name: m for m in (
    AttributionMethod("gradcam", "GradCAM", "none", "spatial", _gradcam),
    AttributionMethod("guided_gradcam", "Guided GradCAM", "l2-norm,sq", "spatial", _guided_gradcam),
    AttributionMethod("integrated_gradients", "Integrated Gradients", "l2-norm,sq", None,
                      _integrated_gradients),
    AttributionMethod("attention", "Attention", "none", "attention", _attention),
    AttributionMethod("rollout", "Rollout", "none", "class_token", _rollout),
)}
METHODS = tuple(ATTRIBUTION_METHODS)
DEFAULT_POOLING = {m.name: m.default_pooling for m in ATTRIBUTION_METHODS.values()}


def applicable_methods(model: nn.Module, spec: ArchSpec | None = None) -> list[str]:
    """The methods that apply to this architecture (table order)."""
    spec = resolve_spec(model, spec)
    return [m.name for m in ATTRIBUTION_METHODS.values() if m.applies_to(model, spec)]


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
                  amp: bool = False, channels_last: bool = False,
                  guide_gelu: bool = True, window_attention: str = "received") -> BatchExplanation:
    """Heatmaps of normalised images ``x`` for each of ``methods`` (predicted class when ``target``
    is None). ``guide_gelu``: guided backpropagation also guides GELU (see
    :mod:`prunelens.explain.gradients`); False leaves GELU alone, as Captum does.
    ``window_attention``: which map local window attention gives (one of
    :data:`prunelens.models.spec.WINDOW_ATTENTION_MAPS`).

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
        result = _explain(model, x, methods, spec, target, ig, pooling, guide_gelu, window_attention)
    result.heatmaps = {m: h.float() for m, h in result.heatmaps.items()}
    return result


def _explain(model: nn.Module, x: torch.Tensor, methods, spec, target, ig, pooling,
             guide_gelu: bool = True, window_attention: str = "received") -> BatchExplanation:
    spec = resolve_spec(model, spec)
    unknown = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise ConfigError(f"unknown attribution method(s) {unknown}; available: {', '.join(METHODS)}")
    pooling = {**DEFAULT_POOLING, **(pooling or {})}
    bad = {m: p for m, p in pooling.items() if p not in POOLINGS}
    if bad:
        raise ConfigError(f"unknown pooling {bad}; choose from {', '.join(POOLINGS)}")
    if window_attention not in WINDOW_ATTENTION_MAPS:
        raise ConfigError(f"unknown window attention map '{window_attention}'; choose from "
                          f"{', '.join(WINDOW_ATTENTION_MAPS)}")
    passes = SharedPasses(model, x, spec, methods, target, ig, guide_gelu, window_attention)
    maps = {m: ATTRIBUTION_METHODS[m].compute(passes) for m in methods}
    logits, targets = passes.logits_and_targets
    return BatchExplanation(predictions=logits.argmax(1), targets=targets, heatmaps=maps,
                            completeness_gap=passes.completeness_gap, pooling=pooling)
