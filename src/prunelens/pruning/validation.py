"""Periodic validation during a level's training, and the level's error as its minimum.

Pellegrini & Biroli's code (phiandark/SiftingFeatures @386b617, src/IMP.py:146-169) evaluates the
network every ``validate_step`` steps, step 0 included, on the first ``val_size`` images of
ImageNet32's ``val_data`` (Data.py:55-57: prunelens' ``test`` split), in evaluation mode with the
batch-norm running averages as they are before that step's update (IMP.py:148-167), and reports
``emin = np.min(el)`` over the level (IMP.py:169). Their loop runs ``steps + 1`` iterations and
validates the last one before its update, i.e. after ``steps`` updates: here the last point is
taken after the level's last update.

The curve is kept in the level's ``.partial`` folder as it grows, so a level resumed at an epoch
boundary keeps the points already measured (the steps it replays give the same errors and
overwrite them).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from prunelens import distributed
from prunelens.io import atomic_write_json
from prunelens.pruning.train import evaluate_model


class PeriodicValidation:
    """Called before every training step (``train_level``'s ``on_step``): every ``every`` steps it
    measures the error on ``loader``; :meth:`finish` adds the point after the last update and
    returns the level's record."""

    def __init__(self, loader, n_images: int, spec, device: torch.device, train_cfg,
                 path: Path | None) -> None:
        self.loader, self.n_images, self.spec, self.device = loader, n_images, spec, device
        self.cfg, self.path = train_cfg, path
        self.every = train_cfg.validate_every
        self.curve: dict[int, float] = {}
        if path is not None and path.is_file():
            self.curve = {int(k): float(v) for k, v in json.loads(path.read_text()).items()}

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every == 0:
            self._measure(step, model)

    def finish(self, last_step: int, model: nn.Module, first_step: int = 0) -> dict:
        """The point after ``last_step`` updates, then the record of the points from
        ``first_step`` on (level.json's ``periodic_validation``)."""
        self._measure(last_step, model)
        steps = sorted(s for s in self.curve if first_step <= s <= last_step)
        errors = [self.curve[s] for s in steps]
        best = min(range(len(errors)), key=errors.__getitem__)  # the first of equal minima
        return {"split": self.cfg.validate_split, "n_images": self.n_images,
                "every_steps": self.every, "steps": steps, "errors": errors,
                "min_error": errors[best], "min_error_step": steps[best]}

    def _measure(self, step: int, model: nn.Module) -> None:
        was_training = model.training
        result = evaluate_model(model, self.loader, self.spec, self.device, self.cfg.amp,
                                self.cfg.channels_last, sharded=True)
        model.train(was_training)
        self.curve[step] = 1.0 - result["acc"]
        if self.path is not None and distributed.is_main():
            atomic_write_json(self.path, {str(s): e for s, e in sorted(self.curve.items())})

