"""Build a pool: train the dense model (level 0), then prune and retrain level after level.

Retraining modes: ``lrr`` keeps the weights and replays the learning-rate schedule from its start,
over ``prune.epochs`` (default: all of ``train.epochs``, as Renda et al. 2020; step milestones are in
epochs of that replay); ``rewind`` resets the surviving weights to their values at step ``rewind_step`` of
the dense training and replays the schedule from there (Frankle et al. 2020); ``finetune`` keeps
the weights and trains at a small constant rate. Schedules: ``gradual`` prunes ``rate`` of the
remaining weights per round; ``one_shot`` prunes to the final sparsity at once and retrains with
the gradual schedule's total epoch budget.

Under torchrun every rank runs :func:`prune_run`: rank 0 alone takes the run-folder lock and
writes (pool.json, levels, epoch checkpoints); the masks of each round are computed on rank 0,
broadcast, and checked identical on every rank; every rank resumes from the run folder, which
must therefore be on a filesystem every node sees.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from prunelens import distributed
from prunelens.data.device_input import image_loader, input_path
from prunelens.data.provider import RunData
from prunelens.errors import ConfigError, PoolError
from prunelens.io import atomic_save_tensors
from prunelens.models import create_model, load_state_dict_strict, spec_for
from prunelens.pruning.store import PoolWriter, identity_difference
from prunelens.pruning.masks import (Masker, alive_unit_fraction, cumulative_masks, cumulative_ratio,
                                     magnitude_masks, mask_sparsity, prunable_from_config,
                                     random_initial_masks, random_masks_like)
from prunelens.pruning.recipe import mixing_collate, ra_order
from prunelens.pruning.schedule import lr_schedule, one_shot_sparsity, planned_rounds
from prunelens.pruning.train import (Checkpoint, TrainPlan, derived_seed, evaluate_model,
                                     resolve_device, train_level)
from prunelens.pruning.validation import PeriodicValidation
from prunelens.runfolder import Layout, Level, RunFolder

REWIND_FILE = Layout.REWIND


class _Loaders:
    """The run's loaders; the training loader is re-seeded per (level, epoch).

    ``train.batch_size`` is the global batch. Single process: one shuffling loader with its own
    generator. Under torchrun the epoch's order is that same shuffle, and a DistributedSampler
    deals it out (rank r takes positions r, r + world, …), each rank loading
    ``batch_size / world`` samples per step: step i of any number of ranks trains on the same
    global batch as step i of a single process. The val/test splits are sharded the same way and
    their metrics summed over the ranks.

    With ``train.ra_sampler`` the epoch's order is the repeated-augmentation order
    (:func:`~prunelens.pruning.recipe.ra_order`), dealt out the same way; with MixUp / CutMix the
    training batches are mixed as they are collated, on each rank (as torchvision's reference).
    """

    def __init__(self, cfg, data: RunData, device: torch.device | None = None,
                 num_classes: int | None = None) -> None:
        self.cfg = cfg
        self.train_set = data.split("train")
        self.generator = torch.Generator()
        self.batch_size = distributed.per_rank_batch(cfg.train.batch_size)
        self.drop_last = len(self.train_set) > cfg.train.batch_size
        # workers restart every epoch: persistent ones would keep the first epoch's worker seeds and
        # make the shuffling draws depend on whether the run was resumed
        self.common = dict(num_workers=cfg.train.num_workers,
                           pin_memory=device is not None and device.type == "cuda")
        mixing = cfg.train.mixup_alpha > 0 or cfg.train.cutmix_alpha > 0
        self.collate = mixing_collate(cfg.train, num_classes or data.num_classes) if mixing else None
        self.device = device
        #: where the images are decoded (:func:`~prunelens.data.device_input.input_path`): cpu or gpu, why
        self.input_path = input_path(self.train_set, device)
        self.train = self._loader(self.train_set, shuffle=True, drop_last=self.drop_last,
                                  generator=self.generator)
        if cfg.train.sampler == "with_replacement":
            self.steps_per_epoch = max(1, len(self.train_set) // cfg.train.batch_size)
        else:
            self.steps_per_epoch = len(self._single(0, 0) if not distributed.active() else self._sharded(0, 0))
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            used = (f"{len(self.epoch_order(0, 0))} of the {len(self.train_set)} training samples per "
                    "epoch (train.ra_sampler takes the largest multiple of 256, as torchvision's)"
                    if cfg.train.ra_sampler else f"{len(self.train_set)} training samples")
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} leaves no training step for {used}")
        self.eval = {s: image_loader(self._shard(data.split(s)), device, batch_size=cfg.train.eval_batch_size,
                                     **self.common)
                     for s in ("val", "test") if s in data.entry.splits}
        self.validation, self.validation_images = self._validation(cfg.train, data)

    def _validation(self, t, data: RunData) -> tuple[object | None, int]:
        """The loader of ``train.validate_every``: the first ``validate_images`` of its split."""
        if t.validate_every is None:
            return None, 0
        n = validation_images(self.cfg, data)
        # its own generator: a loader's iterator draws a seed, which must not come from the global RNG
        return image_loader(self._shard(Subset(data.split(t.validate_split), range(n))), self.device,
                            batch_size=t.eval_batch_size, generator=torch.Generator(), **self.common), n

    def _loader(self, dataset, **kw):
        """A training loader of ``dataset``: batches mixed (MixUp / CutMix) as they are collated on
        the CPU path, after they are decoded on the GPU path."""
        return image_loader(dataset, self.device, collate_fn=self.collate,
                            mix=self.collate.mix if self.collate is not None else None,
                            batch_size=self.batch_size, **kw, **self.common)

    def _seed(self, level: int, epoch: int) -> None:
        self.generator.manual_seed(derived_seed(self.cfg.seed, "shuffle", level, epoch))

    def epoch_order(self, level: int, epoch: int) -> list[int]:
        """The single-process loader's sample order of an epoch, drawn by the same DataLoader
        machinery from the same seed (an index loader stands in for the dataset), or the
        repeated-augmentation order drawn from that seed."""
        self._seed(level, epoch)
        n = len(self.train_set)
        if self.cfg.train.ra_sampler:
            return ra_order(n, self.cfg.train.ra_reps, self.generator)
        return next(iter(DataLoader(range(n), batch_size=n, shuffle=True, generator=self.generator))).tolist()

    def _with_replacement(self, level: int, epoch: int):
        """The training loader of an epoch of ``train.sampler: with_replacement`` (each rank
        loads its share of every global batch)."""
        self._seed(level, epoch)  # the loader workers' seeds
        batches = WithReplacementBatches(len(self.train_set), self.cfg.train.batch_size,
                                         self.steps_per_epoch,
                                         derived_seed(self.cfg.seed, "with_replacement", level, epoch),
                                         distributed.rank(), distributed.world_size())
        return image_loader(self.train_set, self.device, collate_fn=self.collate,
                            mix=self.collate.mix if self.collate is not None else None,
                            batch_sampler=batches, generator=self.generator, **self.common)

    def _single(self, level: int, epoch: int) -> DataLoader:
        """The single-process training loader of an epoch."""
        if self.cfg.train.sampler == "with_replacement":
            return self._with_replacement(level, epoch)
        if not self.cfg.train.ra_sampler:
            self._seed(level, epoch)
            return self.train
        order = self.epoch_order(level, epoch)  # leaves the generator seeded for the worker seeds
        return self._loader(self.train_set, sampler=order, drop_last=self.drop_last, generator=self.generator)

    def _sharded(self, level: int, epoch: int) -> DataLoader:
        sampler = DistributedSampler(Subset(self.train_set, self.epoch_order(level, epoch)),
                                     num_replicas=distributed.world_size(), rank=distributed.rank(),
                                     shuffle=False, drop_last=True)
        # the generator seeds this rank's workers (augmentations): the sampler does not shuffle
        workers = torch.Generator().manual_seed(
            derived_seed(self.cfg.seed, "workers", level, epoch, distributed.rank()))
        return self._loader(sampler.dataset, sampler=sampler, drop_last=self.drop_last, generator=workers)

    @staticmethod
    def _shard(dataset):
        if not distributed.active():
            return dataset
        return Subset(dataset, range(distributed.rank(), len(dataset), distributed.world_size()))

    def for_epoch(self, level: int) -> Callable[[int], object]:
        def loader(epoch: int):
            if distributed.active() and self.cfg.train.sampler != "with_replacement":
                return self._sharded(level, epoch)
            return self._single(level, epoch)
        return loader


def level_epochs(cfg, level: int) -> int:
    """The epochs level ``level`` of ``cfg``'s pool trains for: ``train.epochs`` for the dense level
    (and for a rewound level, which replays the dense schedule); ``prune.epochs`` (default
    ``train.epochs``) per round, times the rounds a one-shot level stands for."""
    t, p = cfg.train, cfg.prune
    if level == 0 or p.retrain == "rewind":
        return t.epochs
    epochs = p.epochs if p.epochs is not None else t.epochs
    if p.schedule == "one_shot":
        epochs *= planned_rounds(p.rate, p.max_sparsity, p.rounds)
    return epochs


def validation_images(cfg, data: RunData) -> int:
    """How many images ``train.validate_every`` evaluates on, or a ConfigError naming the fix."""
    t = cfg.train
    if t.validate_split not in data.entry.splits:
        raise ConfigError(f"train.validate_split: the dataset {cfg.data.name} has no "
                          f"'{t.validate_split}' split (it has {', '.join(data.entry.splits)})")
    size = len(data.split(t.validate_split))
    n = size if t.validate_images is None else t.validate_images
    if n > size:
        raise ConfigError(f"train.validate_images {n} is more than the {size} images of the "
                          f"{t.validate_split} split: lower it, or leave it out for all")
    if n == 0:
        raise ConfigError(f"train.validate_split: the {t.validate_split} split is empty (a val_size "
                          "of 0 holds nothing out?): validate on test, or hold some out")
    return n


class WithReplacementBatches:
    """Batches drawn uniformly with replacement, each step on its own: Pellegrini & Biroli's
    ``np.random.choice(self.train_size, batch_size)`` (SiftingFeatures src/Data.py:72-73), from a
    ``numpy.random.RandomState`` seeded by ``seed`` (theirs is seeded by the clock, IMP.py:80).
    No epochs, no shuffle: an image may come twice in a batch and never in another. Under torchrun
    rank r takes positions r, r + world, … of every global batch."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch_size, self.steps, self.rank, self.world = n, batch_size, steps, rank, world
        self.seed = seed % 2**32  # RandomState's seed range

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        rng = np.random.RandomState(self.seed)
        for _ in range(self.steps):
            yield rng.choice(self.n, self.batch_size)[self.rank::self.world].tolist()


def _level_plan(cfg, level: int, spe: int) -> TrainPlan:
    t, p = cfg.train, cfg.prune
    if level == 0:
        return TrainPlan(t.epochs, lr_schedule(t, t.epochs, spe), t.optimizer)
    epochs = level_epochs(cfg, level)
    if p.retrain == "finetune":
        return TrainPlan(epochs, lr_schedule(t, epochs, spe, base_lr=p.finetune_lr, kind="constant"),
                         t.optimizer)
    if p.retrain == "rewind":
        start = 0 if p.rewind_replay == "full" else p.rewind_step
        return TrainPlan(t.epochs, lr_schedule(t, t.epochs, spe), t.optimizer, start_step=start)
    return TrainPlan(epochs, lr_schedule(t, epochs, spe), t.optimizer)


def _next_masks(cfg, params, masks, level: int) -> dict[str, torch.Tensor]:
    p = cfg.prune
    weights = {n: prm.detach().cpu() for n, prm in params.items()}
    if p.schedule == "one_shot":  # from dense straight to the target, per scope
        target = one_shot_sparsity(p.rate, p.max_sparsity, p.rounds)
        total = sum(m.numel() for m in masks.values())
        amount = total - round((1 - target) * total) if p.scope == "global" else target
        return magnitude_masks(weights, masks, amount, p.scope)
    total = sum(m.numel() for m in masks.values())
    if p.scope == "global":
        floor = round((1 - p.max_sparsity) * total)
    else:
        floor = {n: round((1 - p.max_sparsity) * m.numel()) for n, m in masks.items()}
    if p.target == "cumulative":  # level k is the k-th round, from init_sparsity (IMP.py:89)
        return cumulative_masks(weights, masks, cumulative_ratio(p.rate, level, p.init_sparsity), p.scope,
                                min_alive=floor)
    return magnitude_masks(weights, masks, p.rate, p.scope, min_alive=floor)


def _stop_reason(cfg, level: int, old_masks, new_masks, layer_order: list[str]) -> str | None:
    """Why no further level is built, or None to build it. ``layer_order``: every weight the
    spec could prune, in model order (``prune.stop_layers: authors`` indexes it)."""
    p = cfg.prune
    if p.schedule == "one_shot" and level > 1:
        return "one-shot: pruned to the target in one step"
    old_s, _ = mask_sparsity(old_masks)
    new_s, _ = mask_sparsity(new_masks)
    if level > 1 and p.rounds is not None and level > p.rounds:
        return f"{p.rounds} rounds done"
    if new_s <= old_s + 1e-12:
        return f"max_sparsity {p.max_sparsity} reached"
    below = _units_below(p, new_masks, layer_order)
    if below is not None:
        sign = "<" if p.stop_when == "below" else "<="
        return (f"the next round would leave {below[1]:.0%} of the units of {below[0]} with an "
                f"incoming connection ({sign} min_alive_units {p.min_alive_units:.0%})")
    return None


def _units_below(p, masks, layer_order: list[str]) -> tuple[str, float] | None:
    """The counted layer with the fewest connected units and that fraction, when it is past
    ``prune.min_alive_units`` (``stop_when``); else None."""
    if p.min_alive_units <= 0:
        return None
    alive = {n: f for n, f in alive_unit_fraction(masks).items()
             if n in counted_layers(p.stop_layers, layer_order, masks)}
    worst = min(alive, key=alive.get, default=None)
    if worst is None or (alive[worst] >= p.min_alive_units if p.stop_when == "below"
                         else alive[worst] > p.min_alive_units):
        return None
    return worst, alive[worst]


def initial_masks(cfg, params, layer_order: list[str]) -> dict[str, torch.Tensor]:
    """Level 0's masks: all ones, or with ``prune.init_sparsity`` Pellegrini & Biroli's random
    first mask (:func:`~prunelens.pruning.masks.random_initial_masks`), each parameter's draws
    seeded by the run's seed and its name. Their loop trains nothing when that mask already leaves
    too few connected units (the stop rule before the first level, IMP.py:120, 128): a ConfigError
    here, before the run folder is touched."""
    p = cfg.prune
    masks = random_initial_masks(
        params, p.init_sparsity,
        lambda name: torch.Generator().manual_seed(derived_seed(cfg.seed, "init-mask", name)))
    below = _units_below(p, masks, layer_order) if p.init_sparsity > 0 else None
    if below is not None:
        raise ConfigError(f"prune.init_sparsity {p.init_sparsity} leaves {below[1]:.0%} of the units "
                          f"of {below[0]} with an incoming connection, past the stop rule "
                          f"(min_alive_units {p.min_alive_units:.0%}, stop_when {p.stop_when}): no "
                          "level would train; lower it")
    return masks


def counted_layers(which: str, layer_order: list[str], masks) -> set[str]:
    """The pruned weights the stop rule counts: all; or, as SiftingFeatures src/IMP.py:87 indexes
    them (``prunable = [l-1 for l, lay in enumerate(arch) if lay[2]]``), the layer before each
    pruned one in ``layer_order``, cyclically (the authors' ``mask[-1]``). A counted layer that is
    not pruned has all its units connected, so it never decides. Biases (``prune.biases``) are
    not layers here: units are counted by their incoming weights (IMP.py:120)."""
    pruned = [n for n in masks if n in layer_order]
    if which == "all":
        return set(pruned)
    return {layer_order[layer_order.index(n) - 1] for n in pruned} & set(pruned)


def prune_run(cfg, force: bool = False, log: Callable[[str], None] = print,
              ignore_unknown_options: bool = False) -> RunFolder:
    """Build (or resume) the pool of one run config; returns the finished :class:`RunFolder`.
    ``ignore_unknown_options`` resumes a pool whose pool.json records options this version does
    not know (they are kept as a record, not applied).

    Under torchrun call it on every rank (see the module docstring); only rank 0 logs.
    """
    device = distributed.init(resolve_device(cfg.train.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: cuDNN picks its fastest kernels once
    if not distributed.is_main():
        log = _quiet
    if cfg.train.compile and device.type != "cuda":
        log(f"{cfg.name}: train.compile applies on CUDA only; training eagerly on {device}")
    data = RunData(cfg.data, cfg.seed)
    # model and data first: a mistake in either is reported before the run folder is touched
    # (the dataset's classes build and check every split, except where the options alone say them)
    class_names = data.checked_class_names()
    if cfg.train.validate_every is not None:
        validation_images(cfg, data)
    num_classes = cfg.model.num_classes or len(class_names)
    torch.manual_seed(derived_seed(cfg.seed, "init"))
    model = create_model(cfg.model.name, num_classes, cfg.model.weights, **cfg.model.options)
    spec = spec_for(model)
    params = prunable_from_config(model, cfg.prune)
    source = control_source(cfg)
    dense = dense_source(cfg, num_classes)
    first_masks = initial_masks(cfg, params, list(spec.prunable(model)))
    with contextlib.ExitStack() as stack:
        writer, done = None, []

        def open_pool() -> int:  # rank 0: lock, check the config, find the complete levels
            nonlocal writer, done
            writer = stack.enter_context(
                PoolWriter(cfg.run_dir, cfg, num_classes, class_names, log,
                           ignore_unknown_options, dense).open(force=force))
            done = writer.completed_levels()
            if writer.complete:
                writer.clean()
                return -1
            return len(done)

        n_done = distributed.share_from_main(open_pool)
        if n_done < 0:
            log(f"{cfg.name}: pool complete, every level verified: nothing to do")
            return RunFolder(cfg.run_dir)
        loaders = _Loaders(cfg, data, device, num_classes)
        if loaders.input_path[1] is not None:  # a dataset with the choice (data.decode)
            log(f"{cfg.name}: images decoded on the {loaders.input_path[0].upper()} ({loaders.input_path[1]})")
        if not distributed.is_main():
            done = _levels_seen_by_this_rank(cfg.run_dir, n_done)
        masks = first_masks
        if done:
            load_state_dict_strict(model, done[-1].state_dict(), "the last level")
            masks = {n: m.bool() for n, m in done[-1].load_masks().items()}
            log(f"{cfg.name}: resuming after level {done[-1].index} ({len(done)} complete)")
        model.to(device)
        level = len(done)
        while True:
            if level > 0:
                if source is not None:
                    new_masks = _control_masks(cfg, source, masks, level)
                else:
                    new_masks = _next_masks(cfg, params, masks, level) if distributed.is_main() else masks
                new_masks = distributed.broadcast_tensors(new_masks)
                distributed.verify_identical(f"pruning masks of level {level}", new_masks)
                reason = (_stop_reason(cfg, level, masks, new_masks, list(spec.prunable(model)))
                          if source is None
                          else _control_stop(source, level))
                if reason is not None:
                    if writer is not None:
                        writer.finish(reason)
                    log(f"{cfg.name}: pool complete ({reason})")
                    break
                masks = new_masks
                if cfg.prune.retrain == "rewind":
                    rewind = RunFolder(cfg.run_dir).level(0).tensors(REWIND_FILE)
                    load_state_dict_strict(model, rewind, "the rewind checkpoint")
                    if cfg.prune.rewind_buffers == "reset":
                        _initial_buffers(cfg, model, num_classes)
                    model.to(device)
                if cfg.prune.control == "random_reinit":
                    _reinitialise(cfg, model, num_classes, level)
            if level == 0 and dense is not None:
                _copy_dense(cfg, writer, model, dense, log)
            else:
                _build_level(cfg, writer, model, spec, params, masks, loaders, level, device, log)
            level += 1
    distributed.barrier("rank 0 finishing the pool")
    return RunFolder(cfg.run_dir)


# ---- controls (OpenLTH, SiftingFeatures): a pool derived from another, level by level -------------
def control_source(cfg) -> RunFolder | None:
    """The complete source pool of a control config (None for an ordinary run), checked to be built
    by the same settings but ``prune.control``."""
    if cfg.prune.control is None:
        return None
    from prunelens.config import RunConfig, validate_section

    where = _source_dir(cfg, cfg.prune.control_source)
    source = RunFolder(where)
    raw = cfg.model_dump(mode="json")
    raw["prune"].update(control=None, control_source=None)
    expected = validate_section(RunConfig, raw, f"{cfg.name} without its control").identity_hash()
    if source.identity_hash != expected:
        raise ConfigError(f"prune.control_source: the pool at {where} was built by other settings "
                          f"(identity {source.identity_hash}, this config without prune.control: "
                          f"{expected}); a control must equal its source in every setting but "
                          "prune.control and its name")
    if not source.complete:
        raise ConfigError(f"prune.control_source: the pool at {where} is incomplete; finish it first "
                          f"(`prunelens prune` its config)")
    return source


def control_config(cfg, kind: str):
    """The config of the ``kind`` control of ``cfg``'s pool: ``cfg`` named ``<name>-<kind>`` with
    ``prune.control`` set and ``prune.control_source`` naming ``cfg``'s run."""
    from prunelens.config import RunConfig, validate_section

    raw = cfg.model_dump(mode="json")
    raw["name"] = f"{cfg.name}-{kind.replace('_', '-')}"
    raw["prune"].update(control=kind, control_source=cfg.name)
    return validate_section(RunConfig, raw, f"{raw['name']} config")


def _control_masks(cfg, source: RunFolder, masks, level: int) -> dict[str, torch.Tensor]:
    """The masks of a control's level: the source's (random_reinit) or random ones with each
    layer's count of the source's, nested in the previous level's (random_mask)."""
    if level > source.levels[-1].index:
        return masks
    reference = {n: m.bool() for n, m in source.level(level).load_masks().items()}
    if cfg.prune.control == "random_reinit":
        return reference
    generator = torch.Generator().manual_seed(derived_seed(cfg.seed, "control-mask", level))
    return random_masks_like(reference, masks, generator)


def _control_stop(source: RunFolder, level: int) -> str | None:
    if level > source.levels[-1].index:
        return f"control of {source.name}: every level of the source has its counterpart"
    return None


def _source_dir(cfg, value: str) -> Path:
    """A source pool's run folder: ``value``, a plain name meaning a run in ``output_dir``."""
    where = Path(value)
    return Path(cfg.output_dir) / where if where.parent == Path(".") else where


# ---- a dense level 0 copied from another pool (compare-schedules' one-shot pools) ----------------
#: prune settings that only decide the levels after the dense one (retrain and rewind_step also
#: decide level 0's rewind checkpoint: compared when this pool rewinds)
AFTER_DENSE_KEYS = ("scope", "rate", "max_sparsity", "rounds", "schedule", "retrain", "epochs",
                    "rewind_step", "finetune_lr", "min_alive_units", "target", "rewind_replay",
                    "rewind_buffers", "stop_when", "stop_layers", "control", "control_source",
                    "dense_source")


def dense_source(cfg, num_classes: int) -> Level | None:
    """Level 0 of the pool at ``prune.dense_source`` (None when unset), verified with its files, and
    checked to be what ``cfg`` trains as its level 0: every setting equal but those that only
    decide later levels (:data:`AFTER_DENSE_KEYS`)."""
    if cfg.prune.dense_source is None:
        return None
    where = _source_dir(cfg, cfg.prune.dense_source)
    if where.expanduser().resolve() == Path(cfg.run_dir).expanduser().resolve():
        raise ConfigError(f"prune.dense_source names this run's own folder {where}: name the pool "
                          "whose level 0 this one starts from")
    source = RunFolder(where)
    ignored = set(AFTER_DENSE_KEYS) - ({"retrain", "rewind_step"} if cfg.prune.retrain == "rewind" else set())

    def dense_identity(config) -> dict:
        d = config.identity()
        d["prune"] = {k: v for k, v in d["prune"].items() if k not in ignored}
        return d

    difference = identity_difference(dense_identity(source.config), dense_identity(cfg))
    if source.num_classes != num_classes:
        difference.append(f"num_classes: {source.num_classes} in the run folder vs {num_classes} now")
    if difference:
        raise ConfigError(f"prune.dense_source: the pool at {where} trained its level 0 with other "
                          f"settings ({'; '.join(difference)}); the source must equal this config in "
                          "every setting that decides the dense level")
    listed = {e["index"]: e["level_json_sha256"] for e in source.info["levels"]}
    if 0 not in listed:
        raise ConfigError(f"prune.dense_source: the pool at {where} has no level 0 yet; build it "
                          "first (`prunelens prune` its config)")
    return source.read_level(0, None, listed[0], files=True)


def _copy_dense(cfg, writer: PoolWriter | None, model, dense: Level, log) -> None:
    """Level 0 from ``dense`` (every rank loads its weights; rank 0 writes the copy): no training."""
    load_state_dict_strict(model, dense.state_dict(), f"level 0 of {dense.run.name}")
    if writer is None:
        return
    level = writer.copy_dense(dense)
    log(f"{cfg.name}: level  0  copied from {dense.run.run_dir} (model sha256 "
        f"{level.model_sha256[:12]}…): no dense training")


def _initial_buffers(cfg, model, num_classes: int) -> None:
    """The buffers (batch-norm running statistics) of level 0's initial model, in place of the
    rewound ones (``prune.rewind_buffers: reset``; SiftingFeatures src/IMP.py:136-144)."""
    torch.manual_seed(derived_seed(cfg.seed, "init"))
    initial = create_model(cfg.model.name, num_classes, cfg.model.weights, **cfg.model.options)
    fresh = dict(initial.named_buffers())
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(fresh[name])


def _reinitialise(cfg, model, num_classes: int, level: int) -> None:
    """Fresh initial weights for a random_reinit level (seeded by the level)."""
    torch.manual_seed(derived_seed(cfg.seed, "control-init", level))
    fresh = create_model(cfg.model.name, num_classes, None, **cfg.model.options)
    load_state_dict_strict(model, fresh.state_dict(), "fresh initial weights")


def _quiet(*_args, **_kw) -> None:
    pass


def _levels_seen_by_this_rank(run_dir, n_done: int) -> list:
    """The first ``n_done`` levels as read by a rank other than 0 (which wrote them)."""
    try:
        levels = RunFolder(run_dir).levels[:n_done] if n_done else []
    except PoolError:
        levels = []
    if len(levels) != n_done:
        raise distributed.DistributedError(
            f"{distributed.where()} cannot read the run folder {run_dir} that rank 0 writes: under "
            "torchrun across machines, output_dir must be on a filesystem every node sees")
    return levels


def _build_level(cfg, writer: PoolWriter | None, model, spec, params, masks, loaders: _Loaders,
                 level: int, device, log) -> None:
    """Train and measure one level; ``writer`` is None on the ranks that do not write."""
    plan = _level_plan(cfg, level, loaders.steps_per_epoch)
    partial = Layout(cfg.run_dir).partial(level)
    if writer is not None:
        partial.mkdir(exist_ok=True)
    masker = Masker(params, masks) if level > 0 or cfg.prune.init_sparsity > 0 else None
    on_step = None
    rewind_path = partial / REWIND_FILE
    if level == 0 and cfg.prune.retrain == "rewind":
        total = plan.epochs * loaders.steps_per_epoch
        if total == 0:
            raise ConfigError("prune.retrain: rewind replays the dense training, and train.epochs is 0 "
                              "(level 0 is the given weights): use retrain lrr or finetune")
        if cfg.prune.rewind_step >= total:
            raise ConfigError(f"prune.rewind_step {cfg.prune.rewind_step} is past the end of dense "
                              f"training ({total} steps)")

        def on_step(step, m):
            if step == cfg.prune.rewind_step and writer is not None and not rewind_path.is_file():
                atomic_save_tensors(rewind_path, m.state_dict())
    validation = None
    if loaders.validation is not None:
        validation = PeriodicValidation(loaders.validation, loaders.validation_images, spec, device,
                                        cfg.train, Layout(cfg.run_dir).validation_curve(level))
        on_step = _both(on_step, validation)
    stats = train_level(model, spec, loaders.for_epoch(level), plan, cfg.train, device,
                        (cfg.seed, "level", level), Checkpoint(*Layout(cfg.run_dir).train_state(level)), masker, on_step,
                        label=f"{cfg.name} level {level}", log=log)
    if writer is not None and level == 0 and cfg.prune.retrain == "rewind" and not rewind_path.is_file():
        atomic_save_tensors(rewind_path, model.state_dict())  # rewind_step 0 with 0 epochs
    metrics = {"train_acc": stats.get("train_acc", math.nan), "train_loss": stats.get("train_loss", math.nan)}
    t_eval = time.perf_counter()
    for split, loader in loaders.eval.items():
        with distributed.comm_failures(f"evaluating {cfg.name} level {level} on {split}"):
            result = evaluate_model(model, loader, spec, device, cfg.train.amp, cfg.train.channels_last,
                                    sharded=True)
        metrics[f"{split}_acc"], metrics[f"{split}_loss"] = result["acc"], result["loss"]
    overall, per_layer = mask_sparsity(masks)
    info = {"sparsity": overall, "layer_sparsity": per_layer, "metrics": metrics,
            "epochs": plan.epochs, "steps": plan.epochs * loaders.steps_per_epoch - plan.start_step,
            "train_time_s": stats["elapsed_s"],
            "wall_time_s": stats["elapsed_s"] + time.perf_counter() - t_eval}
    if validation is not None:
        with distributed.comm_failures(f"validating {cfg.name} level {level}"):
            info["periodic_validation"] = validation.finish(
                plan.epochs * loaders.steps_per_epoch, model, first_step=plan.start_step)
    if writer is None:
        return
    extra = {REWIND_FILE: rewind_path} if rewind_path.is_file() else None
    writer.write_level(level, model, masks, info, extra)
    periodic = (f"  min {cfg.train.validate_split} err {info['periodic_validation']['min_error']:.3f}"
                if validation is not None else "")
    log(f"{cfg.name}: level {level:2d}  sparsity {overall:6.1%}  val acc {metrics.get('val_acc', math.nan):.3f}"
        f"  test acc {metrics.get('test_acc', math.nan):.3f}{periodic}  ({info['wall_time_s']:.0f} s)")


def _both(first, second):
    """One ``on_step`` hook calling ``first`` (may be None) then ``second``."""
    if first is None:
        return second

    def on_step(step, model):
        first(step, model)
        second(step, model)
    return on_step
