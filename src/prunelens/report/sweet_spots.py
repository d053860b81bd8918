"""Sweet spots: pruning levels where a metric and accuracy both beat the dense model, with error bars.

Cassano et al. call a sparsity a *sweet spot* when a representation metric and accuracy are both
above the dense model's; they read it off single runs. prunelens applies this rule:

For a metric ``m`` of a run (or of a *seed group*: runs whose configs differ only by ``seed``) and
a level ``L > 0``, with ``s = +1`` when higher ``m`` is better and ``s = -1`` when lower is better
(the direction table :data:`DIRECTIONS`)::

    Δm   = s · (mean_L(m) − mean_0(m))        Δacc = mean_L(acc) − mean_0(acc)

``acc`` is the accuracy suite's per-image test accuracy (``level.json`` test accuracy, one value per
level, for a run without it). ``L`` is a **naive** sweet spot for ``m``
when ``Δm > 0`` and ``Δacc > 0``. Each Δ gets a percentile-bootstrap CI (95 % by default) paired over
items: the per-item difference ``s·(m_L(i) − m_0(i))`` of the same image / neuron at both levels is
resampled; with several seeds, seeds are resampled first and the items within each drawn seed next
(two-stage bootstrap, seeds weighted equally). ``L`` is **confirmed** when both CI lower bounds are
> 0, otherwise it stays naive. A Δ with fewer than two resampling units (one run, one aggregate
value per level) has no CI, so its sweet spots can only be naive. The CIs are not corrected for the
number of (metric, level) pairs tested: about 1 in 40 true nulls passes each bound by chance.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

KEY = ("suite", "metric", "method", "dataset", "condition")
ACCURACY = {"suite": "accuracy", "metric": "accuracy"}
_CHUNK = 1 << 22  # bootstrap index draws generated per block (bounds memory to ~32 MB)


@dataclass(frozen=True)
class Direction:
    better: Literal["higher", "lower"] | None  # None: descriptive, never a sweet-spot criterion
    reason: str


DIRECTIONS: dict[str, Direction] = {
    "accuracy": Direction("higher", "share of images classified correctly"),
    "ood_accuracy": Direction("higher", "share of out-of-distribution images classified correctly"),
    "rma": Direction("higher", "share of attribution mass inside the object mask (Arras et al.)"),
    "rra": Direction("higher", "share of the top-|mask| attributed pixels that fall inside the mask"),
    "corloc": Direction("higher", "share of images whose LOST box overlaps an object with IoU ≥ 0.5"),
    "iou": Direction("higher", "overlap of the discovered box with the best-matching object"),
    "shape_bias": Direction("higher", "humans decide by shape (≈ 0.96, Geirhos et al.): higher is more "
                                      "human-like"),
    "accuracy_difference": Direction("lower", "gap between model and human accuracy: 0 is human level"),
    "observed_consistency": Direction("higher", "share of trials where model and humans are both right "
                                                "or both wrong"),
    "error_consistency": Direction("higher", "Cohen's κ of trial-wise errors against humans: more "
                                             "human-like errors"),
    "locality_score": Direction("higher", "local receptive fields emerge with pruning and go with "
                                          "denoised features (Pellegrini & Biroli)"),
    "locality_score_pooled": Direction("higher", "locality score of all units' pairs pooled"),
    "locality_score_dc": Direction("higher", "locality score of pairs across colour channels"),
    "local_pair_fraction": Direction(None, "share of pairs within r: read against its random baseline"),
    "inputs_connected_fraction": Direction(None, "falls with sparsity by construction"),
    "shift_similarity": Direction(None, "translation structure of the masks: descriptive"),
    "shift_similarity_random": Direction(None, "the same for random masks: a reference line"),
    "ablation_accuracy": Direction(None, "accuracy with chosen units zeroed: read as the accuracy drop"),
    "accuracy_drop": Direction(None, "which units matter, not a quality of the level"),
    "loss": Direction(None, "loss on the sharpness batch: the base of loss_increase"),
    "locality_baseline": Direction(None, "locality of a random mask of the same density: a reference "
                                         "line, not a property of the model"),
    "connections_per_unit": Direction(None, "falls with sparsity by construction"),
    "alive_units_fraction": Direction(None, "falls with sparsity by construction"),
    "psp_entropy": Direction("higher", "neurons less tied to single classes, as found for "
                                       "well-generalising gradual pruning (Tartaglione et al.)"),
    "loss_increase": Direction("lower", "loss rise under random weight noise: lower is a flatter "
                                        "minimum, the usual generalisation proxy (Keskar et al.)"),
    "hessian_top_eigenvalue": Direction("lower", "curvature along the sharpest direction: lower is "
                                                 "flatter"),
    "probe_accuracy": Direction("higher", "linear probe on frozen features, downstream task: transfer"),
    "fewshot_accuracy": Direction("higher", "probe on k downstream images per class: transfer"),
    "probe_regularization": Direction(None, "C chosen by cross-validation: how the probe was fitted"),
}


def direction_of(metric: str) -> Direction | None:
    """The direction of ``metric`` (None when prunelens does not know the metric)."""
    return DIRECTIONS.get(metric)


# ---- bootstrap ----------------------------------------------------------------------------------
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


def bootstrap_means(samples: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """Bootstrap distribution (``n_boot``,) of the mean of per-sample means.

    One sample: the ordinary (Efron) bootstrap over its items. Several samples (seeds): two-stage
    bootstrap (Davison & Hinkley 1997, §3.8) — draw samples with replacement, then resample the
    items of each drawn sample; samples are weighted equally.
    """
    if len(samples) == 1:
        return _item_means(samples[0], n_boot, rng)
    pick = rng.integers(0, len(samples), size=(n_boot, len(samples)))
    means = np.empty(pick.shape)
    for j, values in enumerate(samples):  # each slot that drew sample j: a fresh resample of its items
        slots = pick == j
        means[slots] = _item_means(values, int(slots.sum()), rng)
    return means.mean(axis=1)


def mean_ci(samples: Sequence[np.ndarray], n_boot: int = 1000, confidence: float = 0.95,
            rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) of the mean of per-sample means; NaNs dropped.

    The CI is the percentile interval of :func:`bootstrap_means`; it is NaN with fewer than two
    resampling units (one sample of one value).
    """
    samples = [v[~np.isnan(v)] for v in (np.asarray(x, dtype=float) for x in samples)]
    samples = [v for v in samples if len(v)]
    if not samples:
        return (math.nan, math.nan, math.nan)
    mean = float(np.mean([v.mean() for v in samples]))
    if len(samples) == 1 and len(samples[0]) < 2:
        return (mean, math.nan, math.nan)
    draws = bootstrap_means(samples, n_boot, rng if rng is not None else np.random.default_rng(0))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return (mean, float(lo), float(hi))


