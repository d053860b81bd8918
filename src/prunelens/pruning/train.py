"""One training loop for every model, resumable at epoch boundaries.

Determinism: at the start of every epoch the global torch RNG and the shuffling generator are
reseeded from (seed, level, epoch), and the learning rate is a pure function of the step. So an
interrupted level resumes from its last complete epoch with only the model, optimiser, step and
weight average (``train.model_ema``) saved, and ends bit-identical on CPU to an uninterrupted run:
augmentation, MixUp / CutMix and the repeated-augmentation order draw from those reseeded
generators (or from loader workers seeded by them).

The recipe options of torchvision's reference (:mod:`prunelens.pruning.recipe`) enter here: the
weight-decay groups of the optimiser, soft (mixed) targets in the loss, gradient clipping, and the
weight average, which at the end of the level replaces the weights.

Under torchrun the same loop runs on every rank with the model wrapped in
DistributedDataParallel: the RNG seeds add the rank, the loader of each rank yields its share of
the global batch, metrics are summed over the ranks, only rank 0 writes the epoch checkpoint and
every rank resumes from it (checked identical on every rank).

GPU speed: bf16 autocast (``train.amp``), channels_last weights and inputs, ``torch.compile``
afresh for every level (``train.compile``), fused optimisers on CUDA, uint8 batches turned into
floats on the device, and no host-device synchronisation inside the step loop (metrics are
accumulated on the device and read once per epoch).
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
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from prunelens import distributed
from prunelens.config import parse_device
from prunelens.errors import ConfigError, DivergedError
from prunelens.io import atomic_save_tensors, atomic_write_json, load_tensors, sha256_file
from prunelens.pruning.masks import Masker
from prunelens.pruning.recipe import ModelEMA, parameter_groups
from prunelens.pruning.schedule import LRSchedule
from prunelens.runfolder import Layout


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), or a torch device string that this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' is not available on this machine (torch {torch.__version__} "
                          "sees no CUDA GPU); use device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' does not exist: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def derived_seed(*parts: int | str) -> int:
    blob = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


def make_optimizer(model: nn.Module, train_cfg, lr: float, kind: str | None = None,
                   fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW over ``model``'s parameters in their weight-decay groups
    (:func:`~prunelens.pruning.recipe.parameter_groups`); ``fused`` (CUDA only) runs each step as
    one kernel."""
    kind = kind or train_cfg.optimizer
    extra = {"fused": True} if fused else {}
    params = parameter_groups(model, train_cfg)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train_cfg.momentum,
                               nesterov=train_cfg.nesterov and train_cfg.momentum > 0,
                               weight_decay=train_cfg.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay, **extra)


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
    """The partial state of a level being trained: its tensors and a JSON naming their sha256 (in
    a run folder, :meth:`prunelens.runfolder.Layout.train_state`)."""

    tensors_path: Path
    json_path: Path
    ignored: str | None = None  # why :meth:`load` ignored a checkpoint that was there

    @classmethod
    def in_folder(cls, directory: Path) -> Checkpoint:
        """A checkpoint in ``directory`` under the run folder's names."""
        return cls(directory / Layout.TRAIN_STATE, directory / Layout.TRAIN_STATE_JSON)

    @property
    def directory(self) -> Path:
        return self.tensors_path.parent

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict,
             ema: ModelEMA | None = None) -> None:
        """Tensors first, then the JSON naming their sha256: the JSON is the commit point, so a
        kill between the two renames leaves a pair that :meth:`load` recognises as mismatched."""
        opt_tensors, opt_plain = flatten_optimizer(optimizer.state_dict())
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
        if ema is not None:
            tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
        atomic_save_tensors(self.tensors_path, tensors)
        atomic_write_json(self.json_path, dict(info, optimizer=opt_plain,
                                               tensors_sha256=sha256_file(self.tensors_path)))

    def load(self) -> tuple[dict, dict, dict, dict] | None:
        """(model state, optimiser state, info, weight-average state — empty without one), or None
        when there is no intact checkpoint (then ``ignored`` says why, if one was there)."""
        self.ignored = None
        if not (self.tensors_path.is_file() and self.json_path.is_file()):
            return None
        try:
            info = json.loads(self.json_path.read_text())
            if info.get("tensors_sha256") != sha256_file(self.tensors_path):
                raise ValueError("its two files do not match (interrupted while being written)")
            tensors = load_tensors(self.tensors_path)
            model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
            ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            optimizer = unflatten_optimizer(opt_tensors, info.pop("optimizer"))
            return (model_state, optimizer, {k: info[k] for k in ("epochs_done", "stats", "elapsed_s")},
                    ema_state)
        except Exception as exc:  # noqa: BLE001 - any damage: retrain the level from its start
            self.ignored = f"checkpoint in {self.directory} ignored ({exc}); the level restarts"
            return None


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, spec, device: torch.device, amp: bool = False,
                   channels_last: bool = False, sharded: bool = False) -> dict:
    """Accuracy and mean cross-entropy over a loader; ``correct`` holds the per-sample 0/1.

    ``sharded``: under torchrun the loader holds this rank's shard of the split; accuracy and
    loss are then over every rank's shard (``correct`` stays this rank's).
    """
    model.eval()
    correct, losses = [], []
    for x, y in loader:
        x, y = _to_device(x, y, spec, device, channels_last)
        with _autocast(device, amp):
            logits = model(x)
        losses.append(F.cross_entropy(logits.float(), y, reduction="none"))
        correct.append(logits.argmax(1) == y)
    if sharded and distributed.active():
        return _reduced_accuracy(correct, losses)
    if not correct:
        return {"acc": math.nan, "loss": math.nan, "correct": torch.zeros(0, dtype=torch.bool)}
    c, l = torch.cat(correct).cpu(), torch.cat(losses).cpu()
    return {"acc": float(c.float().mean()), "loss": float(l.mean()), "correct": c}


