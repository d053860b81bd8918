"""Helpers shared by the attribution methods: specs, targets, activation capture."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prunelens.errors import DataError, ModelError
from prunelens.models import ArchSpec, spec_for


def resolve_spec(model: nn.Module, spec: ArchSpec | None) -> ArchSpec:
    return spec if spec is not None else spec_for(model)


def spec_or_none(model: nn.Module) -> ArchSpec | None:
    """The model's spec, or None for a network outside the registry (methods that need no
    per-architecture fact still explain it)."""
    try:
        return spec_for(model)
    except ModelError:
        return None


def forward(model: nn.Module, x: torch.Tensor, spec: ArchSpec | None) -> torch.Tensor:
    """Logits of ``x``: ``spec.forward`` when the spec has one (a ViT at a size other than its own,
    with interpolated position embeddings), else ``model(x)``."""
    through_spec = getattr(spec, "forward", None)
    return through_spec(model, x) if through_spec is not None else model(x)


def check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise DataError(f"images must be a float tensor (B, C, H, W), got {x.dtype} of shape "
                        f"{tuple(x.shape)}")


def select_targets(logits: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    """Class index per item: the predicted class when ``target`` is None, else ``target``."""
    b, n_classes = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    t = torch.as_tensor(target, device=logits.device).to(torch.long)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise DataError(f"target must be one class index or one per image ({b}), got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= n_classes)).any()):
        raise DataError(f"target class indices must be in [0, {n_classes}), got {t.tolist()}")
    return t


def target_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The logit of each item's target class (B,)."""
    return logits.gather(1, target.unsqueeze(1)).squeeze(1)


class Captured:
    value: torch.Tensor | None = None


@contextmanager
def capture(module: nn.Module, on_input: bool = False) -> Iterator[Captured]:
    """Keep the tensor a module receives (``on_input``) or returns during the forward pass.

    The captured tensor stays in the autograd graph, so gradients can be taken with respect to it.
    """
    store = Captured()

    def keep_output(_module, _args, output):
        store.value = output[0] if isinstance(output, tuple) else output

    def keep_input(_module, args):
        store.value = args[0]

    handle = (module.register_forward_pre_hook(keep_input) if on_input
              else module.register_forward_hook(keep_output))
    try:
        yield store
    finally:
        handle.remove()
