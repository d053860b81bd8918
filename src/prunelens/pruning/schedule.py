"""Learning-rate schedules as pure functions of the step, and the sparsity schedule of a run."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    """``lr(step)``: linear warmup, then constant, step decay at epoch milestones, or cosine to 0."""

    base_lr: float
    total_steps: int
    steps_per_epoch: int
    kind: str = "cosine"
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "step":
            epoch = step // max(1, self.steps_per_epoch)
            return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(train_cfg, epochs: int, steps_per_epoch: int, base_lr: float | None = None,
                kind: str | None = None) -> LRSchedule:
    return LRSchedule(
        base_lr=base_lr if base_lr is not None else train_cfg.lr,
        total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
        kind=kind or train_cfg.schedule,
        warmup_steps=0 if kind == "constant" else round(train_cfg.warmup_epochs * steps_per_epoch),
        milestones=tuple(train_cfg.milestones), gamma=train_cfg.gamma)


def planned_rounds(rate: float, max_sparsity: float, rounds: int | None) -> int:
    """Rounds of gradual pruning: ``rounds`` if set, else enough for ``max_sparsity``.

    After k rounds the sparsity is 1 − (1 − rate)^k; the last round is capped at ``max_sparsity``.
    """
    needed = math.ceil(math.log(1 - max_sparsity) / math.log(1 - rate) - 1e-9)
    return min(rounds, needed) if rounds is not None else needed


def one_shot_sparsity(rate: float, max_sparsity: float, rounds: int | None) -> float:
    """The final sparsity the equivalent gradual schedule would reach."""
    return min(max_sparsity, 1 - (1 - rate) ** planned_rounds(rate, max_sparsity, rounds))
