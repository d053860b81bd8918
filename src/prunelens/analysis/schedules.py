"""One-shot vs gradual pruning as a curve (Tartaglione, Bragagnolo & Grangetto, ICANN 2020, Sec. 4).

:func:`compare_schedules` takes one run config and builds pools of the same model on the same data:

* ``<name>-gradual`` (``prune.schedule: gradual``, as configured): levels 1 … K at sparsities
  s_1 < … < s_K (its stop rule may end it before ``max_sparsity``);
* ``<name>-one-shot-NN`` for every pruned level k of the gradual pool (or the levels asked for;
  NN = k in two digits: ``-one-shot-01``): pruned in one step from the dense level 0 to s_k, then
  retrained once.

**The same dense start.** Only the gradual pool trains a dense model (``train.epochs``). Each
one-shot pool starts from it: its level 0 is a copy of the gradual pool's verified level 0 files
(``prune.dense_source``, :func:`prunelens.pruning.runner.dense_source`), so both schedules prune the
same network, also on a GPU where two trainings differ, and the paired Δ pairs the same dense
model. A one-shot pool whose copy no longer matches the gradual pool's level 0 (the gradual pool
rebuilt) has its levels set aside and is rebuilt from the new one, never mixed.

**The same epoch budget.** To reach s_k the gradual pool retrains k rounds of ``prune.epochs``
(default ``train.epochs``); the one-shot pool at s_k retrains once for k × ``prune.epochs``, the
same total (``pruning/runner.py``, ``level_epochs``: ``rounds: k``), checked before the one-shot
pool trains and again from what it recorded. Under ``retrain: finetune`` both train at
``prune.finetune_lr``; under ``lrr`` the one-shot pool replays the learning-rate schedule once
over its k × epochs, the gradual pool k times. ``retrain: rewind`` has no equal-budget one-shot
counterpart and is refused.

**Checked before any training**: the data folders of the compared suites
(:func:`prunelens.suite.check_suite_data`); every ``levels`` value against the gradual pool before
any one-shot pool is built. The pools are evaluated with the ``evaluate`` section of the config
given (not the one pool.json recorded when a pool was first built).

Each gradual level k ≥ 1 and level 1 of each one-shot pool are evaluated with the suites that
declare themselves part of the comparison (``accuracy``, ``psp``, ``sharpness`` and ``transfer``:
Tartaglione et al.'s measures and the abstract's transfer claim), and the gradual pool's dense
level 0 as the common start. Written to ``OUT``:

``comparison.csv`` — per matched level (first columns: ``gradual_level`` k, ``sparsity_gradual``,
``sparsity_one_shot``, ``retrain_epochs``) and per (suite, metric, method, …): mean and bootstrap CI
under each schedule, Δ = gradual − one-shot with its CI (paired over items when both pools measured
the same items — images, neurons, noise draws of the same seed — unpaired otherwise);
``comparison.json`` — the pools, their sparsities and epoch budgets;
``comparison.png`` — the network-level metrics vs sparsity, one line per schedule.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from prunelens.errors import ConfigError
from prunelens.results import load_results
from prunelens.stats import KEY, difference_ci, mean_ci, paired_differences, seeded_rng
from prunelens.suite import all_suites

SCHEDULES = ("gradual", "one_shot")
#: the columns comparison.csv and the printed table start with: which sparsity a row compares
LEADING_COLUMNS = ("gradual_level", "sparsity_gradual", "sparsity_one_shot", "retrain_epochs")


def compared_suites() -> list[str]:
    """The suites that declare themselves part of the comparison (accuracy, PSP-entropy and
    sharpness: what Tartaglione et al. compare)."""
    return [s.name for s in all_suites() if s.in_schedule_comparison]


def _variant(cfg, name: str, **prune):
    from prunelens.config import RunConfig, validate_section

    raw = cfg.model_dump(mode="json")
    raw["name"] = name
    raw["prune"].update(prune)
    return validate_section(RunConfig, raw, f"{name} config")


def gradual_config(cfg):
    """The gradual pool's config: ``cfg`` with ``prune.schedule: gradual`` and its name suffixed."""
    return _variant(cfg, f"{cfg.name}-gradual", schedule="gradual")


