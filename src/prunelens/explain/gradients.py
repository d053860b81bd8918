"""GradCAM, guided backpropagation and Guided GradCAM, batched, for every architecture with a spec.

* GradCAM (Selvaraju et al. 2017, eqs. 1-2): channel weights α_c = spatial mean of ∂y_t/∂A_c at the
  spec's GradCAM layer; map = ReLU(Σ_c α_c A_c), upsampled bilinearly to the input size.
* Guided backpropagation (Springenberg et al. 2015, sec. 3.4): backpropagation in which every ReLU
  passes back only positive gradient, and only where its input was positive:
  R_in = 1[x > 0] · max(R_out, 0).
* Guided GradCAM (Selvaraju et al. 2017, sec. 3.1): guided backpropagation × upsampled GradCAM.

Guided ReLUs are installed with a :class:`torch.overrides.TorchFunctionMode` that routes every relu
call (``nn.ReLU`` modules, reused or in-place, ``F.relu``, ``torch.relu``, ``Tensor.relu_`` …) to
a custom autograd function, so no module is patched and functional ReLUs are covered.

GELU (ViT, Swin): the guided rule is applied to GELU too — its ordinary local derivative times the
incoming gradient, of which only the positive part is passed back: R_in = max(GELU'(x) · R_out, 0).
This is the rule Captum applies to a ReLU module's input gradient, transferred to GELU; with it,
guided backprop on a transformer is not just the plain gradient. ``guide_gelu=False`` leaves GELU
untouched (what Captum's GuidedBackprop, which only hooks ``nn.ReLU`` modules, does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from prunelens.explain._common import (
    capture,
    check_images,
    forward,
    resolve_spec,
    select_targets,
    spec_or_none,
    target_scores,
)
from prunelens.models import ArchSpec


# ---- GradCAM ----------------------------------------------------------------------------------------
def gradcam_site(model: nn.Module, spec: ArchSpec) -> tuple[nn.Module, bool]:
    """The GradCAM layer and whether GradCAM reads its *input* instead of its output (the spec's
    ``gradcam_uses_input``: for torchvision's ViT the tokens leaving the last block never reach
    the logits, so GradCAM uses the tokens entering it)."""
    return spec.gradcam_layer(model), spec.gradcam_uses_input


def gradcam_with_logits(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None,
                        *, spec: ArchSpec | None = None, relu: bool = True, upsample: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GradCAM maps (B, H, W) (or (B, h, w) without ``upsample``), the explained classes (B,) and
    the logits (B, K) of the same forward pass."""
    check_images(x)
    spec = resolve_spec(model, spec)
    layer, on_input = gradcam_site(model, spec)
    x = x.detach().requires_grad_(True)  # keeps a graph even when the weights are frozen
    with torch.enable_grad(), capture(layer, on_input) as site:
        logits = forward(model, x, spec)
    target = select_targets(logits, target)
    activation = site.value
    grad, = torch.autograd.grad(target_scores(logits, target).sum(), activation)
    a = spec.to_grid(activation.detach(), model)
    weights = spec.to_grid(grad, model).mean((2, 3), keepdim=True)
    cam = (weights * a).sum(1, keepdim=True)
    if relu:
        cam = cam.clamp(min=0)
    if upsample:
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0], target, logits.detach()


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
            spec: ArchSpec | None = None, relu: bool = True, upsample: bool = True) -> torch.Tensor:
    """GradCAM (Selvaraju et al. 2017) of normalised images ``x`` (B, C, H, W) → (B, H, W).

    ``target=None`` explains each image's predicted class.
    """
    return gradcam_with_logits(model, x, target, spec=spec, relu=relu, upsample=upsample)[0]


# ---- guided backpropagation ---------------------------------------------------------------------------
class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes max(grad, 0) where the input was positive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if inplace:
            out = x.clamp_(min=0)
            ctx.mark_dirty(out)
        else:
            out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, = ctx.saved_tensors
        return torch.where(out > 0, grad.clamp(min=0), 0), None


class _GuidedGELU(torch.autograd.Function):
    """GELU whose backward passes max(GELU'(x) · grad, 0)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, approximate: str) -> torch.Tensor:
        ctx.approximate = approximate
        ctx.save_for_backward(x)
        return F.gelu(x, approximate=approximate)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        local = torch.ops.aten.gelu_backward(grad, x, approximate=ctx.approximate)
        return local.clamp(min=0), None


_RELU_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu}
_RELU_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}


class GuidedMode(TorchFunctionMode):
    """Within this mode, forward passes record guided ReLUs (and GELUs, see module docstring)."""

    def __init__(self, guide_gelu: bool = True) -> None:
        super().__init__()
        self.guide_gelu = guide_gelu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.relu:
            return _GuidedReLU.apply(args[0], bool(kwargs.get("inplace", args[1] if len(args) > 1 else False)))
        if func in _RELU_OUT_OF_PLACE:
            return _GuidedReLU.apply(args[0], False)
        if func in _RELU_IN_PLACE:
            return _GuidedReLU.apply(args[0], True)
        if func is F.gelu and self.guide_gelu:
            return _GuidedGELU.apply(args[0], kwargs.get("approximate", "none"))
        return func(*args, **kwargs)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                    guide_gelu: bool = True, spec: ArchSpec | None = None) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015) of images ``x`` → (B, C, H, W)."""
    return _guided_backprop(model, x, target, guide_gelu, spec)[0]


def _guided_backprop(model: nn.Module, x: torch.Tensor, target, guide_gelu: bool,
                     spec: ArchSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    check_images(x)
    spec = spec if spec is not None else spec_or_none(model)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), GuidedMode(guide_gelu):
        logits = forward(model, x, spec)
    target = select_targets(logits, target)
    grad, = torch.autograd.grad(target_scores(logits, target).sum(), x)
    return grad, target


def guided_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                   spec: ArchSpec | None = None, guide_gelu: bool = True) -> torch.Tensor:
    """Guided GradCAM (Selvaraju et al. 2017): guided backprop × bilinear GradCAM → (B, C, H, W)."""
    cam, target, _ = gradcam_with_logits(model, x, target, spec=spec)
    return guided_backprop(model, x, target, guide_gelu=guide_gelu, spec=spec) * cam.unsqueeze(1)
