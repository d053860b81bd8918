"""Sweet spots: pruning levels where a metric and accuracy both beat the dense model, with error bars.

Cassano et al. call a sparsity a *sweet spot* when a representation metric and accuracy are both
above the dense model's; they read it off single runs. prunelens applies this rule:

For a metric ``m`` of a run (or of a *seed group*: runs whose configs differ only by ``seed``) and
a level ``L > 0``, with ``s = +1`` when higher ``m`` is better and ``s = -1`` when lower is better
(each suite declares the direction of its metrics, :class:`prunelens.suite.Metric`; a metric with
direction ``none`` is descriptive and never makes a sweet spot)::

    Δm   = s · (mean_L(m) − mean_0(m))        Δacc = mean_L(acc) − mean_0(acc)

``acc`` is the accuracy suite's per-image test accuracy (``level.json`` test accuracy, one value per
level, for a run without it). ``L`` is a **naive** sweet spot for ``m``
when ``Δm > 0`` and ``Δacc > 0``. Each Δ gets a percentile-bootstrap CI (95 % by default) paired over
items: the per-item difference ``s·(m_L(i) − m_0(i))`` of the same image / neuron at both levels is
resampled; with several seeds, seeds are resampled first and the items within each drawn seed next
(two-stage bootstrap, seeds weighted equally; :mod:`prunelens.stats`). ``L`` is **confirmed** when
both CI lower bounds are > 0, otherwise it stays naive. A Δ with fewer than two resampling units (one run, one aggregate
value per level) has no CI, so its sweet spots can only be naive. The CIs are not corrected for the
number of (metric, level) pairs tested: about 1 in 40 true nulls passes each bound by chance.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from prunelens.stats import KEY, group_of, mean_ci, paired_differences, seeded_rng
from prunelens.suite import metric_of

ACCURACY = {"suite": "accuracy", "metric": "accuracy"}


def better_of(suite: str, metric: str) -> str | None:
    """``higher`` or ``lower`` where the suite declares which is better, else None."""
    declared = metric_of(suite, metric)
    return declared.direction if declared is not None and declared.direction != "none" else None


def _by_item(run_rows: pd.DataFrame) -> pd.DataFrame:
    """One run's values of one metric as an item × level table (duplicate rows averaged)."""
    return run_rows.pivot_table(index="item", columns="level", values="value", aggfunc="mean",
                                dropna=False)


def _against_dense(table: pd.DataFrame, level: int, sign: int) -> np.ndarray:
    if level not in table.columns or 0 not in table.columns:
        return np.empty(0)
    return paired_differences(table[level], table[0], sign)


def compare_to_dense(frame: pd.DataFrame, groups: Mapping[str, str] | None = None,
                     n_boot: int = 2000, confidence: float = 0.95) -> pd.DataFrame:
    """Δ (direction applied, so > 0 is better) of every level vs level 0, with paired bootstrap CIs.

    Only metrics whose suite declares a direction are compared. Columns: ``group, *KEY, level,
    sparsity, better, delta, ci_low, ci_high, n_items, n_seeds``. See the module docstring.
    """
    frame = frame.assign(group=group_of(frame, groups))
    rows = []
    for key, part in frame.groupby(["group", *KEY], sort=True):
        better = better_of(key[1], key[2])
        if better is None:
            continue
        sign = 1 if better == "higher" else -1
        tables = [_by_item(run_rows) for _, run_rows in part.groupby("run", sort=True)]
        for level in sorted(lv for lv in part["level"].unique() if lv != 0):
            diffs = [d for d in (_against_dense(t, level, sign) for t in tables) if len(d)]
            if not diffs:
                continue  # no dense level (or no item measured at both levels)
            delta, lo, hi = mean_ci(diffs, n_boot, confidence, seeded_rng("vs dense", *key, level))
            sparsity = float(part.loc[part["level"] == level, "sparsity"].mean())
            rows.append((*key, int(level), sparsity, better, delta, lo, hi,
                         int(sum(len(d) for d in diffs)), len(diffs)))
    columns = ["group", *KEY, "level", "sparsity", "better", "delta", "ci_low", "ci_high", "n_items",
               "n_seeds"]
    return pd.DataFrame(rows, columns=columns)


def accuracy_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` (records, summaries or comparisons) holding the reference accuracy:
    the accuracy suite's, on the test split for each group (or run) that has one — a run on
    ImageNet has only its validation split."""
    acc = table[(table["suite"] == ACCURACY["suite"]) & (table["metric"] == ACCURACY["metric"])]
    key = next((k for k in ("group", "run") if k in acc.columns), None)
    is_test = acc["dataset"] == "test"
    if key is None:
        return acc[is_test] if is_test.any() else acc
    group_has_test = is_test.groupby(acc[key]).transform("any")
    return acc[is_test | ~group_has_test]


def sweet_spots(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Naive and confirmed sweet spots from :func:`compare_to_dense` (rule in the module docstring).

    Columns: ``group, *KEY, level, sparsity, better, delta, ci_low, ci_high, n_items, n_seeds,
    acc_delta, acc_ci_low, acc_ci_high, status`` (``confirmed`` or ``naive``).
    """
    acc = accuracy_rows(comparisons).drop_duplicates(["group", "level"])
    acc = acc[["group", "level", "delta", "ci_low", "ci_high"]].rename(
        columns={"delta": "acc_delta", "ci_low": "acc_ci_low", "ci_high": "acc_ci_high"})
    is_acc = (comparisons["suite"] == ACCURACY["suite"]) & (comparisons["metric"] == ACCURACY["metric"])
    spots = comparisons[~is_acc].merge(acc, on=["group", "level"], how="inner")
    spots = spots[(spots["delta"] > 0) & (spots["acc_delta"] > 0)].copy()
    confirmed = (spots["ci_low"] > 0) & (spots["acc_ci_low"] > 0)  # NaN bounds compare False
    spots["status"] = np.where(confirmed, "confirmed", "naive")
    return spots.reset_index(drop=True)
