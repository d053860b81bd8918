"""Evaluation: the driver that runs suites over the levels of a pool into the results store.

The suites themselves and what they declare are defined by the suite contract
(:mod:`prunelens.suite`). The driver (:func:`evaluate_run`) handles levels, device, resume (a
(suite, level) whose results file is intact and was made with the same options from the same level
files, with the level artifacts it needs intact, is skipped; figures across levels are drawn again
when what they were drawn from changed), writing and the summary; see ``docs/architecture.md`` for the data flow.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prunelens import distributed
from prunelens.config import DATA_RUNTIME_KEYS, EvaluateConfig, apply_overrides, validate_section
from prunelens.data.provider import RunData
from prunelens.errors import ConfigError, PoolError
from prunelens.io import atomic_write_bytes, atomic_write_json, sha256_file
from prunelens.models import spec_of
from prunelens.pruning.train import resolve_device
from prunelens.results import load_results, read_sidecar, write_level
from prunelens.runfolder import Layout, RunFolder, RunLock
from prunelens.stats import summarize
from prunelens.suite import (LevelContext, RunContext, Suite, SuiteOptions, available_suites,
                             check_evaluate, check_suite_data, get_suite, suite_options,
                             without_unknown_options)


def _same_options(suite: type[Suite], meta: dict, options: SuiteOptions, spec) -> bool:
    """Whether a result was computed with ``options``: the options its sidecar records, read with
    this version (an option added since takes its default), equal them where they act on the
    run's architecture (:meth:`Suite.options_for`)."""
    stored = suite.options_from(meta.get("options"))
    return stored is not None and suite.options_for(stored, spec) == suite.options_for(options, spec)


def _inputs(config) -> dict:
    """What a result depends on besides the level and the suite's options: the data it read (its
    options and where it lies) and the numeric settings of the passes."""
    data = config.resolved()["data"]
    data.pop("decode", None)  # CPU or GPU decoding: the same images, within libjpeg vs nvJPEG's IDCT
    if data.get("root"):
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    return {"data": data, "amp": config.evaluate.amp, "channels_last": config.evaluate.channels_last}


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
                 overrides: list[str] | None = None, force: bool = False, log=print,
                 evaluate: EvaluateConfig | None = None) -> None:
    """Evaluate the levels of a pool with the given suites (default: every suite that applies).

    ``evaluate`` replaces the evaluate section of the config pool.json records (that section is no
    part of a run's identity, :meth:`RunConfig.identity`): ``prunelens run`` and
    ``compare-schedules`` evaluate with the config they were given, data-folder flags included,
    also when the pool was built before. ``overrides`` are ``--set`` style
    ``evaluate.<…>=value`` strings applied after it.
    A (suite, level) whose results are intact and were made with the same options from the same
    level files is skipped unless ``force``.

    Under torchrun (call it on every rank) rank 0 takes the run-folder lock and lists the
    (suite, level) pairs to compute; pair k goes to rank k mod world, which alone writes its
    results files. After a barrier rank 0 runs every suite's ``after_levels`` and writes the
    summary, once.
    """
    pool = RunFolder(run_dir)
    run_dir = pool.run_dir
    config = without_unknown_options(pool.config, f"{pool.layout.pool_json} config")
    if evaluate is not None:
        config = config.model_copy(update={"evaluate": evaluate})
    if overrides:
        runtime = tuple(f"data.{key}=" for key in DATA_RUNTIME_KEYS)
        bad = [o for o in overrides if not o.startswith(("evaluate.", *runtime))]
        if bad:
            raise ConfigError(f"evaluate takes only evaluate.*, {' and '.join(r[:-1] for r in runtime)} "
                              f"overrides (the pool is fixed), got {bad}")
        config = validate_section(type(config), apply_overrides(config.model_dump(mode="json"), overrides))
    check_evaluate(config)
    names, unavailable = _resolve_suites(config, suites)
    wanted = pool.levels if levels is None else [pool.level(i) for i in levels]
    if not wanted:
        raise PoolError(f"{run_dir} has no complete level to evaluate yet: run `prunelens prune` "
                        "on its config first" if levels is None else "--levels selects no level")
    device = distributed.init(resolve_device(config.evaluate.device))
    if distributed.active():
        log = _rank_log(log, distributed.rank())
    workers = config.evaluate.num_workers
    data = RunData(config.data, config.seed, config.train.num_workers if workers is None else workers,
                   pin_memory=device.type == "cuda", device=device, log=log)
    spec = spec_of(config.model.name, config.model.options)
    instances = {name: get_suite(name)() for name in names}  # one per suite: they may cache data
    with contextlib.ExitStack() as stack:
        def plan() -> dict:  # rank 0: list the work; lock the run folder only if there is some
            args = (run_dir, pool, config, instances, wanted, spec, data, device, force)
            pending = _plan_work(*args, write=False)
            if pending["idle"] and summary_is_current(run_dir, config.evaluate.n_boot):
                log(f"{pool.name}: every result is up to date")
                return {"up_to_date": True}
            # a missing VOC / model-vs-human folder is named before any level is computed
            with_work = {name for name, _ in pending["work"]}
            check_suite_data(config, [name for name in names if name in with_work])
            stack.enter_context(RunLock(run_dir))
            for name, reason in unavailable:
                log(f"{pool.name}: suite {name} skipped: {reason}")
            return _plan_work(*args, write=True, log=log)

        todo = distributed.share_from_main(plan)
        if todo.get("up_to_date"):
            return
        if todo["work"]:
            data.check_against(pool.class_names, f"run {pool.name}")
        mine = [(name, index) for k, (name, index) in enumerate(todo["work"])
                if k % distributed.world_size() == distributed.rank()]
        for name, index in tqdm(mine, desc=f"{pool.name}: evaluate", unit="level", leave=False,
                                disable=None if distributed.is_main() else True):
            ctx = _run_context(run_dir, pool, config, name, spec, data, device)
            _evaluate_level(ctx, instances[name], pool.level(index), log)
        distributed.barrier("every rank finishing its share of the levels", EVALUATE_BARRIER_TIMEOUT_S)
        if distributed.is_main():
            for name in todo["applicable"]:
                _after_levels(_run_context(run_dir, pool, config, name, spec, data, device), instances[name])
            write_summary(run_dir, config.evaluate.n_boot)
    distributed.barrier("rank 0 writing the summary")