def one_shot_config(cfg, gradual_pool, level: int | None = None):
    """The one-shot pool matching level ``level`` (default: the final) of a built gradual pool:
    that level's sparsity reached in one step from the gradual pool's own dense level 0
    (``prune.dense_source``: copied, not retrained), retrained for the epochs the gradual pool spent
    to reach it (``rounds: level``; see the module docstring). The unit stop rule is off: the
    point is to reach the same sparsity."""
    level = matched_levels(gradual_pool, None if level is None else [level], cfg.name)[-1]
    target = gradual_pool.level(level)
    return _variant(cfg, f"{cfg.name}-one-shot-{level:02d}", schedule="one_shot", rounds=level,
                    max_sparsity=round(target.sparsity, 6), min_alive_units=0.0,
                    dense_source=_plain_name(cfg, gradual_pool))


def _plain_name(cfg, pool) -> str:
    """``pool`` as prune.dense_source names it: its name when it is a run in ``output_dir``."""
    inside = Path(pool.run_dir).parent.resolve() == Path(cfg.output_dir).expanduser().resolve()
    return pool.name if inside and Path(pool.run_dir).name == pool.name else str(pool.run_dir)


def matched_levels(gradual_pool, levels: Sequence[int] | None = None, name: str | None = None) -> list[int]:
    """The gradual levels that get a one-shot counterpart: ``levels``, or every pruned level; a
    ConfigError naming every level the gradual pool does not have."""
    name = name or gradual_pool.name
    final = gradual_pool.levels[-1].index
    if final == 0:
        raise ConfigError(f"the gradual pool of {name} stopped before any pruning round "
                          f"({gradual_pool.stop_reason or 'no reason recorded'}); "
                          "nothing to compare")
    if not levels:
        return list(range(1, final + 1))
    missing = sorted({k for k in levels if not 1 <= k <= final})
    if missing:
        raise ConfigError(f"compare-schedules --levels: the gradual pool of {name} has pruned "
                          f"levels 1 … {final}, not {', '.join(map(str, missing))}")
    return sorted(set(levels))


