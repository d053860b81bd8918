"""Evaluation: suites × levels → the results store.

A *suite* is one evaluation axis. It receives a :class:`LevelContext` (the level's model on its
device, the spec, the run's data, its own validated options, a folder for artifacts) and yields
:class:`~prunelens.results.Record` rows. The driver (:func:`evaluate_run`) handles levels, device,
resume (a (suite, level) whose results file is intact and was made with the same options and the
same level files is skipped) and writing.

Writing a suite::

    class Options(SuiteOptions):
        n_images: int = 64

    @register_suite
    class MySuite(Suite):
        name = "mysuite"
        Options = Options

        def skip_reason(self, ctx: RunContext) -> str | None:   # optional
            return None if ctx.spec.has_spatial_features else "needs a spatial feature map"

        def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
            ...

        def after_levels(self, ctx: RunContext) -> None:        # optional: figures across levels
            ...
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from prunelens.errors import ConfigError, PoolError
from prunelens.results import Record

# suite name -> module that registers it (imported on first use)
SUITE_MODULES = {
    "accuracy": "prunelens.evaluate",
    "interpretability": "prunelens.explain.suite",
    "discovery": "prunelens.discovery.suite",
    "alignment": "prunelens.alignment.suite",
    "connectivity": "prunelens.analysis.suites",
    "psp": "prunelens.analysis.suites",
    "sharpness": "prunelens.analysis.suites",
    "transfer": "prunelens.transfer.suite",
}


class SuiteOptions(BaseModel):
    """Base of every suite's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class RunContext:
    """What a suite sees of a run."""

    run_dir: Path
    pool: object                 # prunelens.pool.Pool
    config: object               # prunelens.config.RunConfig of the run
    options: SuiteOptions        # this suite's validated options
    device: torch.device
    data: object                 # prunelens.data.provider.RunData: the run's datasets, cached
    spec: object                 # prunelens.models.ArchSpec of the run's architecture
    artifacts: Path              # RUN_DIR/results/<suite>/ : for figures across levels
    batch_size: int = 64
    amp: bool = False            # bf16 autocast for the suite's model passes (evaluate.amp)
    channels_last: bool = False  # channels-last model and images (evaluate.channels_last)


@dataclass
class LevelContext(RunContext):
    """A run context plus one level: its model (eval mode, on ``device``) and masks."""

    level: object = None          # prunelens.pool.Level
    model: nn.Module = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    level_artifacts: Path = None  # RUN_DIR/results/<suite>/level_XX/


class Suite:
    name: ClassVar[str]
    Options: ClassVar[type[SuiteOptions]] = SuiteOptions

    def skip_reason(self, ctx: RunContext) -> str | None:
        """Why this suite does not apply to this run (None: it applies)."""
        return None

    def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
        raise NotImplementedError

    def after_levels(self, ctx: RunContext) -> None:
        """Called once all levels are evaluated (figures across levels)."""


_REGISTRY: dict[str, type[Suite]] = {}


def register_suite(cls: type[Suite]) -> type[Suite]:
    _REGISTRY[cls.name] = cls
    return cls


def available_suites() -> list[str]:
    return list(SUITE_MODULES)