def _rank_log(log, rank: int):
    return lambda message: log(f"[rank {rank}] {message}")


def _run_context(run_dir: Path, pool: RunFolder, config, name: str, spec, data, device) -> RunContext:
    return RunContext(pool, config, suite_options(config, name), device, data, spec,
                      Layout(run_dir).suite(name), config.evaluate.batch_size,
                      amp=config.evaluate.amp, channels_last=config.evaluate.channels_last)


def _plan_work(run_dir: Path, pool, config, instances: dict[str, Suite], wanted: list, spec, data,
               device, force: bool, write: bool, log=print) -> dict:
    """The suites that apply (``skipped.json`` for the others) and the (suite, level) pairs whose
    results are missing, stale (other options or level files) or forced. Without ``write`` nothing
    is written; ``idle`` then says whether there is nothing to do at all."""
    applicable, work, idle = [], [], True
    for name, suite in instances.items():
        run_ctx = _run_context(run_dir, pool, config, name, spec, data, device)
        skipped = Layout(run_dir).skipped(name)
        reason = suite.skip_reason(run_ctx)
        if reason is not None:
            idle &= _json_equals(skipped, {"suite": name, "reason": reason})
            if write:
                atomic_write_json(skipped, {"suite": name, "reason": reason})
                log(f"{pool.name}: suite {name} does not apply: {reason}")
            continue
        idle &= not skipped.exists()
        partial = Layout(run_dir).not_applicable(name)
        parts = suite.not_applicable(run_ctx)
        idle &= _json_equals(partial, parts) if parts else not partial.exists()
        if write:
            skipped.unlink(missing_ok=True)
            if parts:
                atomic_write_json(partial, parts)
            else:
                partial.unlink(missing_ok=True)
        applicable.append(name)
        inputs = _inputs(config)
        needed = type(suite).level_artifacts_needed(run_ctx.options)
        for level in wanted:
            meta = read_sidecar(run_dir, name, level.index)
            if (not force and meta is not None and _same_options(type(suite), meta, run_ctx.options, run_ctx.spec)
                    and meta.get("level_sha256") == level.model_sha256 and meta.get("inputs") == inputs
                    and _artifacts_intact(run_dir, name, level.index, needed, meta)):
                continue
            work.append([name, level.index])
        idle &= _drawing_current(run_dir, type(suite), run_ctx.options)
    return {"applicable": applicable, "work": work, "idle": idle and not work}