def _reduced_accuracy(correct: list[torch.Tensor], losses: list[torch.Tensor]) -> dict:
    c = torch.cat(correct).cpu() if correct else torch.zeros(0, dtype=torch.bool)
    l = torch.cat(losses).cpu() if losses else torch.zeros(0)
    totals = torch.tensor([float(c.sum()), float(l.double().sum()), float(len(c))], dtype=torch.float64)
    n_correct, loss_sum, n = distributed.all_reduce_sum(totals).tolist()
    if n == 0:
        return {"acc": math.nan, "loss": math.nan, "correct": c}
    return {"acc": n_correct / n, "loss": loss_sum / n, "correct": c}


def _to_device(x, y, spec, device, channels_last):
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:  # uint8 batches cross to the device 4x smaller; scaled to [0, 1] there
        x = x.float().div_(255)
    x = spec.normalize(x)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _autocast(device: torch.device, amp: bool):
    if amp:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: what to do when training diverges (a different learning rate is a different run)
DIVERGED_FIX = ("The levels built so far are kept. Train again with a lower train.lr (or "
                "train.clip_grad_norm) under another run name, or with --force to move this run "
                "folder aside")


@dataclass
class TrainPlan:
    """What one level trains: epochs under a schedule, from ``start_step`` (rewinding)."""

    epochs: int
    schedule: LRSchedule
    optimizer: str
    start_step: int = 0


def training_module(model: nn.Module, train_cfg, device: torch.device) -> nn.Module:
    """What the step loop calls: ``model`` compiled afresh if ``train.compile`` on CUDA (after a
    pruning round the old graphs are dropped, so a long pool never reaches Dynamo's recompile
    limit), wrapped in DistributedDataParallel under torchrun (compile inside, DDP outside, as
    PyTorch recommends). Parameters stay ``model``'s own, so the Masker and the checkpoint act on
    them.

    On the CPU ``train.compile`` is ignored: it is a GPU speed option, and torch 2.13's CPU
    Inductor computes wrong convolution gradients for LeNet-5 (max-pool followed by an MLP head).
    """
    step_model = model
    if train_cfg.compile and device.type == "cuda":
        torch.compiler.reset()
        step_model = torch.compile(model)
    if distributed.active():
        step_model = DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    return step_model