def compare_schedules(cfg, out_dir: str | Path | None = None, suites: Sequence[str] | None = None,
                      force: bool = False, n_boot: int = 1000, confidence: float = 0.95,
                      log: Callable[[str], None] = print,
                      levels: Sequence[int] | None = None) -> pd.DataFrame:
    """Build (or resume) the gradual pool and one one-shot pool per matched level (``levels``,
    default every pruned level), evaluate them, write the comparison to ``out_dir`` (default
    ``<output_dir>/<name>-schedules``) and return its table."""
    from prunelens.evaluate import evaluate_run
    from prunelens.io import atomic_write_bytes, atomic_write_json
    from prunelens.pruning import prune_run
    from prunelens.pruning.runner import level_epochs
    from prunelens.suite import check_suite_data

    if cfg.prune.retrain == "rewind":
        raise ConfigError("compare-schedules needs prune.retrain lrr or finetune: a rewound level "
                          "replays the dense schedule from prune.rewind_step, which has no one-shot "
                          "counterpart with the same epoch budget")
    if cfg.prune.init_sparsity > 0:
        raise ConfigError(f"compare-schedules with prune.init_sparsity {cfg.prune.init_sparsity}: its "
                          "one-shot pools prune the gradual pool's level 0 in one step, which "
                          "prunelens does from a dense level 0 only; leave init_sparsity at 0")
    suites = list(suites) if suites is not None else compared_suites()
    check_suite_data(cfg, suites)  # a missing data folder is named before any pool trains
    gradual = prune_run(gradual_config(cfg), force=force, log=log)
    matched = matched_levels(gradual, levels, cfg.name)  # every level checked before any one-shot pool
    configs = {k: one_shot_config(cfg, gradual, k) for k in matched}
    for k, one_cfg in configs.items():  # never a comparison at unequal budgets
        _same_budget(one_cfg.name, level_epochs(one_cfg, 1), retrain_epochs(gradual, k), k, "would retrain")
    one_shot = {k: prune_run(one_cfg, force=force, log=log) for k, one_cfg in configs.items()}
    for k, pool in one_shot.items():
        _same_budget(pool.name, retrain_epochs(pool), retrain_epochs(gradual, k), k, "retrained")
    # with the evaluate section of the config given (pool.json's may predate a data-folder flag)
    evaluate_run(gradual.run_dir, suites, levels=[0, *matched], log=log, evaluate=cfg.evaluate)
    for pool in one_shot.values():
        evaluate_run(pool.run_dir, suites, levels=[pool.levels[-1].index], log=log,
                     evaluate=cfg.evaluate)
    table = schedule_curve(gradual.run_dir, {k: p.run_dir for k, p in one_shot.items()}, suites,
                           n_boot, confidence)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / f"{cfg.name}-schedules"
    atomic_write_bytes(out / "comparison.csv", table.to_csv(index=False).encode())
    atomic_write_json(out / "comparison.json", {
        "budget": "the one-shot pool at the sparsity of gradual level k retrains once for the "
                  "epochs the gradual pool retrained in rounds 1 … k; both start from the same dense "
                  "level 0, the gradual pool's (copied into each one-shot pool, not retrained)",
        "gradual": {"run_dir": str(gradual.run_dir), "final_level": gradual.levels[-1].index,
                    "sparsity": {lv.index: lv.sparsity for lv in gradual.levels},
                    "retrain_epochs": {k: retrain_epochs(gradual, k) for k in matched},
                    "stop_reason": gradual.stop_reason},
        "one_shot": {k: {"run_dir": str(pool.run_dir), "level": pool.levels[-1].index,
                         "sparsity": pool.levels[-1].sparsity, "retrain_epochs": retrain_epochs(pool)}
                     for k, pool in one_shot.items()}})
    from prunelens.analysis import figures
    figures.save(figures.schedule_comparison(table, dense_means(gradual.run_dir, suites)),
                 out / "comparison.png")
    log(f"{cfg.name}: one-shot vs gradual at {len(matched)} sparsities in {out}")
    return table


def _same_budget(name: str, epochs: int, spent: int, level: int, verb: str) -> None:
    if epochs != spent:
        raise ConfigError(f"{name} {verb} {epochs} epochs, the gradual pool {spent} to reach level "
                          f"{level}: the budgets differ")


def retrain_epochs(pool, level: int | None = None) -> int:
    """Epochs spent retraining after pruning, over levels 1 … ``level`` (default: all)."""
    last = pool.levels[-1].index if level is None else level
    return int(sum(int(lv.info.get("epochs", 0)) for lv in pool.levels[1:] if lv.index <= last))


# ---- the table ---------------------------------------------------------------------------------------
def _level_rows(run_dir: str | Path, suites: Sequence[str] | None, level: int | None = None
                ) -> tuple[pd.DataFrame, float]:
    """The results of one level (default: the final) of a pool, and its sparsity."""
    from prunelens.runfolder import RunFolder

    pool = RunFolder(run_dir)
    chosen = pool.levels[-1] if level is None else pool.level(level)
    frame = load_results(run_dir, suite=list(suites) if suites else None)
    return frame[frame["level"] == chosen.index], chosen.sparsity


def _with_all_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """PSP-entropy rows again under method ``(all layers)``: the network-wide mean."""
    psp = frame[(frame["suite"] == "psp") & (frame["metric"] == "psp_entropy")]
    if psp.empty:
        return frame
    pooled = psp.assign(method="(all layers)", item=psp["method"] + ":" + psp["item"])
    return pd.concat([frame, pooled], ignore_index=True)