def _artifact_hashes(run_dir: Path, name: str, level: int, needed: tuple[str, ...]) -> dict[str, str | None]:
    """sha256 of each file ``needed`` in the level's artifacts folder (None: there is none)."""
    folder = Layout(run_dir).level_artifacts(name, level)
    return {file: sha256_file(folder / file) if (folder / file).is_file() else None for file in needed}


def _artifacts_intact(run_dir: Path, name: str, level: int, needed: tuple[str, ...], meta: dict) -> bool:
    """Whether the level artifacts its results need (:meth:`Suite.level_artifacts_needed`) are
    there, as they were written with the results: a result without them (computed by a version
    that did not save them, or with an option that did not) or with one changed since is stale."""
    if not needed:
        return True
    recorded = meta.get("artifacts")
    return isinstance(recorded, dict) and all(
        sha is not None and recorded.get(file) == sha
        for file, sha in _artifact_hashes(run_dir, name, level, needed).items())


def _drawing_state(run_dir: Path, name: str, options: SuiteOptions) -> dict:
    """What a suite's figures across levels are drawn from: all its options (also those that
    only change the drawing) and its results with the artifacts each level saved."""
    layout, results = Layout(run_dir), {}
    for _, level, _ in layout.result_files(name):
        meta = read_sidecar(run_dir, name, level) or {}
        results[str(level)] = [meta.get("sha256"), meta.get("artifacts")]
    return {"options": json.loads(options.model_dump_json()), "results": results}


def _drawing_current(run_dir: Path, suite: type[Suite], options: SuiteOptions) -> bool:
    """Whether the figures ``suite`` declares (:attr:`Suite.drawn_figures`) were drawn from its
    present results with ``options``, and each is there or was recorded as not drawable."""
    if not suite.drawn_figures:
        return True
    try:
        drawn = json.loads(Layout(run_dir).drawn(suite.name).read_text())
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(drawn, dict) or drawn.get("state") != _drawing_state(run_dir, suite.name, options):
        return False
    not_drawn = drawn.get("not_drawn") if isinstance(drawn.get("not_drawn"), dict) else {}
    folder = Layout(run_dir).suite(suite.name)
    return all(figure.name in not_drawn or all(p.is_file() for p in figure.files(folder))
               for figure in suite.drawn_figures)


def _after_levels(run_ctx: RunContext, suite: Suite) -> None:
    """Run the suite's ``after_levels`` and, for a suite that declares drawn figures, record what
    they were drawn from and why any was not (``results/<suite>/drawn.json``, read by the report)."""
    not_drawn = suite.after_levels(run_ctx) or {}
    if not suite.drawn_figures:
        return
    folder = run_ctx.artifacts
    for figure in suite.drawn_figures:
        if figure.name not in not_drawn and not all(p.is_file() for p in figure.files(folder)):
            not_drawn[figure.name] = (f"the {suite.name} suite drew no such figure; re-run "
                                      f"`prunelens evaluate {run_ctx.run_dir} --suite {suite.name}`")
    atomic_write_json(Layout(run_ctx.run_dir).drawn(suite.name), {
        "state": _drawing_state(run_ctx.run_dir, suite.name, run_ctx.options), "not_drawn": not_drawn})


def _json_equals(path: Path, expected: dict) -> bool:
    try:
        return json.loads(path.read_text()) == expected
    except (OSError, ValueError, RecursionError):
        return False


