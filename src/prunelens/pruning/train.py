"""One training loop for every model, resumable at epoch boundaries.

Determinism: at the start of every epoch the global torch RNG and the shuffling generator are
reseeded from (seed, level, epoch), and the learning rate is a pure function of the step. So an
interrupted level resumes from its last complete epoch with only the model, optimiser and step
saved, and ends bit-identical on CPU to an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prunelens.io import atomic_save_tensors, atomic_write_json, load_tensors
from prunelens.pruning.masks import Masker
from prunelens.pruning.schedule import LRSchedule


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def derived_seed(*parts: int | str) -> int:
    blob = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


def make_optimizer(model: nn.Module, train_cfg, lr: float, kind: str | None = None) -> torch.optim.Optimizer:
    kind = kind or train_cfg.optimizer
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=train_cfg.momentum,
                               nesterov=train_cfg.nesterov and train_cfg.momentum > 0,
                               weight_decay=train_cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=train_cfg.weight_decay)


# ---- optimiser state <-> safetensors + JSON --------------------------------------------------------
def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {int(i): dict(v) for i, v in plain["state"].items()}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


@dataclass
class Checkpoint:
    """The partial state of a level being trained: ``<dir>/train_state.{safetensors,json}``."""

    directory: Path

    @property
    def tensors_path(self) -> Path:
        return self.directory / "train_state.safetensors"

    @property
    def json_path(self) -> Path:
        return self.directory / "train_state.json"

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict) -> None:
        opt_tensors, opt_plain = flatten_optimizer(optimizer.state_dict())
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
        atomic_save_tensors(self.tensors_path, tensors)
        atomic_write_json(self.json_path, dict(info, optimizer=opt_plain))

    def load(self) -> tuple[dict, dict, dict] | None:
        """(model state, optimiser state, info), or None when there is no complete checkpoint."""
        if not (self.tensors_path.is_file() and self.json_path.is_file()):
            return None
        info = json.loads(self.json_path.read_text())
        tensors = load_tensors(self.tensors_path)
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        return model_state, unflatten_optimizer(opt_tensors, info.pop("optimizer")), info


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, spec, device: torch.device, amp: bool = False,
                   channels_last: bool = False) -> dict:
    """Accuracy and mean cross-entropy over a loader; ``correct`` holds the per-sample 0/1."""
    model.eval()
    correct, losses = [], []
    for x, y in loader:
        x, y = _to_device(x, y, spec, device, channels_last)
        with _autocast(device, amp):
            logits = model(x)
        losses.append(F.cross_entropy(logits.float(), y, reduction="none"))
        correct.append(logits.argmax(1) == y)
    if not correct:
        return {"acc": math.nan, "loss": math.nan, "correct": torch.zeros(0, dtype=torch.bool)}
    c, l = torch.cat(correct).cpu(), torch.cat(losses).cpu()
    return {"acc": float(c.float().mean()), "loss": float(l.mean()), "correct": c}


def _to_device(x, y, spec, device, channels_last):
    x = spec.normalize(x.to(device, non_blocking=True))
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _autocast(device: torch.device, amp: bool):
    if amp:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class TrainPlan:
    """What one level trains: epochs under a schedule, from ``start_step`` (rewinding)."""

    epochs: int
    schedule: LRSchedule
    optimizer: str
    start_step: int = 0


def train_level(model: nn.Module, spec, loader_for_epoch: Callable[[int], object], plan: TrainPlan,
                train_cfg, device: torch.device, seed_parts: tuple, checkpoint: Checkpoint,
                masker: Masker | None = None, on_step: Callable[[int, nn.Module], None] | None = None,
                label: str = "") -> dict:
    """Train ``model`` in place for ``plan``; returns running train accuracy/loss of the last epoch.

    ``loader_for_epoch(epoch)`` returns the (re-seeded) training loader of an epoch. A checkpoint
    is written after every epoch and a matching one is resumed from.
    """
    model.to(device)
    if train_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train_cfg, plan.schedule.base_lr, plan.optimizer)
    if masker is not None:
        masker.attach(optimizer)
        masker.apply_()
    start_epoch, stats, elapsed = plan.start_step // plan.schedule.steps_per_epoch, {}, 0.0
    resumed = checkpoint.load()
    if resumed is not None:
        model_state, opt_state, info = resumed
        model.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(opt_state)
        start_epoch, stats, elapsed = info["epochs_done"], info["stats"], info["elapsed_s"]
    step_model = torch.compile(model) if train_cfg.compile else model
    try:
        for epoch in range(start_epoch, plan.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(derived_seed(*seed_parts, "epoch", epoch))
            stats = _train_epoch(step_model, model, spec, loader_for_epoch(epoch), optimizer, plan,
                                 train_cfg, device, epoch, on_step, label)
            elapsed += time.perf_counter() - t0
            checkpoint.save(model, optimizer, {"epochs_done": epoch + 1, "stats": stats,
                                               "elapsed_s": elapsed})
    finally:
        if masker is not None:
            masker.detach()
    return dict(stats, elapsed_s=elapsed)


def _train_epoch(step_model, model, spec, loader, optimizer, plan: TrainPlan, train_cfg, device,
                 epoch: int, on_step, label: str) -> dict:
    model.train()
    spe = plan.schedule.steps_per_epoch
    n_seen, correct_sum, loss_sum = 0, torch.zeros((), device=device), torch.zeros((), device=device)
    bar = tqdm(total=spe, desc=f"{label} epoch {epoch + 1}/{plan.epochs}", leave=False,
               disable=None, dynamic_ncols=True)
    for i, (x, y) in enumerate(loader):
        if i >= spe:
            break
        step = epoch * spe + i
        if step < plan.start_step:
            continue
        if on_step is not None:
            on_step(step, model)
        for group in optimizer.param_groups:
            group["lr"] = plan.schedule(step)
        x, y = _to_device(x, y, spec, device, train_cfg.channels_last)
        with _autocast(device, train_cfg.amp):
            logits = step_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=train_cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        # accumulate on the device: no host sync inside the loop
        loss_sum += loss.detach() * len(y)
        correct_sum += (logits.detach().argmax(1) == y).sum()
        n_seen += len(y)
        bar.update(1)
    bar.close()
    if n_seen == 0:
        return {"train_acc": math.nan, "train_loss": math.nan}
    return {"train_acc": float(correct_sum) / n_seen, "train_loss": float(loss_sum) / n_seen}
