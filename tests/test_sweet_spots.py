"""Sweet spots: paired / two-stage bootstrap CIs and the confirmed-vs-naive rule."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prunelens.config import resolve_runs
from prunelens.report.runs import seed_groups
from prunelens.report.sweet_spots import compare_to_dense, sweet_spots
from prunelens.stats import mean_ci, seeded_rng
from prunelens.stats import summarize
from prunelens.suite import metric_of

COLUMNS = ["run", "model", "level", "sparsity", "suite", "metric", "method", "dataset", "condition",
           "item", "value"]


def rows(run: str, level: int, suite: str, metric: str, values, method: str = "", dataset: str = "",
         items=None) -> list[tuple]:
    items = range(len(values)) if items is None else items
    return [(run, "m", level, 1 - 0.8 ** level, suite, metric, method, dataset, "", str(i), float(v))
            for i, v in zip(items, values)]


def frame(*parts) -> pd.DataFrame:
    return pd.DataFrame([r for part in parts for r in part], columns=COLUMNS)


def accuracy(run: str, level: int, correct_fraction: float, n: int = 400) -> list[tuple]:
    return rows(run, level, "accuracy", "accuracy", np.arange(n) < correct_fraction * n, dataset="test")


def test_single_sample_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    d = rng.normal(0.2, 1.0, 80)
    mean, lo, hi = mean_ci([d], 20000, 0.95, np.random.default_rng(2))
    ref = stats.bootstrap((d,), np.mean, n_resamples=20000, method="percentile",
                          random_state=np.random.default_rng(3)).confidence_interval
    width = ref.high - ref.low
    assert mean == pytest.approx(d.mean())
    assert lo == pytest.approx(ref.low, abs=0.03 * width)
    assert hi == pytest.approx(ref.high, abs=0.03 * width)


def test_ci_coverage_with_known_effect():
    """A 95 % paired CI of a known mean difference covers it about 95 % of the time."""
    rng = np.random.default_rng(0)
    effect, hits, reps = 0.3, 0, 400
    for _ in range(reps):
        dense = rng.normal(0, 2, 40)                     # item effects shared by both levels
        pruned = dense + effect + rng.normal(0, 1, 40)
        _, lo, hi = mean_ci([pruned - dense], 500, 0.95, rng)
        hits += lo <= effect <= hi
    assert 0.90 <= hits / reps <= 0.98


def test_two_stage_coverage_with_seed_variance():
    """With seed-to-seed variance, seeds must be resampled: pooling items undercovers badly."""
    rng = np.random.default_rng(0)
    effect, reps, seeds, n = 0.3, 300, 8, 30
    two_stage = pooled = 0
    for _ in range(reps):
        samples = [effect + rng.normal(0, 0.5) + rng.normal(0, 1, n) for _ in range(seeds)]
        _, lo, hi = mean_ci(samples, 400, 0.95, rng)
        two_stage += lo <= effect <= hi
        _, lo, hi = mean_ci([np.concatenate(samples)], 400, 0.95, rng)
        pooled += lo <= effect <= hi
    assert two_stage / reps >= 0.85
    assert pooled / reps <= 0.70


def test_paired_difference_hand_worked():
    # items in a different order at the two levels, one item NaN at level 1 (dropped from the pair)
    f = frame(rows("r", 0, "discovery", "iou", [1.0, 2.0, 3.0, 4.0], items=["a", "b", "c", "d"]),
              rows("r", 1, "discovery", "iou", [5.0, 2.0, 2.0, np.nan], items=["c", "b", "a", "d"]))
    cmp = compare_to_dense(f, n_boot=200)
    (row,) = cmp.itertuples()
    assert row.delta == pytest.approx(((2 - 1) + (2 - 2) + (5 - 3)) / 3)
    assert row.n_items == 3 and row.n_seeds == 1 and row.better == "higher"


def test_lower_is_better_metric_sign():
    f = frame(rows("r", 0, "alignment", "accuracy_difference", [0.5, 0.7, 0.6]),
              rows("r", 1, "alignment", "accuracy_difference", [0.2, 0.3, 0.4]),
              accuracy("r", 0, 0.5), accuracy("r", 1, 0.8))
    cmp = compare_to_dense(f, n_boot=200)
    gap = cmp[cmp["metric"] == "accuracy_difference"].iloc[0]
    assert metric_of("alignment", "accuracy_difference").direction == "lower"
    assert gap["delta"] == pytest.approx(0.3)  # (0.5+0.7+0.6)/3 − (0.2+0.3+0.4)/3, sign flipped
    assert list(sweet_spots(cmp)["metric"]) == ["accuracy_difference"]


@pytest.mark.parametrize("suite,metric", [("sharpness", "loss_increase"),
                                          ("sharpness", "hessian_top_eigenvalue"),
                                          ("psp", "psp_entropy")])
def test_sharpness_and_psp_entropy_claim_no_sweet_spot(suite, metric):
    """Tartaglione et al. find good minima sharp: the tool asserts no direction for them."""
    f = frame(rows("r", 0, suite, metric, [0.5, 0.7, 0.6]), rows("r", 1, suite, metric, [0.2, 0.3, 0.4]),
              accuracy("r", 0, 0.5), accuracy("r", 1, 0.8))
    assert metric_of(suite, metric).direction == "none"
    cmp = compare_to_dense(f, n_boot=200)
    assert metric not in set(cmp["metric"]) and sweet_spots(cmp).empty


def test_confirmed_and_naive_sweet_spots():
    rng = np.random.default_rng(0)
    n = 200
    dense = rng.normal(0.5, 1.0, n)           # large item-to-item spread, shared across levels
    noise = rng.normal(0, 0.05, n)
    big = rng.normal(0, 0.6, n)
    f = frame(
        rows("r", 0, "interpretability", "rma", dense, method="gradcam"),
        # level 1: +0.1 on every item (small noise) → the paired CI excludes 0
        rows("r", 1, "interpretability", "rma", dense + 0.1 + noise - noise.mean(), method="gradcam"),
        # level 2: +0.01 on average, swamped by per-item noise → point estimate > 0, CI includes 0
        rows("r", 2, "interpretability", "rma", dense + 0.01 + big - big.mean(), method="gradcam"),
        # level 3: worse than dense → no sweet spot at all
        rows("r", 3, "interpretability", "rma", dense - 0.2, method="gradcam"),
        accuracy("r", 0, 0.50), accuracy("r", 1, 0.65), accuracy("r", 2, 0.65), accuracy("r", 3, 0.65))
    cmp = compare_to_dense(f, n_boot=2000)
    spots = sweet_spots(cmp).set_index("level")
    assert set(spots.index) == {1, 2}
    assert spots.loc[1, "status"] == "confirmed"
    assert spots.loc[1, "ci_low"] > 0 and spots.loc[1, "acc_ci_low"] > 0
    assert spots.loc[2, "status"] == "naive"
    assert spots.loc[2, "delta"] > 0 and spots.loc[2, "ci_low"] < 0
    # pairing is what confirms level 1: unpaired CIs of the two levels' means overlap widely
    _, lo1, _ = mean_ci([dense + 0.1 + noise - noise.mean()], 1000, 0.95, seeded_rng(1))
    _, _, hi0 = mean_ci([dense], 1000, 0.95, seeded_rng(0))
    assert lo1 < hi0


def test_accuracy_must_also_improve():
    f = frame(rows("r", 0, "discovery", "corloc", np.zeros(100)),
              rows("r", 1, "discovery", "corloc", np.ones(100)),
              accuracy("r", 0, 0.7), accuracy("r", 1, 0.6))
    assert sweet_spots(compare_to_dense(f, n_boot=200)).empty


def test_single_aggregate_has_no_ci_and_stays_naive():
    f = frame(rows("r", 0, "alignment", "shape_bias", [0.3], items=[""]),
              rows("r", 1, "alignment", "shape_bias", [0.4], items=[""]),
              accuracy("r", 0, 0.5), accuracy("r", 1, 0.9))
    spot = sweet_spots(compare_to_dense(f, n_boot=200)).iloc[0]
    assert spot["delta"] == pytest.approx(0.1)
    assert np.isnan(spot["ci_low"]) and spot["status"] == "naive"


def test_descriptive_and_unknown_metrics_are_not_compared():
    f = frame(rows("r", 0, "connectivity", "alive_units_fraction", [1.0], items=[""]),
              rows("r", 1, "connectivity", "alive_units_fraction", [0.9], items=[""]),
              rows("r", 0, "x", "mystery", [1.0]), rows("r", 1, "x", "mystery", [2.0]))
    assert compare_to_dense(f, n_boot=100).empty


def _run(name: str, seed: int, lr: float = 0.1, device: str = "cpu") -> SimpleNamespace:
    """What seed_groups reads of a run folder: its name, config and experiment hash."""
    config = resolve_runs({"name": name, "seed": seed, "model": {"name": "small_resnet"},
                           "train": {"lr": lr, "device": device}, "evaluate": {"device": "cpu"}})[0]
    return SimpleNamespace(name=name, config=config, experiment_hash=config.experiment_hash(),
                           class_names=None)


def test_seed_groups_pool_runs_that_differ_only_by_seed():
    # a runtime setting (the device) does not change the experiment: still a replicate
    runs = [_run("a-s0", 0), _run("a-s1", 1, device="auto"), _run("b", 0, lr=0.01)]
    groups = seed_groups(runs)
    assert groups["a-s0"] == groups["a-s1"] == "a-s0 (seeds 0, 1)"
    assert groups["b"] == "b"


def test_seed_group_comparison_resamples_seeds():
    # per-seed aggregates only (one value per level and seed): the CI comes from the seeds alone
    gains = [0.10, 0.12, 0.08, 0.11]
    parts = []
    for s, gain in enumerate(gains):
        parts += [rows(f"s{s}", 0, "alignment", "shape_bias", [0.3], items=[""]),
                  rows(f"s{s}", 1, "alignment", "shape_bias", [0.3 + gain], items=[""])]
    groups = {f"s{s}": "g" for s in range(len(gains))}
    (row,) = compare_to_dense(frame(*parts), groups, n_boot=4000).itertuples()
    assert row.n_seeds == 4 and row.group == "g"
    assert row.delta == pytest.approx(np.mean(gains))
    assert min(gains) <= row.ci_low < row.delta < row.ci_high <= max(gains)
    summary = summarize(frame(*parts), groups, n_boot=200)
    assert summary.loc[summary["level"] == 1, "mean"].item() == pytest.approx(0.3 + np.mean(gains))
    assert summary["n_seeds"].eq(4).all()


def test_reference_accuracy_split_is_chosen_per_group():
    import pandas as pd

    from prunelens.report.sweet_spots import accuracy_rows
    rows = pd.DataFrame({
        "group": ["cnn", "cnn", "imagenet"], "suite": ["accuracy"] * 3, "metric": ["accuracy"] * 3,
        "dataset": ["test", "val", "val"], "value": [1.0, 0.0, 1.0]})
    chosen = accuracy_rows(rows)
    assert sorted(zip(chosen["group"], chosen["dataset"])) == [("cnn", "test"), ("imagenet", "val")]
