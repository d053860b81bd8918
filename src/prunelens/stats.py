"""Every confidence interval of prunelens: bootstrap means with percentile intervals.

* One sample of items (one run): the ordinary bootstrap of the mean (Efron & Tibshirani 1993,
  ch. 13, the percentile interval).
* Several samples (the seeds of one experiment): the two-stage bootstrap (Davison & Hinkley 1997,
  §3.8): draw seeds with replacement, then resample the items of each drawn seed; seeds weigh
  equally.
* Curves (a statistic across pruning levels, :mod:`prunelens.report.claims`): per replicate, seeds
  are drawn first (one draw for all levels: a seed's curve stays together), then, where levels are
  the unit, levels with replacement, then the images of each level; the statistic is computed on
  each replicate's per-level means (:func:`curve_draws`).
* Paired differences: the per-item difference of two measurements of the same items (an image
  at two levels, the neurons of a shared ancestor) is resampled, not the two means separately.

Resampling is seeded by what is summarised — (group, suite, metric, method, dataset, condition,
level) — not by the order in which summaries are computed, so the interval of a metric is the same
whichever other runs or metrics are summarised with it, in ``RUN_DIR/results/summary.csv``, the
report's ``summary.csv``, ``prunelens results`` and the figures alike.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: the columns that name one measured quantity of a suite (with ``level``: one point of a curve)
KEY = ("suite", "metric", "method", "dataset", "condition")
SUMMARY_COLUMNS = ["group", *KEY, "level", "sparsity", "mean", "ci_low", "ci_high", "n", "n_nan",
                   "n_seeds"]
_CHUNK = 1 << 22  # bootstrap index draws generated per block (bounds memory to ~32 MB)


def seeded_rng(*key) -> np.random.Generator:
    """A generator seeded by ``key`` (any printable values): the same key, the same draws."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _item_means(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` means of bootstrap resamples of ``values`` (drawn in blocks to bound memory)."""
    n = len(values)
    if n == 1:
        return np.full(count, values[0])
    out = np.empty(count)
    step = max(1, _CHUNK // n)
    for start in range(0, count, step):
        stop = min(count, start + step)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def bootstrap_means(samples: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap distribution (``n_boot``,) of the mean of per-sample means: one-stage for one
    sample, two-stage for several (module docstring)."""
    if len(samples) == 1:
        return _item_means(samples[0], n_boot, rng)
    pick = rng.integers(0, len(samples), size=(n_boot, len(samples)))
    means = np.empty(pick.shape)
    for j, values in enumerate(samples):  # each slot that drew sample j: a fresh resample of its items
        slots = pick == j
        means[slots] = _item_means(values, int(slots.sum()), rng)
    return means.mean(axis=1)


def percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_ci(samples: Sequence[np.ndarray], n_boot: int, confidence: float,
            rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) of the mean of per-sample means, NaNs dropped. The interval is NaN
    with fewer than two resampling units (one sample of one value)."""
    samples = [v[~np.isnan(v)] for v in (np.asarray(x, dtype=float) for x in samples)]
    samples = [v for v in samples if len(v)]
    if not samples:
        return (math.nan, math.nan, math.nan)
    mean = float(np.mean([v.mean() for v in samples]))
    if len(samples) == 1 and len(samples[0]) < 2:
        return (mean, math.nan, math.nan)
    return (mean, *percentile_interval(bootstrap_means(samples, n_boot, rng), confidence))


def difference_ci(a: np.ndarray, b: np.ndarray, n_boot: int, confidence: float,
                  rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean(a) − mean(b), ci_low, ci_high) of two independent samples: the percentile interval of
    the difference of their independent bootstrap means (NaN with fewer than two values in one)."""
    a, b = (np.asarray(v, dtype=float) for v in (a, b))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return (delta, math.nan, math.nan)
    draws = _item_means(a, n_boot, rng) - _item_means(b, n_boot, rng)
    return (delta, *percentile_interval(draws, confidence))


def paired_differences(after: pd.Series, before: pd.Series, sign: int = 1) -> np.ndarray:
    """``sign · (after(i) − before(i))`` for every item measured (not NaN) in both (Series indexed
    by item)."""
    return (sign * (after - before.reindex(after.index))).dropna().to_numpy(dtype=float)


def group_of(frame: pd.DataFrame, groups: Mapping[str, str] | None) -> pd.Series:
    """The group label of every row: its run's group in ``groups``, else the run's name."""
    runs = frame["run"].astype(str)
    return runs.map(lambda run: groups.get(run, run)) if groups else runs


def summarize(frame: pd.DataFrame, groups: Mapping[str, str] | None = None, n_boot: int = 1000,
              confidence: float = 0.95) -> pd.DataFrame:
    """Per (group, suite, metric, method, dataset, condition, level): mean, bootstrap CI, n, n_nan,
    n_seeds (:data:`SUMMARY_COLUMNS`). ``frame`` holds records (``run, level, sparsity`` and the
    record columns); each run is one seed sample of its group (``groups``: run → label, default:
    every run its own group)."""
    frame = frame.assign(group=group_of(frame, groups))
    rows = []
    for key, part in frame.groupby(["group", *KEY, "level"], sort=True):
        samples = [g["value"].to_numpy(dtype=float) for _, g in part.groupby("run", sort=True)]
        mean, lo, hi = mean_ci(samples, n_boot, confidence, seeded_rng(*key))
        values = part["value"].to_numpy(dtype=float)
        rows.append((*key, float(part["sparsity"].mean()), mean, lo, hi,
                     int((~np.isnan(values)).sum()), int(np.isnan(values).sum()), len(samples)))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def curve_draws(samples: Sequence[Sequence[np.ndarray]], seeds: np.ndarray, rng: np.random.Generator
                ) -> np.ndarray:
    """Bootstrap per-level means of a curve, shape (``n_boot``, levels).

    ``samples[s][l]`` holds the values (NaN-free, at least one) of level ``l`` in seed ``s``;
    ``seeds`` (``n_boot`` × seeds) the seeds each replicate drew (:func:`draw_units`; all zeros for
    one seed). A replicate's level mean is the mean over its drawn seeds of a fresh resample of that
    seed's values at the level (two-stage bootstrap, seeds weighted equally)."""
    n_boot, n_seeds = seeds.shape
    n_levels = len(samples[0])
    out = np.zeros((n_boot, n_levels))
    for level in range(n_levels):
        for s, per_level in enumerate(samples):
            slots = seeds == s
            count = int(slots.sum())
            if count:
                draws = np.zeros(slots.shape)
                draws[slots] = _item_means(np.asarray(per_level[level], dtype=float), count, rng)
                out[:, level] += draws.sum(axis=1)
    return out / n_seeds


def draw_units(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` resamples with replacement of ``n`` units (seeds, levels), as indices."""
    return rng.integers(0, n, size=(n_boot, n))


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided p-value of "the statistic is 0" from its bootstrap draws: the smallest
    ``1 − confidence`` at which the percentile interval excludes 0 (Efron & Tibshirani 1993,
    §15.4, with the (k + 1) / (B + 1) correction so that it is never 0)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return math.nan
    tail = min(int((draws <= 0).sum()), int((draws >= 0).sum()))
    return min(1.0, 2 * (tail + 1) / (len(draws) + 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): family-wise error at most α when rejecting
    those ≤ α. NaN p-values are left NaN and do not count in the family."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out
