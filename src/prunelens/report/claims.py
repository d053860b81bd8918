"""Claims: the papers' conclusions as statistics across pruning levels, with intervals and verdicts.

Each suite declares the claims about its metrics (:class:`prunelens.suite.Claim`); this module
evaluates every declared claim on the records of one or several runs; the report and
``prunelens claims`` show the table. For a claim, a run (or a *seed group*, runs that differ only
by ``seed``) and each value of the claim's ``by`` columns:

1. per level, the mean of the y records (and of the x records, or the level's sparsity), the mean
   over seeds of each seed's mean;
2. the statistic of y against x over the levels: Spearman's or Pearson's correlation
   (``scipy.stats.spearmanr`` / ``pearsonr``) or the least-squares slope (``scipy.stats.linregress``);
   or the mean of y at the run's last level (``final_mean``, compared between schedules);
3. a percentile bootstrap interval (:mod:`prunelens.stats`, at least 4000 replicates): each replicate draws the seeds (one
   draw for all levels), then — where the claim's unit is ``levels`` — the levels with
   replacement, then the images (items) within each level, independently for x and y; the statistic
   is computed on each replicate's per-level means. Levels are the unit of the correlation and
   slope claims: they are about a relation *across levels*, and a pool has only a handful, so an
   interval over images alone would only cover measurement noise and call any curve of well-measured
   means "supported", however few levels make it. With one seed, the interval says nothing about
   another training run of the same config; several seeds of one experiment make it do so;
4. between runs (``between``), the difference of the two runs' statistics, with the interval of
   the difference of their independent replicates (e.g. "demo-cnn's slope − demo-vit's slope",
   or one-shot − gradual at the same final sparsity); between a pool and its control
   (``min_gap``), the smallest difference of their level means over the pruned levels, each level's
   images resampled (levels fixed: the claim is about every one of them);
5. a two-sided bootstrap p-value of "the statistic is 0" (the smallest 1 − confidence at which the
   interval excludes 0), adjusted over every row that predicts a sign by Holm's method. A row is
   **supported** when the adjusted p ≤ 1 − confidence and the statistic has the predicted sign,
   **contradicted** when it has the opposite sign, otherwise **inconclusive**; a row without a
   predicted sign is **descriptive**, and one with fewer than three levels **not tested**.

The interval shown is at the chosen confidence, not adjusted: the verdict reads the adjusted p.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from prunelens.errors import PrunelensError
from prunelens.runfolder import RunFolder
from prunelens.stats import (bootstrap_p, curve_draws, draw_units, group_of, holm,
                             percentile_interval, seeded_rng)
from prunelens.suite import Claim, Quantity, all_suites

CORRECTION = "Holm"
BY = ("metric", "method", "dataset", "condition")
COLUMNS = ["claim", "suite", "statement", "compared", *BY, "statistic", "y", "x", "value", "ci_low",
           "ci_high", "p", "p_holm", "expected", "verdict", "n_levels", "n_seeds", "n_items",
           "resampled", "n_boot", "note"]
MIN_LEVELS = 3
#: at least this many replicates: a bootstrap p-value is never below 2 / (B + 1), and Holm multiplies
#: the smallest by the number of rows, so fewer would leave no row able to pass
MIN_BOOT = 4000


def declared_claims() -> list[tuple[str, Claim]]:
    """(suite name, claim) of every claim the importable suites declare."""
    return [(suite.name, claim) for suite in all_suites() for claim in suite.claims]


def family_of(model: str) -> tuple[str | None, str | None]:
    """(family, design) of a registered model name's spec ((None, None) for an unknown one)."""
    from prunelens.models import spec_of
    try:
        spec = spec_of(model)
    except PrunelensError:
        return None, None
    return spec.family, spec.design


def run_facts(runs: Sequence[RunFolder]) -> dict[str, dict]:
    """Run name → what claims compare runs by: ``size`` (prunable weights of its architecture, for
    ``between="size"``) and ``schedule`` (``prune.schedule``, for ``between="schedule"``)."""
    from prunelens.models import create_model, spec_of

    facts = {}
    for run in runs:
        prune = run.config.prune
        facts[run.name] = {"schedule": prune.schedule, "control": prune.control,
                           "control_source": Path(prune.control_source).name if prune.control_source
                           else None}
        try:
            model = create_model(run.config.model.name, run.num_classes, **run.config.model.options)
            facts[run.name]["size"] = int(sum(p.numel() for p in spec_of(run.config.model.name)
                                              .prunable(model).values()))
        except PrunelensError:
            continue
    return facts