def train_level(model: nn.Module, spec, loader_for_epoch: Callable[[int], object], plan: TrainPlan,
                train_cfg, device: torch.device, seed_parts: tuple, checkpoint: Checkpoint,
                masker: Masker | None = None, on_step: Callable[[int, nn.Module], None] | None = None,
                label: str = "", log: Callable[[str], None] | None = None) -> dict:
    """Train ``model`` in place for ``plan``; returns running train accuracy/loss of the last epoch.

    ``loader_for_epoch(epoch)`` returns the (re-seeded) training loader of an epoch. A checkpoint
    is written after every epoch and a matching one is resumed from. Under torchrun, call it on
    every rank: only rank 0 writes the checkpoint, and the model ends identical on every rank.
    With ``train.model_ema`` the model ends as the (masked) weight average.
    """
    model.to(device)
    if train_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train_cfg, plan.schedule.base_lr, plan.optimizer,
                               fused=device.type == "cuda")
    if masker is not None:
        masker.attach(optimizer)
        masker.apply_()
    ema = ModelEMA(model, train_cfg, plan.epochs, masker) if train_cfg.model_ema and plan.epochs else None
    start_epoch, stats, elapsed = plan.start_step // plan.schedule.steps_per_epoch, {}, 0.0
    resumed = checkpoint.load()
    if checkpoint.ignored and log is not None:
        log(f"{label}: {checkpoint.ignored}")
    if resumed is not None:
        model_state, opt_state, info, ema_state = resumed
        model.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(opt_state)
        if ema is not None:
            ema.load_state_dict(ema_state)
        start_epoch, stats, elapsed = info["epochs_done"], info["stats"], info["elapsed_s"]
        if log is not None:
            log(f"{label}: resuming after epoch {start_epoch} of {plan.epochs}")
    distributed.verify_identical(f"{label} starting weights and masks (resuming at epoch {start_epoch})",
                                 _model_and_masks(model, masker), {"start_epoch": start_epoch})
    step_model = training_module(model, train_cfg, device)
    try:
        for epoch in range(start_epoch, plan.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(derived_seed(*seed_parts, "epoch", epoch, *distributed.seed_parts()))
            with distributed.comm_failures(f"training {label} epoch {epoch + 1}"):
                stats = train_epoch(step_model, model, spec, loader_for_epoch(epoch), optimizer, plan,
                                    train_cfg, device, epoch, on_step, label, masker=masker, ema=ema)
            elapsed += time.perf_counter() - t0
            if distributed.is_main():
                checkpoint.save(model, optimizer, {"epochs_done": epoch + 1, "stats": stats,
                                                   "elapsed_s": elapsed}, ema)
    finally:
        if masker is not None:
            masker.detach()
    if ema is not None:
        ema.copy_to(model)
    _share_buffers(model)
    distributed.verify_identical(f"{label} trained weights", model.state_dict())
    return dict(stats, elapsed_s=elapsed)


def _model_and_masks(model: nn.Module, masker: Masker | None) -> dict[str, torch.Tensor]:
    tensors = dict(model.state_dict())
    if masker is not None:
        tensors |= {f"mask:{n}": m for n, m in zip(masker.names, masker.masks)}
    return tensors


def _share_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP copies them from rank 0 before each forward, so after the last step every rank holds the
    statistics of its own last batch; the level written and evaluated is rank 0's.
    """
    if not distributed.active():
        return
    buffers = dict(model.named_buffers())
    shared = distributed.broadcast_tensors(buffers)
    with torch.no_grad():
        for name, buf in buffers.items():
            buf.copy_(shared[name])


def train_epoch(step_model: nn.Module, model: nn.Module, spec, loader, optimizer, plan: TrainPlan,
                train_cfg, device: torch.device, epoch: int, on_step=None, label: str = "",
                masker: Masker | None = None, ema: ModelEMA | None = None) -> dict:
    """One epoch of steps ``epoch × steps_per_epoch …`` (those before ``plan.start_step`` skipped).

    ``step_model`` is what the forward pass calls (compiled / DDP-wrapped ``model``). Targets are
    class indices, or (B, classes) probabilities after MixUp / CutMix (accuracy then counts the
    largest, as torchvision's reference). A step is torchvision's: loss, backward, gradient
    clipping (of the pruned network's gradient: ``masker`` zeroes the pruned entries first),
    optimiser step, weight-average update. Returns the running accuracy and loss over the
    epoch's samples, summed over the ranks.
    """
    model.train()
    spe = plan.schedule.steps_per_epoch
    n_seen, correct_sum, loss_sum = 0, torch.zeros((), device=device), torch.zeros((), device=device)
    bar = tqdm(total=spe, desc=f"{label} epoch {epoch + 1}/{plan.epochs}", leave=False,
               disable=None if distributed.is_main() else True, dynamic_ncols=True)
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
        if train_cfg.clip_grad_norm is not None:
            if masker is not None:
                masker.mask_grads_()
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_grad_norm)
        optimizer.step()
        if ema is not None:
            ema.update(model, i, epoch)
        # accumulate on the device: no host sync inside the loop
        loss_sum += loss.detach() * len(y)
        correct_sum += (logits.detach().argmax(1) == (y.argmax(1) if y.ndim > 1 else y)).sum()
        n_seen += len(y)
        bar.update(1)
    bar.close()
    loss_total, correct_total, n_total = float(loss_sum), float(correct_sum), float(n_seen)
    if distributed.active():
        totals = torch.tensor([loss_total, correct_total, n_total], dtype=torch.float64)
        loss_total, correct_total, n_total = distributed.all_reduce_sum(totals).tolist()
    if not math.isfinite(loss_total):
        raise DivergedError(f"{label}: the training loss became {loss_total} in epoch {epoch + 1}: "
                            f"training diverged. {DIVERGED_FIX}")
    if n_total == 0:
        return {"train_acc": math.nan, "train_loss": math.nan}
    return {"train_acc": correct_total / n_total, "train_loss": loss_total / n_total}
