"""Learning-rate schedules as pure functions of the step, and the sparsity schedule of a run."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    """``lr(step)``: a warm-up, then constant, step decay at epoch milestones, or cosine to ``min_lr``.

    Warm-up and cosine are torchvision's (references/classification/train.py: ``LinearLR`` or
    ``ConstantLR`` with factor ``lr_warmup_decay`` for ``lr_warmup_epochs``, then
    ``CosineAnnealingLR(T_max=epochs - lr_warmup_epochs, eta_min=lr_min)``), evaluated at the
    fractional epoch ``step / steps_per_epoch``: equal to torchvision's at the first step of every
    epoch, and moving within epochs instead of once per epoch. Step milestones count from epoch 0.
    """

    base_lr: float
    total_steps: int
    steps_per_epoch: int
    kind: str = "cosine"
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_method: str = "linear"
    warmup_decay: float = 0.01
    min_lr: float = 0.0

    def warmup_factor(self, step: int) -> float:
        """torchvision's ``LinearLR(start_factor=decay)`` / ``ConstantLR(factor=decay)`` factor."""
        if self.warmup_method == "constant":
            return self.warmup_decay
        return self.warmup_decay + (1 - self.warmup_decay) * step / self.warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * self.warmup_factor(step)
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "step":
            epoch = step // max(1, self.steps_per_epoch)
            return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(train_cfg, epochs: int, steps_per_epoch: int, base_lr: float | None = None,
                kind: str | None = None) -> LRSchedule:
    return LRSchedule(
        base_lr=base_lr if base_lr is not None else train_cfg.lr,
        total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
        kind=kind or train_cfg.schedule,
        warmup_steps=0 if kind == "constant" else round(train_cfg.lr_warmup_epochs * steps_per_epoch),
        milestones=tuple(train_cfg.milestones), gamma=train_cfg.gamma,
        warmup_method=train_cfg.lr_warmup_method, warmup_decay=train_cfg.lr_warmup_decay,
        min_lr=train_cfg.lr_min)


def planned_rounds(rate: float, max_sparsity: float, rounds: int | None) -> int:
    """Rounds of gradual pruning: ``rounds`` if set, else enough for ``max_sparsity``.

    After k rounds the sparsity is 1 − (1 − rate)^k; the last round is capped at ``max_sparsity``.
    """
    needed = math.ceil(math.log(1 - max_sparsity) / math.log(1 - rate) - 1e-9)
    return min(rounds, needed) if rounds is not None else needed


def one_shot_sparsity(rate: float, max_sparsity: float, rounds: int | None) -> float:
    """The final sparsity the equivalent gradual schedule would reach."""
    return min(max_sparsity, 1 - (1 - rate) ** planned_rounds(rate, max_sparsity, rounds))