@dataclass
class _Fit:
    """One run's (or seed group's) statistic and its bootstrap replicates."""

    value: float
    draws: np.ndarray
    n_levels: int
    n_seeds: int
    n_items: int
    level: int | None = None  # the level of a final_mean
    levels: tuple[int, ...] = ()  # min_gap: the levels of the columns of draws (replicates × levels)
    means: np.ndarray | None = None  # min_gap: the observed level means
    sparsity: tuple[float, ...] = ()


def statistic(name: str, x: np.ndarray, y: np.ndarray) -> float:
    """The claim statistic of one curve, by ``scipy.stats`` (NaN for a constant x or y)."""
    if len(x) < 2 or np.ptp(x) == 0 or (name != "slope" and np.ptp(y) == 0):
        return math.nan
    if name == "spearman":
        return float(sps.spearmanr(x, y).statistic)
    if name == "pearson":
        return float(sps.pearsonr(x, y).statistic)
    return float(sps.linregress(x, y).slope)


def statistic_rows(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`statistic` of every row of (replicates × levels) arrays, vectorised: Spearman's ρ
    is Pearson's r of the ranks (mid-ranks for ties, as ``spearmanr``); the slope is
    r · sd(y) / sd(x) (as ``linregress``). Rows with a constant x (or y, for a correlation): NaN."""
    x_const = np.ptp(x, axis=1) == 0
    y_const = np.ptp(y, axis=1) == 0
    bad = x_const | (y_const if name != "slope" else np.zeros_like(x_const))
    out = np.full(len(x), math.nan)
    ok = ~bad
    if not ok.any():
        return out
    xs, ys = x[ok], y[ok]
    if name == "spearman":
        xs, ys = sps.rankdata(xs, axis=1), sps.rankdata(ys, axis=1)
    if name == "slope":
        flat = np.ptp(ys, axis=1) == 0
        r = np.zeros(len(xs))
        if (~flat).any():
            r[~flat] = sps.pearsonr(xs[~flat], ys[~flat], axis=1).statistic
        out[ok] = r * ys.std(axis=1) / xs.std(axis=1)
    else:
        out[ok] = sps.pearsonr(xs, ys, axis=1).statistic
    return out


def _select(frame: pd.DataFrame, quantity: Quantity) -> pd.DataFrame:
    rows = frame[(frame["suite"] == quantity.suite) & frame["metric"].isin(quantity.metrics)]
    return rows[rows["dataset"] == quantity.dataset] if quantity.dataset is not None else rows


def _by_run_level(rows: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    values = rows.dropna(subset=["value"])
    return {(run, int(level)): part.to_numpy(dtype=float)
            for (run, level), part in values.groupby(["run", "level"], sort=True)["value"]}


def _fit(claim: Claim, y_rows: pd.DataFrame, x_rows: pd.DataFrame | None, n_boot: int,
         rng: np.random.Generator) -> _Fit | str:
    """The statistic of one group's curve and its replicates, or why it cannot be tested."""
    y = _by_run_level(y_rows)
    if claim.statistic == "final_mean":
        return _fit_final(y, n_boot, rng)
    if claim.statistic == "min_gap":
        return _fit_levels(y, y_rows, n_boot, rng)
    x = _by_run_level(x_rows) if x_rows is not None else None
    runs = sorted({run for run, _ in y} & ({run for run, _ in x} if x is not None else {run for run, _ in y}))
    levels = sorted(lv for lv in {lv for _, lv in y}
                    if all((r, lv) in y and (x is None or (r, lv) in x) for r in runs))
    if len(levels) < MIN_LEVELS:
        return (f"{len(levels)} level(s) measured by every seed for both quantities; a statistic "
                f"across levels needs {MIN_LEVELS}")
    y_samples = [[y[r, lv] for lv in levels] for r in runs]
    y_obs = np.mean([[v.mean() for v in per_run] for per_run in y_samples], axis=0)
    seeds = draw_units(len(runs), n_boot, rng) if len(runs) > 1 else np.zeros((n_boot, 1), dtype=int)
    y_draws = curve_draws(y_samples, seeds, rng)
    if x is not None:
        x_samples = [[x[r, lv] for lv in levels] for r in runs]
        x_obs = np.mean([[v.mean() for v in per_run] for per_run in x_samples], axis=0)
        x_draws = curve_draws(x_samples, seeds, rng)
    else:
        sparsity = y_rows.groupby("level")["sparsity"].mean()
        x_obs = np.array([float(sparsity[lv]) for lv in levels])
        x_draws = np.broadcast_to(x_obs, y_draws.shape)
    if claim.unit == "levels":
        pick = draw_units(len(levels), n_boot, rng)
        x_draws, y_draws = (np.take_along_axis(d, pick, axis=1) for d in (x_draws, y_draws))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        draws = statistic_rows(claim.statistic, np.asarray(x_draws), y_draws)
    return _Fit(statistic(claim.statistic, x_obs, y_obs), draws, len(levels), len(runs),
                int(sum(len(v) for per_run in y_samples for v in per_run)))


def _fit_final(y: dict[tuple[str, int], np.ndarray], n_boot: int, rng: np.random.Generator) -> _Fit | str:
    """The mean at the last level every seed measured, its replicates over seeds and images."""
    runs = sorted({run for run, _ in y})
    common = [lv for lv in sorted({lv for _, lv in y}) if all((r, lv) in y for r in runs)]
    if not common:
        return "no level measured by every seed"
    samples = [[y[r, common[-1]]] for r in runs]
    seeds = draw_units(len(runs), n_boot, rng) if len(runs) > 1 else np.zeros((n_boot, 1), dtype=int)
    value = float(np.mean([v[0].mean() for v in samples]))
    return _Fit(value, curve_draws(samples, seeds, rng)[:, 0], 1, len(runs),
                int(sum(len(v[0]) for v in samples)), common[-1])


def _fit_levels(y: dict[tuple[str, int], np.ndarray], y_rows: pd.DataFrame, n_boot: int,
                rng: np.random.Generator) -> _Fit | str:
    """Every level's mean and its replicates over seeds and images (levels fixed: the claim is
    about each of them)."""
    runs = sorted({run for run, _ in y})
    levels = [lv for lv in sorted({lv for _, lv in y}) if all((r, lv) in y for r in runs)]
    if not levels:
        return "no level measured by every seed"
    samples = [[y[r, lv] for lv in levels] for r in runs]
    seeds = draw_units(len(runs), n_boot, rng) if len(runs) > 1 else np.zeros((n_boot, 1), dtype=int)
    means = np.mean([[v.mean() for v in per_run] for per_run in samples], axis=0)
    sparsity = y_rows.groupby("level")["sparsity"].mean()
    return _Fit(math.nan, curve_draws(samples, seeds, rng), len(levels), len(runs),
                int(sum(len(v) for per_run in samples for v in per_run)), levels=tuple(levels),
                means=means, sparsity=tuple(float(sparsity[lv]) for lv in levels))


def _gap(a: _Fit, b: _Fit) -> _Fit | str:
    """min over the pruned levels both have of (a − b), and its replicates."""
    common = [lv for lv, sp in zip(a.levels, a.sparsity) if lv in b.levels and sp > 0]
    if not common:
        return "no pruned level measured in both pools"
    ia = [a.levels.index(lv) for lv in common]
    ib = [b.levels.index(lv) for lv in common]
    value = float((a.means[ia] - b.means[ib]).min())
    draws = (a.draws[:, ia] - b.draws[:, ib]).min(axis=1)
    return _Fit(value, draws, len(common), max(a.n_seeds, b.n_seeds), a.n_items + b.n_items)


def _resampled(claim: Claim, n_seeds: int) -> str:
    levels = claim.unit == "levels" and claim.statistic not in ("final_mean", "min_gap")
    parts = (["seeds"] if n_seeds > 1 else []) + (["levels"] if levels else []) + ["images"]
    return " › ".join(parts)


def evaluate_claims(frame: pd.DataFrame, groups: Mapping[str, str] | None = None, n_boot: int = 1000,
                    confidence: float = 0.95, facts: Mapping[str, Mapping] | None = None,
                    claims: Sequence[tuple[str, Claim]] | None = None) -> pd.DataFrame:
    """Every claim (default: :func:`declared_claims`) on the records ``frame`` (columns of
    :func:`prunelens.results.load_results`), one row per run or seed group (``groups``: run →
    label) and per value of the claim's ``by`` columns, plus one per compared pair of groups.
    Columns :data:`COLUMNS`; the method is in the module docstring (``n_boot`` is raised to
    :data:`MIN_BOOT`). ``facts``: run → ``{"size": prunable weights, "schedule": prune.schedule}``
    (:func:`run_facts`), needed by claims that compare runs by size or schedule."""
    claims = declared_claims() if claims is None else claims
    n_boot = max(n_boot, MIN_BOOT)
    frame = frame.assign(group=group_of(frame, groups))
    order = list(dict.fromkeys(frame["group"]))
    first_run = frame.drop_duplicates("group").set_index("group")
    kinds = {g: family_of(str(first_run.loc[g, "model"])) for g in order}
    facts_of = {g: dict((facts or {}).get(str(first_run.loc[g, "run"]), {}),
                        runs=tuple(frame.loc[frame["group"] == g, "run"].unique())) for g in order}
    rows: list[dict] = []
    sides: list[int] = []
    x_none = None

    def add(claim, suite, key, compared, fit, expected, note=""):
        base = dict(zip(BY, ("",) * len(BY)), **dict(zip(claim.by, key)))
        if isinstance(fit, str):
            rows.append({**base, "claim": claim.id, "suite": suite, "statement": claim.statement,
                         "compared": compared, "statistic": claim.statistic, "y": str(claim.y),
                         "x": str(claim.x), "value": math.nan, "ci_low": math.nan,
                         "ci_high": math.nan, "p": math.nan, "expected": expected, "n_levels": 0,
                         "n_seeds": 0, "n_items": 0, "resampled": "", "n_boot": 0, "note": fit})
            sides.append(0)
            return
        draws = fit.draws[~np.isnan(fit.draws)]
        lo, hi = percentile_interval(draws, confidence) if len(draws) else (math.nan, math.nan)
        if fit.level is not None:
            note = "; ".join(filter(None, [f"level {fit.level}", note]))
        undefined = len(fit.draws) - len(draws)
        if undefined >= 0.01 * len(fit.draws):
            note = "; ".join(filter(None, [note, f"{undefined} of {len(fit.draws)} replicates "
                                            "undefined (a constant curve), left out"]))
        rows.append({**base, "claim": claim.id, "suite": suite, "statement": claim.statement,
                     "compared": compared, "statistic": claim.statistic, "y": str(claim.y),
                     "x": str(claim.x), "value": fit.value, "ci_low": lo, "ci_high": hi,
                     "p": bootstrap_p(draws), "expected": expected, "n_levels": fit.n_levels,
                     "n_seeds": fit.n_seeds, "n_items": fit.n_items,
                     "resampled": _resampled(claim, fit.n_seeds), "n_boot": len(draws), "note": note})
        sides.append(int(np.sign((draws > 0).sum() - (draws < 0).sum())))

    for suite, claim in claims:
        y_all = _select(frame, claim.y)
        x_all = _select(frame, claim.x) if isinstance(claim.x, Quantity) else x_none
        for group in order:  # a run the claim's suite measured, without the claim's records
            missing = [str(q) for q, rows in ((claim.y, y_all), (claim.x, x_all))
                       if rows is not None and not (rows["group"] == group).any()]
            if (missing and claim.between not in ("schedule", "control")
                    and (frame.loc[frame["group"] == group, "suite"] == suite).any()):
                add(claim, suite, ("",) * len(claim.by), group,
                    f"no records of {' and '.join(missing)}", claim.expected_for(*kinds[group]))
        if y_all.empty or (x_all is not None and x_all.empty):
            continue
        parts = y_all.groupby(list(claim.by), sort=True) if claim.by else [((), y_all)]
        for key, part in parts:
            key = key if isinstance(key, tuple) else (key,)
            results: dict[str, _Fit | str] = {}
            for group in [g for g in order if g in set(part["group"])]:
                x_rows = x_all[x_all["group"] == group] if x_all is not None else None
                rng = seeded_rng("claim", claim.id, group, *key)
                results[group] = _fit(claim, part[part["group"] == group], x_rows, n_boot, rng)
            fits = {g: fit for g, fit in results.items() if isinstance(fit, _Fit)}
            pairs = _pairs(claim, list(fits), kinds, facts_of, frame)
            paired = {g for a, b, *_ in pairs for g in (a, b)}
            for group, fit in results.items():
                # the mean at the last level says something only beside its counterpart
                if claim.statistic == "min_gap":
                    if isinstance(fit, str) and group in paired:
                        add(claim, suite, key, group, fit, None)
                    continue
                if claim.statistic != "final_mean" or group in paired:
                    add(claim, suite, key, group, fit, claim.expected_for(*kinds[group]))
            for a, b, expected, note in pairs:
                fa, fb = fits[a], fits[b]
                if claim.statistic == "min_gap":
                    add(claim, suite, key, f"{a} − {b}", _gap(fa, fb), expected, note)
                    continue
                diff = _Fit(fa.value - fb.value, fa.draws - fb.draws, min(fa.n_levels, fb.n_levels),
                            max(fa.n_seeds, fb.n_seeds), fa.n_items + fb.n_items, fa.level)
                add(claim, suite, key, f"{a} − {b}", diff, expected, note)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return _verdicts(table, np.array(sides, dtype=int), 1 - confidence)


def _pairs(claim: Claim, groups: list[str], kinds: Mapping[str, tuple[str | None, str | None]],
           facts: Mapping[str, Mapping], frame: pd.DataFrame) -> list[tuple[str, str, int, str]]:
    """(A, B, expected sign of stat(A) − stat(B), note) of the groups a claim compares."""
    sizes = {g: facts[g].get("size") for g in groups}
    final = {g: float(frame.loc[(frame["group"] == g)
                                & (frame["level"] == frame.loc[frame["group"] == g, "level"].max()),
                                "sparsity"].mean()) for g in groups}
    out = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if claim.between == "family":
                ea, eb = claim.expected_for(*kinds[a]), claim.expected_for(*kinds[b])
                if ea is not None and eb is not None and ea != eb:
                    out.append((a, b, int(np.sign(ea - eb)), f"families {kinds[a][0]} − {kinds[b][0]}"))
            elif claim.between == "size":
                sa, sb = sizes[a], sizes[b]
                if sa is not None and sb is not None and sa != sb:
                    small, large = (a, b) if sa < sb else (b, a)
                    out.append((small, large, claim.between_expected, f"{min(sa, sb):,} vs "
                                f"{max(sa, sb):,} prunable weights (smaller − larger)"))
            elif claim.between == "control":
                for pool, control in ((a, b), (b, a)):
                    fc = facts[control]
                    if (fc.get("control") == claim.control_kind
                            and fc.get("control_source") in facts[pool].get("runs", ())):
                        out.append((pool, control, claim.between_expected,
                                    f"pool − its {claim.control_kind} control, at every pruned level"))
            elif claim.between == "schedule":
                kinds = {facts[a].get("schedule"), facts[b].get("schedule")}
                if kinds == {"one_shot", "gradual"} and abs(final[a] - final[b]) < 0.005:
                    shot, grad = (a, b) if facts[a].get("schedule") == "one_shot" else (b, a)
                    out.append((shot, grad, claim.between_expected,
                                f"one-shot − gradual, both at {final[a]:.1%} sparsity"))
    return out


def _verdicts(table: pd.DataFrame, sides: np.ndarray, alpha: float) -> pd.DataFrame:
    tested = table["expected"].notna() & table["p"].notna()
    table["p_holm"] = math.nan
    if tested.any():
        table.loc[tested, "p_holm"] = holm(table.loc[tested, "p"].to_numpy(dtype=float))
    verdict = np.where(table["p"].isna(), "not tested",
                       np.where(table["expected"].isna(), "descriptive", "inconclusive"))
    significant = tested.to_numpy() & (table["p_holm"].to_numpy(dtype=float) <= alpha)
    expected = table["expected"].to_numpy(dtype=float)
    verdict = np.where(significant & (sides == expected), "supported", verdict)
    verdict = np.where(significant & (sides == -expected), "contradicted", verdict)
    table["verdict"] = verdict
    table["expected"] = table["expected"].map(lambda e: "" if e is None or e != e else
                                              ("+" if e > 0 else "−"))
    return table