def _compare(a: pd.DataFrame, b: pd.DataFrame, n_boot: int, confidence: float, key: tuple) -> dict:
    """Means, CIs and Δ = a − b of one metric's rows under the two schedules (:mod:`prunelens.stats`;
    Δ paired over items when both measured the same items)."""
    va = a.groupby("item")["value"].mean().dropna()
    vb = b.groupby("item")["value"].mean().dropna()
    out = {}
    for schedule, values in (("gradual", va), ("one_shot", vb)):
        mean, lo, hi = mean_ci([values.to_numpy()], n_boot, confidence, seeded_rng(schedule, *key))
        out |= {f"mean_{schedule}": mean, f"ci_low_{schedule}": lo, f"ci_high_{schedule}": hi}
    out["delta"] = out["mean_gradual"] - out["mean_one_shot"]
    paired = len(va) > 1 and set(va.index) == set(vb.index)
    rng = seeded_rng("gradual - one_shot", *key)
    if paired:
        _, lo, hi = mean_ci([paired_differences(va, vb)], n_boot, confidence, rng)
    else:
        _, lo, hi = difference_ci(va.to_numpy(), vb.to_numpy(), n_boot, confidence, rng)
    out["delta_ci_low"], out["delta_ci_high"] = lo, hi
    out["paired"], out["n_gradual"], out["n_one_shot"] = paired, len(va), len(vb)
    return out


def side_by_side(gradual_dir: str | Path, one_shot_dir: str | Path, suites: Sequence[str] | None = None,
                 n_boot: int = 1000, confidence: float = 0.95,
                 gradual_level: int | None = None) -> pd.DataFrame:
    """Level ``gradual_level`` (default: the final) of the gradual pool and the final level of a
    one-shot pool compared metric by metric (see the module docstring)."""
    suites = list(suites) if suites is not None else compared_suites()
    a, sparsity_a = _level_rows(gradual_dir, suites, gradual_level)
    b, sparsity_b = _level_rows(one_shot_dir, suites)
    a, b = _with_all_layers(a), _with_all_layers(b)
    columns = list(KEY)
    keys = sorted(set(map(tuple, a[columns].drop_duplicates().to_numpy()))
                  | set(map(tuple, b[columns].drop_duplicates().to_numpy())))
    rows = []
    for key in keys:
        sel_a = (a[columns] == pd.Series(key, index=columns)).all(axis=1)
        sel_b = (b[columns] == pd.Series(key, index=columns)).all(axis=1)
        rows.append({**dict(zip(KEY, key)), **_compare(a[sel_a], b[sel_b], n_boot, confidence, key),
                     "sparsity_gradual": sparsity_a, "sparsity_one_shot": sparsity_b})
    return pd.DataFrame(rows)


def schedule_curve(gradual_dir: str | Path, one_shot_dirs: dict[int, str | Path],
                   suites: Sequence[str] | None = None, n_boot: int = 1000,
                   confidence: float = 0.95) -> pd.DataFrame:
    """:func:`side_by_side` at every matched gradual level k (``one_shot_dirs``: k → the one-shot
    pool at its sparsity), one table with columns ``gradual_level`` and ``retrain_epochs``."""
    from prunelens.runfolder import RunFolder

    gradual = RunFolder(gradual_dir)
    parts = []
    for k, one_shot_dir in sorted(one_shot_dirs.items()):
        part = side_by_side(gradual_dir, one_shot_dir, suites, n_boot, confidence, gradual_level=k)
        parts.append(part.assign(gradual_level=k, retrain_epochs=retrain_epochs(gradual, k)))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    first = [*LEADING_COLUMNS]
    return table[first + [c for c in table.columns if c not in first]]


def dense_means(gradual_dir: str | Path, suites: Sequence[str] | None = None, n_boot: int = 1000,
                confidence: float = 0.95) -> pd.DataFrame:
    """Mean and CI of every metric at the gradual pool's dense level 0: where both curves start."""
    rows, _ = _level_rows(gradual_dir, suites, 0)
    rows = _with_all_layers(rows)
    out = []
    for key, group in rows.groupby(list(KEY), sort=True, dropna=False):
        values = group.groupby("item")["value"].mean().dropna().to_numpy()
        mean, lo, hi = mean_ci([values], n_boot, confidence, seeded_rng("dense", *key))
        out.append({**dict(zip(KEY, key)), "mean": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)