def _evaluate_level(run_ctx: RunContext, suite: Suite, level, log) -> None:
    """Run one suite on one level and write its results file (+ sidecar)."""
    t0 = time.perf_counter()
    run_dir, name = run_ctx.run_dir, suite.name
    model = level.load_model(run_ctx.device)
    ctx = LevelContext(**vars(run_ctx), level=level, model=model, masks=level.load_masks(),
                       level_artifacts=Layout(run_dir).level_artifacts(name, level.index))
    records = list(suite.evaluate_level(ctx))
    seconds = time.perf_counter() - t0
    needed = type(suite).level_artifacts_needed(run_ctx.options)
    artifacts = _artifact_hashes(run_dir, name, level.index, needed)
    missing = [file for file, sha in artifacts.items() if sha is None]
    if missing:  # a suite that declares a file and does not write it would be recomputed forever
        raise RuntimeError(f"suite {name} declares level artifacts {missing} it did not write at "
                           f"level {level.index}")
    write_level(run_dir, name, level.index, records, {
        "options": json.loads(run_ctx.options.model_dump_json()), "inputs": _inputs(run_ctx.config),
        "level_sha256": level.model_sha256, "wall_time_s": seconds, **({"artifacts": artifacts} if needed else {})})
    log(f"{run_ctx.pool.name}: {name:<16} level {level.index:2d}  {len(records):6d} records  ({seconds:.1f} s)")


def write_summary(run_dir: str | Path, n_boot: int = 1000) -> Path:
    """``RUN_DIR/results/summary.csv``: per-level mean, 95 % bootstrap CI, n, n_nan, computed as
    the report computes its own (:func:`prunelens.stats.summarize`); beside it ``summary.json``
    names the results files it covers, so an up-to-date summary is not redone."""
    path = Layout(run_dir).summary_csv
    covered = _results_covered(run_dir)
    atomic_write_bytes(path, summarize(load_results(run_dir), n_boot=n_boot).to_csv(index=False).encode())
    atomic_write_json(Layout(run_dir).summary_json, {"n_boot": n_boot, "covers": covered})
    return path


def _results_covered(run_dir: str | Path) -> dict[str, str]:
    """``<suite>/level_XX.csv`` → sha256 of every results file with a readable sidecar."""
    layout, out = Layout(run_dir), {}
    for suite, level, csv in layout.result_files():
        try:
            out[f"{suite}/{csv.name}"] = str(json.loads(layout.sidecar(suite, level).read_text())["sha256"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            out[f"{suite}/{csv.name}"] = "unreadable"
    return out


def summary_is_current(run_dir: str | Path, n_boot: int) -> bool:
    """Whether summary.csv was written from the results files there are now, with ``n_boot``."""
    path = Layout(run_dir).summary_csv
    return path.is_file() and _json_equals(Layout(run_dir).summary_json,
                                           {"n_boot": n_boot, "covers": _results_covered(run_dir)})


class _NoPool:
    """What a suite's ``skip_reason`` may read of a pool when there is none yet (``prunelens
    models``): the number of classes and a run folder that is never written."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.run_dir = Path("runs") / "run"


def suites_for_model(name: str, options: dict | None = None) -> dict[str, str | None]:
    """Suite (and ``suite.part`` for parts such as an attribution method) → None where it applies
    to model ``name`` on the default dataset, else why not: the suites' own ``skip_reason`` and
    ``not_applicable``, asked as ``evaluate`` asks them."""
    from prunelens.config import RunConfig
    config = RunConfig.model_validate({"model": {"name": name, **(options or {})}})
    data = RunData(config.data, config.seed)
    spec = spec_of(name, options)
    pool = _NoPool(data.num_classes)
    out: dict[str, str | None] = {}
    for suite_name in default_suites():
        suite = get_suite(suite_name)()
        ctx = RunContext(pool, config, suite_options(config, suite_name), torch.device("cpu"), data,
                         spec, Layout(pool.run_dir).suite(suite_name), config.evaluate.batch_size)
        out[suite_name] = suite.skip_reason(ctx)
        if out[suite_name] is None:
            for part, reason in suite.not_applicable(ctx).items():
                out[f"{suite_name}.{part}"] = reason
    return out
