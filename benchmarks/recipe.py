"""Cost of torchvision's training recipe per training step: recipe on vs off, one run.

Both sides train the same model from the same weights on the same ImageFolder tree (JPEGs written
to a temporary folder), through prunelens's own loaders and step (``_Loaders`` + ``train_epoch``),
loading in the training process (``num_workers`` 0), so a step's time includes decoding and
augmenting its batch:

* off: RandomResizedCrop + flip, cross-entropy on class indices, one weight-decay group;
* on: the SwinV2-T recipe of the paper configs — TrivialAugmentWide and random erasing (0.25),
  bicubic resampling, MixUp 0.8 / CutMix 1.0 on the batch with soft targets, label smoothing,
  repeated augmentation (4), norm/bias weight-decay groups, linear warm-up, gradient clipping
  (5.0), the weight average every ``--ema-steps`` steps (torchvision: 32) on a pruned model's masks.

The sides are interleaved (``--rounds`` x ``--steps``, who goes first alternating) and compared by
the median over rounds of the ratio of their step times in the same round; one CPU thread by
default (``--threads``), as on a shared machine two threads measure the neighbours.

    PYTHONPATH=src python benchmarks/recipe.py [--model small_vit] [--size 64] [--batch 32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from prunelens.config import resolve_runs
from prunelens.data.provider import RunData
from prunelens.models import create_model, spec_for
from prunelens.pruning import Masker, magnitude_masks, prunable_parameters
from prunelens.pruning.masks import dense_masks
from prunelens.pruning.recipe import ModelEMA
from prunelens.pruning.runner import _Loaders
from prunelens.pruning.schedule import lr_schedule
from prunelens.pruning.train import TrainPlan, make_optimizer, train_epoch

RECIPE_TRAIN = dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, ra_sampler=True, ra_reps=4,
                    norm_weight_decay=0.0, bias_weight_decay=0.0, lr_warmup_epochs=1,
                    lr_warmup_method="linear", clip_grad_norm=5.0, model_ema=True)
RECIPE_DATA = dict(interpolation="bicubic", auto_augment="ta_wide", random_erase=0.25)


def write_tree(root: Path, classes: int, per_class: int, size: int) -> None:
    """An ImageNet-layout folder of noisy JPEGs a little larger than the crops."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 1)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size + size // 4, size + size // 3, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.JPEG", format="JPEG", quality=90)


class Side:
    """One configuration's loaders, model, optimiser (and weight average), trained epoch by epoch."""

    def __init__(self, args, root: Path, recipe: bool) -> None:
        train = dict(batch_size=args.batch, epochs=args.rounds + 1, optimizer="adamw", lr=1e-3,
                     weight_decay=0.05, max_steps_per_epoch=args.steps, device="cpu",
                     model_ema_steps=args.ema_steps, **(RECIPE_TRAIN if recipe else {}))
        data = dict(name="imagefolder", root=str(root), train_crop_size=args.size,
                    val_resize_size=args.size, val_crop_size=args.size, **(RECIPE_DATA if recipe else {}))
        model_options = {"image_size": args.size} if args.model == "small_vit" else {}
        self.cfg = resolve_runs({"name": "bench", "train": train, "data": data,
                                 "model": {"name": args.model, **model_options}})[0]
        self.loaders = _Loaders(self.cfg, RunData(self.cfg.data, 0), num_classes=args.classes)
        torch.manual_seed(0)
        self.model = create_model(args.model, args.classes, **model_options)
        self.spec = spec_for(self.model)
        self.optimizer = make_optimizer(self.model, self.cfg.train, self.cfg.train.lr)
        params = prunable_parameters(self.model)
        masks = magnitude_masks({n: p.detach() for n, p in params.items()}, dense_masks(params), 0.5)
        self.masker = Masker(params, masks).attach(self.optimizer)
        self.masker.apply_()
        epochs = self.cfg.train.epochs
        self.ema = ModelEMA(self.model, self.cfg.train, epochs, self.masker) if recipe else None
        self.plan = TrainPlan(epochs, lr_schedule(self.cfg.train, epochs, self.loaders.steps_per_epoch),
                              self.cfg.train.optimizer)
        self.epoch_index = 0

    def epoch(self) -> float:
        """Seconds per step of the next epoch."""
        e, self.epoch_index = self.epoch_index, self.epoch_index + 1
        torch.manual_seed(e)
        t0 = time.perf_counter()
        train_epoch(self.model, self.model, self.spec, self.loaders.for_epoch(0)(e), self.optimizer,
                    self.plan, self.cfg.train, torch.device("cpu"), e, masker=self.masker, ema=self.ema)
        return (time.perf_counter() - t0) / self.loaders.steps_per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="small_vit")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="steps per timed round and side")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--ema-steps", type=int, default=32, help="train.model_ema_steps (torchvision: 32)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        # repeated augmentation uses the largest multiple of 256 images: 256 per epoch at least
        write_tree(Path(tmp), args.classes, max(256, args.batch * args.steps) // args.classes + 1,
                   args.size)
        sides = {"off": Side(args, Path(tmp), recipe=False), "on": Side(args, Path(tmp), recipe=True)}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds + 1):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                t = sides[name].epoch()
                if r > 0:  # round 0 warms up
                    times[name].append(t)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = statistics.median(a / b for a, b in zip(times["on"], times["off"]))
    print(f"model={args.model} batch={args.batch} size={args.size} classes={args.classes} "
          f"threads={torch.get_num_threads()} rounds={args.rounds}x{args.steps} steps "
          f"ema_steps={args.ema_steps} cpu={os.cpu_count()} "
          f"loadavg_before={load_before[0]:.2f} loadavg_after={os.getloadavg()[0]:.2f}")
    for name in sides:
        spread = f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f}"
        print(f"recipe_{name}_step_ms={med[name] * 1e3:.2f} (rounds {spread})")
    print(f"ratio_on_vs_off={ratio:.2f} (step time with the recipe / without, paired by round; "
          f"ratio of medians {med['on'] / med['off']:.2f})")


if __name__ == "__main__":
    main()
