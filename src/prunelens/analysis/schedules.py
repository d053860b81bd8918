"""One-shot vs gradual pruning, side by side (Tartaglione, Bragagnolo & Grangetto, ICANN 2020, Sec. 4).

:func:`compare_schedules` takes one run config and builds two pools of the same model on the same
data: ``<name>-gradual`` (``prune.schedule: gradual``, as configured) and ``<name>-one-shot``,
pruned in one step to the sparsity the gradual pool *reached* (its stop rule may end it before
``max_sparsity``) and retrained for the same total number of epochs (rounds × epochs per round).
Each pool trains its own dense level 0 with the same seed and settings (identical on a CPU, where
training is deterministic). Rewinding has no equal-budget one-shot counterpart here, so
``retrain: rewind`` is refused (use ``lrr`` or ``finetune``). It then evaluates the
dense and the final level of each with the suites that declare themselves part of the comparison
(``accuracy``, ``psp`` and ``sharpness``) and writes the comparison of the two final levels:

``OUT/comparison.csv`` — per (suite, metric, method, …): mean and bootstrap CI under each
schedule, Δ = gradual − one-shot with its CI (paired over items when both pools measured the same
items — images, neurons of the shared dense ancestor, noise draws of the same seed — unpaired
otherwise); ``OUT/comparison.json`` — the pools, their sparsity and epoch budgets;
``OUT/comparison.png`` — the main metrics as bars with CIs.
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


def one_shot_config(cfg, gradual_pool):
    """The one-shot pool matching a built gradual pool: its final sparsity reached in one step,
    retrained for the gradual pool's total epochs (``rounds`` = its pruning rounds). The unit stop
    rule is off: the point is to reach the same sparsity."""
    final = gradual_pool.levels[-1]
    if final.index == 0:
        raise ConfigError(f"the gradual pool of {cfg.name} stopped before any pruning round "
                          f"({gradual_pool.stop_reason or 'no reason recorded'}); "
                          "nothing to compare")
    return _variant(cfg, f"{cfg.name}-one-shot", schedule="one_shot", rounds=final.index,
                    max_sparsity=round(final.sparsity, 6), min_alive_units=0.0)


def compare_schedules(cfg, out_dir: str | Path | None = None, suites: Sequence[str] | None = None,
                      force: bool = False, n_boot: int = 1000, confidence: float = 0.95,
                      log: Callable[[str], None] = print) -> pd.DataFrame:
    """Build (or resume) both pools, evaluate their dense and final levels, write the comparison
    to ``out_dir`` (default ``<output_dir>/<name>-schedules``) and return its table."""
    from prunelens.evaluate import evaluate_run
    from prunelens.io import atomic_write_bytes, atomic_write_json
    from prunelens.pruning import prune_run

    if cfg.prune.retrain == "rewind":
        raise ConfigError("compare-schedules needs prune.retrain lrr or finetune: a rewound level "
                          "replays the dense schedule from prune.rewind_step, which has no one-shot "
                          "counterpart with the same epoch budget")
    suites = list(suites) if suites is not None else compared_suites()
    pools = {"gradual": prune_run(gradual_config(cfg), force=force, log=log)}
    pools["one_shot"] = prune_run(one_shot_config(cfg, pools["gradual"]), force=force, log=log)
    for pool in pools.values():
        evaluate_run(pool.run_dir, suites, levels=[0, pool.levels[-1].index], log=log)
    table = side_by_side(pools["gradual"].run_dir, pools["one_shot"].run_dir, suites, n_boot,
                         confidence)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / f"{cfg.name}-schedules"
    atomic_write_bytes(out / "comparison.csv", table.to_csv(index=False).encode())
    atomic_write_json(out / "comparison.json", {
        schedule: {"run_dir": str(pool.run_dir), "final_level": pool.levels[-1].index,
                   "sparsity": pool.levels[-1].sparsity, "retrain_epochs": retrain_epochs(pool),
                   "stop_reason": pool.stop_reason}
        for schedule, pool in pools.items()})
    from prunelens.analysis import figures
    figures.save(figures.schedule_comparison(table), out / "comparison.png")
    log(f"{cfg.name}: one-shot vs gradual comparison in {out}")
    return table


def retrain_epochs(pool) -> int:
    """Epochs spent retraining after pruning, over all levels > 0."""
    return int(sum(int(level.info.get("epochs", 0)) for level in pool.levels[1:]))


# ---- the table ---------------------------------------------------------------------------------------
def _final_rows(run_dir: str | Path, suites: Sequence[str] | None) -> tuple[pd.DataFrame, float]:
    from prunelens.runfolder import RunFolder

    final = RunFolder(run_dir).levels[-1]
    frame = load_results(run_dir, suite=list(suites) if suites else None)
    return frame[frame["level"] == final.index], final.sparsity


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
                 n_boot: int = 1000, confidence: float = 0.95) -> pd.DataFrame:
    """The final levels of two pools compared metric by metric (see the module docstring)."""
    suites = list(suites) if suites is not None else compared_suites()
    (a, sparsity_a), (b, sparsity_b) = (_final_rows(d, suites) for d in (gradual_dir, one_shot_dir))
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
