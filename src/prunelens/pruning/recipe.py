"""The training-recipe options of torchvision's ``references/classification/train.py`` that change
the model, on the libraries that implement them: weight-decay groups, MixUp / CutMix (transforms
v2), the exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``) and
the repeated-augmentation sampler order. The warm-up lives in :mod:`prunelens.pruning.schedule`,
the augmentation policies and random erasing in the dataset's transforms
(:mod:`prunelens.data.imagefolder`).

Where prunelens departs from the reference, it is for its own design: EMA weights are masked so a
level's sparsity stays exact, and the repeated-augmentation order is also used by a single process
so that it trains on the same global batches as N ranks.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import default_collate

from prunelens._compat import torchvision
from prunelens.models.registry import spec_for
from prunelens.pruning.masks import Masker

# ---- weight decay ---------------------------------------------------------------------------------
def weight_decay_of(model: nn.Module, train_cfg) -> dict[str, float]:
    """Weight decay per parameter name, as torchvision's references/classification/utils.py
    ``set_weight_decay`` assigns it from ``--weight-decay``, ``--norm-weight-decay``,
    ``--bias-weight-decay`` and ``--transformer-embedding-decay``: a parameter named ``bias`` takes
    the bias decay, then a transformer embedding (see ``ArchSpec.embedding_parameters``) the
    embedding decay, then a parameter of a normalisation layer the norm decay; an option left
    unset leaves its parameters to the next rule."""
    t = train_cfg
    spec = spec_for(model, generic=True)
    embeddings: set[str] = set()
    if t.transformer_embedding_decay is not None:
        embeddings = set(spec.embedding_parameters(model))
    norms = spec.norm_modules(model)
    decay = {}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if not p.requires_grad or full in decay:
                continue
            if t.bias_weight_decay is not None and name == "bias":
                decay[full] = t.bias_weight_decay
            elif full in embeddings:
                decay[full] = t.transformer_embedding_decay
            elif t.norm_weight_decay is not None and module_name in norms:
                decay[full] = t.norm_weight_decay
            else:
                decay[full] = t.weight_decay
    return decay


def parameter_groups(model: nn.Module, train_cfg):
    """The optimiser's parameters: all of ``model``'s when no decay group is configured (one group
    at ``weight_decay``), else one group per distinct decay, in the model's parameter order."""
    t = train_cfg
    if t.norm_weight_decay is None and t.bias_weight_decay is None and t.transformer_embedding_decay is None:
        return model.parameters()
    decay = weight_decay_of(model, t)
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if name in decay:
            groups.setdefault(decay[name], []).append(p)
    return [{"params": ps, "weight_decay": value} for value, ps in groups.items()]


# ---- MixUp / CutMix -------------------------------------------------------------------------------
def mixup_cutmix(train_cfg, num_classes: int) -> Callable | None:
    """torchvision's transforms v2 ``RandomChoice`` of ``MixUp(alpha=mixup_alpha)`` and
    ``CutMix(alpha=cutmix_alpha)`` (those with α > 0), applied to whole batches as in the
    reference's ``get_mixup_cutmix``; None when both are off."""
    torchvision()
    from torchvision.transforms import v2
    choices = []
    if train_cfg.mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=train_cfg.mixup_alpha, num_classes=num_classes))
    if train_cfg.cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=train_cfg.cutmix_alpha, num_classes=num_classes))
    return v2.RandomChoice(choices) if choices else None


class MixingCollate:
    """``default_collate``, then MixUp / CutMix on the batch, as the reference's training loader's
    ``collate_fn``: targets become (B, num_classes) probabilities.

    MixUp cannot blend uint8 images: uint8 batches are scaled to floats in [0, 1] first (what the
    training step would do on the device). A class rather than a closure, so that loader workers
    can receive it.
    """

    def __init__(self, mix: Callable) -> None:
        self.mix = mix

    def __call__(self, samples):
        x, y = default_collate(samples)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return self.mix(x, y)


def mixing_collate(train_cfg, num_classes: int) -> MixingCollate | None:
    mix = mixup_cutmix(train_cfg, num_classes)
    return MixingCollate(mix) if mix is not None else None


# ---- repeated augmentation -----------------------------------------------------------------------
def ra_order(n: int, repetitions: int, generator: torch.Generator) -> list[int]:
    """The global sample order of one epoch of repeated augmentation (Hoffer et al. 2020; DeiT's
    and torchvision's references/classification/sampler.py ``RASampler``): a permutation of the
    ``n`` samples with each index repeated ``repetitions`` times in a row, cut to the largest
    multiple of 256 not above ``n`` (so an epoch holds about ``n`` samples, ``n / repetitions``
    distinct images).

    Dealt to W ranks position by position (rank r takes r, r + W, …) this gives every rank
    exactly what ``RASampler`` gives it: the copies of an image go to different ranks.
    """
    perm = torch.randperm(n, generator=generator)
    return perm.repeat_interleave(repetitions)[: n // 256 * 256].tolist()


# ---- exponential moving average ------------------------------------------------------------------
def ema_decay(decay: float, batch_size: int, steps: int, epochs: int) -> float:
    """torchvision's adjustment of ``--model-ema-decay`` (references/classification/train.py,
    after pycls): ``α = min(1, (1 − decay) · global batch · model_ema_steps / epochs)``, decay
    ``1 − α``, so that the averaging horizon in epochs does not depend on those settings."""
    return 1.0 - min(1.0, (1.0 - decay) * batch_size * steps / epochs)


class ModelEMA:
    """The exponential moving average of a model's parameters and buffers, updated every
    ``model_ema_steps`` steps of an epoch and reset to the weights during the warm-up epochs:
    torchvision's ``--model-ema`` (references/classification/utils.py ExponentialMovingAverage),
    on ``AveragedModel(use_buffers=True)`` with ``get_ema_multi_avg_fn``.

    With a ``masker`` the pruned weights of the average are set to exactly zero after every
    update, so the average has the sparsity of the level.
    """

    def __init__(self, model: nn.Module, train_cfg, epochs: int, masker: Masker | None = None) -> None:
        self.decay = ema_decay(train_cfg.model_ema_decay, train_cfg.batch_size,
                               train_cfg.model_ema_steps, epochs)
        self.steps = train_cfg.model_ema_steps
        self.warmup_epochs = train_cfg.lr_warmup_epochs
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                                      use_buffers=True)
        self.masker = None
        if masker is not None:
            own = dict(self.averaged.module.named_parameters())
            self.masker = Masker({n: own[n] for n in masker.names}, dict(zip(masker.names, masker.masks)))

    @torch.no_grad()
    def update(self, model: nn.Module, step_in_epoch: int, epoch: int) -> None:
        if step_in_epoch % self.steps:
            return
        self.averaged.update_parameters(model)
        if epoch < self.warmup_epochs:
            self.averaged.n_averaged.fill_(0)  # the next update copies the weights again
        if self.masker is not None:
            self.masker.apply_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state, strict=True)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Make ``model`` the average: the weights the level evaluates, saves and prunes next."""
        model.load_state_dict(self.averaged.module.state_dict(), strict=True)
