"""Learning-rate and sparsity schedules."""
from __future__ import annotations

import math

import pytest

from prunelens.config import TrainConfig
from prunelens.pruning.schedule import lr_schedule, one_shot_sparsity, planned_rounds


def test_cosine_with_warmup():
    cfg = TrainConfig(lr=1.0, schedule="cosine", lr_warmup_epochs=1, lr_warmup_method="linear",
                      lr_warmup_decay=0.1)
    lr = lr_schedule(cfg, epochs=5, steps_per_epoch=10)
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(0.1 + 0.9 * 0.9)
    assert lr(10) == pytest.approx(1.0)
    assert lr(30) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert lr(49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_step_schedule_and_constant():
    cfg = TrainConfig(lr=0.1, schedule="step", milestones=[2, 4], gamma=0.1)
    lr = lr_schedule(cfg, epochs=6, steps_per_epoch=3)
    assert [lr(s) for s in (0, 5, 6, 11, 12, 17)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    const = lr_schedule(cfg, 6, 3, base_lr=0.003, kind="constant")
    assert const(0) == const(17) == 0.003


def test_planned_rounds_reach_max_sparsity():
    assert planned_rounds(0.2, 0.99, None) == 21   # 1 - 0.8**21 = 0.9908
    assert planned_rounds(0.2, 0.99, 5) == 5
    assert planned_rounds(0.5, 0.75, None) == 2
    assert one_shot_sparsity(0.2, 0.99, None) == 0.99
    assert one_shot_sparsity(0.2, 0.99, 3) == pytest.approx(1 - 0.8 ** 3)