# ---- per-level summaries and comparisons with the dense level -----------------------------------
def run_groups(frame: pd.DataFrame, groups: Mapping[str, str] | None) -> pd.Series:
    """The group label of every row (its run's name where ``groups`` does not name the run)."""
    runs = frame["run"].astype(str)
    return runs.map(lambda run: groups.get(run, run)) if groups else runs


def group_summary(frame: pd.DataFrame, groups: Mapping[str, str] | None = None, n_boot: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per (group, suite, metric, method, dataset, condition, level): mean and bootstrap CI.

    ``groups`` maps run name → group label (runs of one seed group share a label); each run is one
    seed sample of its group. Columns: ``group, *KEY, level, sparsity, mean, ci_low, ci_high, n,
    n_nan, n_seeds``.
    """
    rng = np.random.default_rng(seed)
    frame = frame.assign(group=run_groups(frame, groups))
    rows = []
    for key, part in frame.groupby(["group", *KEY, "level"], sort=True):
        samples = [g["value"].to_numpy(dtype=float) for _, g in part.groupby("run", sort=True)]
        mean, lo, hi = mean_ci(samples, n_boot, confidence, rng)
        values = part["value"].to_numpy(dtype=float)
        rows.append((*key, float(part["sparsity"].mean()), mean, lo, hi,
                     int((~np.isnan(values)).sum()), int(np.isnan(values).sum()), len(samples)))
    columns = ["group", *KEY, "level", "sparsity", "mean", "ci_low", "ci_high", "n", "n_nan", "n_seeds"]
    return pd.DataFrame(rows, columns=columns)


def _by_item(run_rows: pd.DataFrame) -> pd.DataFrame:
    """One run's values of one metric as an item × level table (duplicate rows averaged)."""
    return run_rows.pivot_table(index="item", columns="level", values="value", aggfunc="mean",
                                dropna=False)


def _paired_differences(table: pd.DataFrame, level: int, sign: int) -> np.ndarray:
    """``sign·(v_level(i) − v_0(i))`` for every item measured (not NaN) at both levels."""
    if level not in table.columns or 0 not in table.columns:
        return np.empty(0)
    return (sign * (table[level] - table[0])).dropna().to_numpy(dtype=float)


def compare_to_dense(frame: pd.DataFrame, groups: Mapping[str, str] | None = None,
                     n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Δ (direction applied, so > 0 is better) of every level vs level 0, with paired bootstrap CIs.

    Only metrics with a known direction are compared. Columns: ``group, *KEY, level, sparsity,
    better, delta, ci_low, ci_high, n_items, n_seeds``. See the module docstring for the rule.
    """
    rng = np.random.default_rng(seed)
    frame = frame.assign(group=run_groups(frame, groups))
    known = frame["metric"].map(lambda m: getattr(direction_of(m), "better", None)).notna()
    rows = []
    for key, part in frame[known].groupby(["group", *KEY], sort=True):
        better = direction_of(key[2]).better
        sign = 1 if better == "higher" else -1
        tables = [_by_item(run_rows) for _, run_rows in part.groupby("run", sort=True)]
        for level in sorted(lv for lv in part["level"].unique() if lv != 0):
            diffs = [_paired_differences(table, level, sign) for table in tables]
            diffs = [d for d in diffs if len(d)]
            if not diffs:
                continue  # no dense level (or no item measured at both levels)
            delta, lo, hi = mean_ci(diffs, n_boot, confidence, rng)
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