def get_suite(name: str) -> type[Suite]:
    if name not in _REGISTRY:
        module = SUITE_MODULES.get(name)
        if module is None:
            raise ConfigError(f"unknown suite '{name}'; available: {', '.join(available_suites())}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not (module + ".").startswith(f"{exc.name}."):  # a missing dependency, not the module
                raise
            raise ConfigError(f"suite '{name}' is not available in this version of prunelens") from None
    return _REGISTRY[name]


# ---- the built-in accuracy suite ---------------------------------------------------------------------
class AccuracyOptions(SuiteOptions):
    split: str | None = None  # default: the dataset's test split (ImageNet: val)


@register_suite
class AccuracySuite(Suite):
    """Top-1 accuracy on a split of the run's dataset, one 0/1 record per image."""

    name = "accuracy"
    Options = AccuracyOptions

    def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
        from prunelens.pruning.train import evaluate_model

        split = ctx.options.split or ctx.data.eval_split
        dataset = ctx.data.split(split)
        loader = torch.utils.data.DataLoader(dataset, batch_size=ctx.batch_size)
        correct = evaluate_model(ctx.model, loader, ctx.spec, ctx.device)["correct"]
        ids = getattr(dataset, "item_ids", None) or [str(i) for i in range(len(dataset))]
        for item, c in zip(ids, correct.tolist()):
            yield Record("accuracy", "accuracy", float(c), dataset=split, item=item)


# ---- the driver ----------------------------------------------------------------------------------------
def _options_hash(options: SuiteOptions) -> str:
    import hashlib
    import json
    blob = json.dumps(options.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_suites() -> list[str]:
    return available_suites()


def _resolve_suites(config, suites: list[str] | None) -> tuple[list[str], list[tuple[str, str]]]:
    """Suites to run and (suite, reason) of those unavailable when the defaults were asked for."""
    explicit = suites is not None or config.evaluate.suites is not None
    names = suites if suites is not None else (config.evaluate.suites or default_suites())
    runnable, unavailable = [], []
    for name in names:
        try:
            get_suite(name)
        except ConfigError as exc:
            if explicit:
                raise
            unavailable.append((name, str(exc)))
            continue
        runnable.append(name)
    return runnable, unavailable


# a rank done with its share of the levels waits this long for the slowest rank at the end
# (a rank that dies is noticed at once; this only bounds a silent stall)
EVALUATE_BARRIER_TIMEOUT_S = 7 * 24 * 3600.0


def evaluate_run(run_dir: str | Path, suites: list[str] | None = None, levels: list[int] | None = None,
                 overrides: list[str] | None = None, force: bool = False, log=print) -> None:
    """Evaluate the levels of a pool with the given suites (default: every suite that applies).

    ``overrides`` are ``--set`` style ``evaluate.<…>=value`` strings applied to the run's config.
    A (suite, level) whose results are intact and were made with the same options from the same
    level files is skipped unless ``force``.

    Under torchrun (call it on every rank) rank 0 takes the run-folder lock and lists the
    (suite, level) pairs to compute; pair k goes to rank k mod world, which alone writes its
    results files. After a barrier rank 0 runs every suite's ``after_levels`` and writes the
    summary, once.
    """
    from prunelens import distributed
    from prunelens.config import apply_overrides, validate_section
    from prunelens.data.provider import RunData
    from prunelens.models import spec_for
    from prunelens.pool import Pool, RunLock
    from prunelens.pruning.train import resolve_device

    pool = Pool(run_dir)
    run_dir = Path(run_dir)
    config = pool.config
    if overrides:
        bad = [o for o in overrides if not o.startswith(("evaluate.", "data.root="))]
        if bad:
            raise ConfigError(f"evaluate takes only evaluate.* and data.root overrides (the pool is "
                              f"fixed), got {bad}")
        config = validate_section(type(config), apply_overrides(config.model_dump(mode="json"), overrides))
    names, unavailable = _resolve_suites(config, suites)
    wanted = pool.levels if levels is None else [pool.level(i) for i in levels]
    if not wanted:
        raise PoolError(f"{run_dir} has no complete level to evaluate yet: run `prunelens prune` "
                        "on its config first" if levels is None else "--levels selects no level")
    device = distributed.init(resolve_device(config.evaluate.device))
    if distributed.active():
        log = _rank_log(log, distributed.rank())
    data = RunData(config.data, config.seed)
    spec = spec_for(wanted[0].load_model("cpu")) if wanted else None
    instances = {name: get_suite(name)() for name in names}  # one per suite: they may cache data
    with contextlib.ExitStack() as stack:
        def plan() -> dict:  # rank 0: lock the run folder, list the suites that apply and the work
            stack.enter_context(RunLock(run_dir))
            for name, reason in unavailable:
                log(f"{pool.name}: suite {name} skipped: {reason}")
            return _plan_work(run_dir, pool, config, instances, wanted, spec, data, device, force, log)

        todo = distributed.share_from_main(plan)
        for k, (name, index) in enumerate(todo["work"]):
            if k % distributed.world_size() == distributed.rank():
                ctx = _run_context(run_dir, pool, config, name, spec, data, device)
                _evaluate_level(ctx, instances[name], pool.level(index), log)
        distributed.barrier("every rank finishing its share of the levels", EVALUATE_BARRIER_TIMEOUT_S)
        if distributed.is_main():
            for name in todo["applicable"]:
                instances[name].after_levels(_run_context(run_dir, pool, config, name, spec, data, device))
            write_summary(run_dir, config.evaluate.n_boot)
    distributed.barrier("rank 0 writing the summary")


def _rank_log(log, rank: int):
    return lambda message: log(f"[rank {rank}] {message}")


def _run_context(run_dir: Path, pool, config, name: str, spec, data, device) -> RunContext:
    from prunelens.results import results_dir
    return RunContext(run_dir, pool, config, config.evaluate.suite_options(name), device, data, spec,
                      results_dir(run_dir) / name, config.evaluate.batch_size,
                      amp=config.evaluate.amp, channels_last=config.evaluate.channels_last)


def _plan_work(run_dir: Path, pool, config, instances: dict[str, Suite], wanted: list, spec, data,
               device, force: bool, log) -> dict:
    """The suites that apply (``skipped.json`` for the others) and the (suite, level) pairs whose
    results are missing, stale (other options or level files) or forced."""
    from prunelens.io import atomic_write_json
    from prunelens.results import read_sidecar

    applicable, work = [], []
    for name, suite in instances.items():
        run_ctx = _run_context(run_dir, pool, config, name, spec, data, device)
        skipped = run_ctx.artifacts / "skipped.json"
        reason = suite.skip_reason(run_ctx)
        if reason is not None:
            atomic_write_json(skipped, {"suite": name, "reason": reason})
            log(f"{pool.name}: suite {name} does not apply: {reason}")
            continue
        skipped.unlink(missing_ok=True)
        applicable.append(name)
        opt_hash = _options_hash(run_ctx.options)
        for level in wanted:
            meta = read_sidecar(run_dir, name, level.index)
            if (not force and meta is not None and meta.get("options_hash") == opt_hash
                    and meta.get("level_sha256") == level.info["files"]["model.safetensors"]):
                continue
            work.append([name, level.index])
    return {"applicable": applicable, "work": work}


def _evaluate_level(run_ctx: RunContext, suite: Suite, level, log) -> None:
    """Run one suite on one level and write its results file (+ sidecar)."""
    import json
    import time

    from prunelens.results import level_file, write_level

    t0 = time.perf_counter()
    run_dir, name = run_ctx.run_dir, suite.name
    model = level.load_model(run_ctx.device)
    ctx = LevelContext(**vars(run_ctx), level=level, model=model, masks=level.load_masks(),
                       level_artifacts=level_file(run_dir, name, level.index).with_suffix(""))
    records = list(suite.evaluate_level(ctx))
    seconds = time.perf_counter() - t0
    write_level(run_dir, name, level.index, records, {
        "options_hash": _options_hash(run_ctx.options), "options": json.loads(run_ctx.options.model_dump_json()),
        "level_sha256": level.info["files"]["model.safetensors"], "wall_time_s": seconds})
    log(f"{run_ctx.pool.name}: {name:<16} level {level.index:2d}  {len(records):6d} records  ({seconds:.1f} s)")


def write_summary(run_dir: str | Path, n_boot: int = 1000) -> Path:
    """``RUN_DIR/results/summary.csv``: per-level mean, 95 % bootstrap CI, n, n_nan."""
    from prunelens.io import atomic_write_bytes
    from prunelens.results import load_results, results_dir, summarize

    path = results_dir(run_dir) / "summary.csv"
    atomic_write_bytes(path, summarize(load_results(run_dir), n_boot=n_boot).to_csv(index=False).encode())
    return path
