"""Claims (prunelens.report.claims): statistics checked against direct scipy computations on the same
records, the bootstrap's seeds-levels-images resampling, Holm's correction, a planted effect that
must be found and a null that must not be."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from prunelens.report.claims import (COLUMNS, declared_claims, evaluate_claims, statistic_rows)
from prunelens.stats import bootstrap_p, curve_draws, draw_units, holm
from prunelens.suite import ACCURACY, SPARSITY, Claim, Quantity

FRAME_COLUMNS = ["run", "model", "level", "sparsity", "suite", "metric", "method", "dataset",
                 "condition", "item", "value"]
TOY = Claim("toy_vs_accuracy", "toy: the score falls as accuracy rises",
            y=Quantity("toy", ("score",)), x=ACCURACY, statistic="spearman", expected=-1)


def records(run: str, model: str, score_means, accuracy, *, n_items: int = 32, n_acc: int = 1000,
            sd: float = 0.2, seed: int = 0, suite: str = "toy", metric: str = "score",
            method: str = "m") -> pd.DataFrame:
    """A run's records: per level, ``n_acc`` 0/1 accuracies with mean ``accuracy[l]`` and
    ``n_items`` normal scores around ``score_means[l]``."""
    rng = np.random.default_rng(seed)
    rows = []
    for level, (mu, p) in enumerate(zip(score_means, accuracy)):
        sparsity = 1 - 0.6 ** level
        acc = (rng.random(n_acc) < p).astype(float)
        rows += [(run, model, level, sparsity, "accuracy", "accuracy", "", "test", "", f"a{i}", v)
                 for i, v in enumerate(acc)]
        rows += [(run, model, level, sparsity, suite, metric, method, "synthetic", "", f"i{i}", v)
                 for i, v in enumerate(rng.normal(mu, sd, n_items))]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def level_means(frame: pd.DataFrame, suite: str, metric: str) -> pd.Series:
    rows = frame[(frame["suite"] == suite) & (frame["metric"] == metric)]
    return rows.groupby(["run", "level"])["value"].mean().groupby("level").mean()


ACC = np.linspace(0.9, 0.6, 7)


# ---- the statistics themselves ---------------------------------------------------------------------
def test_vectorised_statistics_equal_scipy_row_by_row():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(50, 7)).astype(float)  # ties, as level resamples make them
    y = rng.normal(size=(50, 7))
    x[0] = 1.0  # a constant row: undefined
    for name, reference in (("spearman", lambda a, b: sps.spearmanr(a, b).statistic),
                            ("pearson", lambda a, b: sps.pearsonr(a, b).statistic),
                            ("slope", lambda a, b: sps.linregress(a, b).slope)):
        got = statistic_rows(name, x, y)
        assert math.isnan(got[0])
        np.testing.assert_allclose(got[1:], [reference(a, b) for a, b in zip(x[1:], y[1:])],
                                   rtol=1e-10, atol=1e-12)


def test_holm_matches_a_hand_worked_case():
    # sorted: 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → kept monotone: 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, math.nan]), [0.03, 0.06, 0.06, math.nan])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])


def test_bootstrap_p_is_the_level_at_which_the_interval_excludes_zero():
    assert bootstrap_p(np.linspace(0.1, 1, 999)) == pytest.approx(2 / 1000)
    assert bootstrap_p(np.linspace(-1, 1, 1001)) == 1.0
    draws = np.random.default_rng(0).normal(1.5, 1, 4000)
    assert bootstrap_p(draws) == pytest.approx(2 * (np.sum(draws <= 0) + 1) / 4001)


def test_curve_draws_keep_a_seed_whole_across_levels():
    # one value per (seed, level): item resampling is the identity, so each replicate's level mean
    # is the mean of the drawn seeds' values — the same seeds at every level
    samples = [[np.array([1.0]), np.array([2.0]), np.array([3.0])],
               [np.array([10.0]), np.array([20.0]), np.array([30.0])]]
    rng = np.random.default_rng(0)
    seeds = draw_units(2, 200, rng)
    got = curve_draws(samples, seeds, rng)
    table = np.array([[v[0] for v in seed] for seed in samples])
    np.testing.assert_allclose(got, table[seeds].mean(axis=1))


# ---- values against a direct computation on the same records ------------------------------------------
def test_correlation_and_slope_equal_scipy_on_the_level_means():
    frame = records("cnn", "small_resnet", np.linspace(0.3, 0.6, 7) + [0, .05, -.02, .03, 0, .01, 0],
                    ACC)
    slope = Claim("toy_slope", "toy slope", y=Quantity("toy", ("score",)), x=SPARSITY,
                  statistic="slope", expected=1)
    out = evaluate_claims(frame, n_boot=200, claims=[("toy", TOY), ("toy", slope)]).set_index("claim")
    score, acc = level_means(frame, "toy", "score"), level_means(frame, "accuracy", "accuracy")
    sparsity = frame.groupby("level")["sparsity"].first()
    assert out.loc["toy_vs_accuracy", "value"] == pytest.approx(sps.spearmanr(acc, score).statistic)
    assert out.loc["toy_slope", "value"] == pytest.approx(sps.linregress(sparsity, score).slope)
    assert out.loc["toy_vs_accuracy", "n_levels"] == 7 and out.loc["toy_vs_accuracy", "n_items"] == 7 * 32
    assert list(out.reset_index().columns) == COLUMNS


def test_level_bootstrap_interval_agrees_with_scipy_bootstrap():
    """One value per level: the claim's interval is the paired percentile bootstrap over levels,
    which ``scipy.stats.bootstrap`` computes independently."""
    rng = np.random.default_rng(3)
    score = np.linspace(0, 1, 10) + rng.normal(0, 0.3, 10)
    acc = np.linspace(0.9, 0.5, 10)
    rows = []
    for level in range(10):
        rows.append(("r", "small_resnet", level, level / 10, "toy", "score", "", "", "", "", score[level]))
        rows.append(("r", "small_resnet", level, level / 10, "accuracy", "accuracy", "", "test", "", "",
                     acc[level]))
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    claim = Claim("toy_pearson", "toy", y=Quantity("toy", ("score",)), x=ACCURACY,
                  statistic="pearson", expected=-1)
    got = evaluate_claims(frame, n_boot=4000, claims=[("toy", claim)]).iloc[0]
    ref = sps.bootstrap((acc, score), lambda a, b, axis: sps.pearsonr(a, b, axis=axis).statistic,
                        paired=True, vectorized=True, n_resamples=4000, method="percentile",
                        random_state=np.random.default_rng(0)).confidence_interval
    assert got["value"] == pytest.approx(sps.pearsonr(acc, score).statistic)
    assert got["ci_low"] == pytest.approx(ref.low, abs=0.03)
    assert got["ci_high"] == pytest.approx(ref.high, abs=0.03)
    assert got["resampled"] == "levels › images"


def test_seeds_are_replicates_of_their_group():
    a = records("cnn-s0", "small_resnet", np.linspace(0.3, 0.6, 7), ACC, seed=0)
    b = records("cnn-s1", "small_resnet", np.linspace(0.2, 0.7, 7), ACC, seed=1)
    frame = pd.concat([a, b], ignore_index=True)
    groups = {"cnn-s0": "cnn (seeds 0, 1)", "cnn-s1": "cnn (seeds 0, 1)"}
    row = evaluate_claims(frame, groups, n_boot=300, claims=[("toy", TOY)]).iloc[0]
    assert row["compared"] == "cnn (seeds 0, 1)" and row["n_seeds"] == 2
    assert row["resampled"] == "seeds › levels › images"
    # the level mean is the mean of the seeds' means
    expected = sps.spearmanr(level_means(frame, "accuracy", "accuracy"),
                             level_means(frame, "toy", "score")).statistic
    assert row["value"] == pytest.approx(expected)


def test_runs_compared_by_family_and_by_size():
    cnn = records("cnn", "small_resnet", np.linspace(0.6, 0.3, 7), ACC, seed=0)
    vit = records("vit", "small_vit", np.linspace(0.3, 0.6, 7), ACC, seed=1)
    frame = pd.concat([cnn, vit], ignore_index=True)
    family = Claim("fam", "toy by family", y=Quantity("toy", ("score",)), x=ACCURACY,
                   family_expected=(("resnet", -1), ("vit", 1)), between="family")
    size = Claim("size", "toy by size", y=Quantity("toy", ("score",)), x=SPARSITY, statistic="slope",
                 between="size", between_expected=1)
    out = evaluate_claims(frame, n_boot=300, facts={"cnn": {"size": 5000}, "vit": {"size": 1000}},
                          claims=[("toy", family), ("toy", size)])
    fam = out[out["claim"] == "fam"].set_index("compared")
    assert fam.loc["cnn − vit", "value"] == pytest.approx(fam.loc["cnn", "value"] - fam.loc["vit", "value"])
    assert fam.loc["cnn", "expected"] == "−" and fam.loc["vit", "expected"] == "+"
    assert fam.loc["cnn − vit", "expected"] == "−"   # sign(−1 − (+1))
    assert fam.loc["cnn", "verdict"] == "contradicted"  # the cnn's score falls with accuracy: ρ > 0
    siz = out[out["claim"] == "size"].set_index("compared")
    assert list(siz.index) == ["cnn", "vit", "vit − cnn"]  # smaller − larger
    assert siz.loc["cnn", "verdict"] == "descriptive"
    sparsity = cnn.groupby("level")["sparsity"].first()
    slopes = {run: sps.linregress(sparsity, level_means(f, "toy", "score")).slope
              for run, f in (("cnn", cnn), ("vit", vit))}
    assert siz.loc["vit − cnn", "value"] == pytest.approx(slopes["vit"] - slopes["cnn"])
    assert siz.loc["vit − cnn", "verdict"] == "supported"


def test_too_few_levels_is_not_tested():
    frame = records("cnn", "small_resnet", [0.3, 0.5], [0.9, 0.8])
    row = evaluate_claims(frame, n_boot=100, claims=[("toy", TOY)]).iloc[0]
    assert row["verdict"] == "not tested" and "needs 3" in row["note"]


# ---- calibration: a planted effect is found, a null is not -------------------------------------------
def test_planted_effect_is_supported_and_the_declared_rq1_claim_reads_the_family():
    """Planted: the CNN's metric rises as accuracy falls (the negative ρ RQ1 predicts for CNNs), the
    ViT's falls with it (the positive ρ it predicts for ViTs)."""
    rising = np.linspace(0.2, 0.8, 7)
    frame = pd.concat([records("cnn", "small_resnet", rising, ACC, suite="interpretability",
                               metric="rma", method="gradcam"),
                       records("vit", "small_vit", rising[::-1], ACC, suite="interpretability",
                               metric="rma", method="gradcam", seed=1)], ignore_index=True)
    rq1 = [(s, c) for s, c in declared_claims() if c.id == "rq1_attribution_vs_accuracy"]
    out = evaluate_claims(frame, n_boot=1000, claims=rq1).set_index("compared")
    assert list(out["expected"]) == ["−", "+", "−"]
    assert list(out["verdict"]) == ["supported"] * 3
    assert out.loc["cnn", "value"] == pytest.approx(-1.0) and out.loc["vit", "value"] == pytest.approx(1.0)
    # the same rising curve on a ViT contradicts the claim
    vit = records("vit", "small_vit", rising, ACC, suite="interpretability", metric="rma",
                  method="gradcam")
    assert evaluate_claims(vit, n_boot=1000, claims=rq1)["verdict"].iloc[0] == "contradicted"


def test_a_null_pool_is_rarely_called_supported():
    """40 seeded pools whose level means are drawn at random, unrelated to accuracy (large level
    effects: the case an image-only interval would call "supported" about a third of the time)."""
    supported = 0
    for seed in range(40):
        means = 0.5 + np.random.default_rng(1000 + seed).normal(0, 0.3, 7)
        frame = records("null", "small_resnet", means, ACC, seed=seed)
        verdict = evaluate_claims(frame, n_boot=500, claims=[("toy", TOY)])["verdict"].iloc[0]
        supported += verdict == "supported"
    assert supported <= 4


# ---- the command line --------------------------------------------------------------------------------
def test_cli_prints_the_claims_and_writes_csv(tmp_path, capsys):
    from test_report import make_run

    from prunelens.cli import main
    from prunelens.report import build_claims

    run_dir, frame = make_run(tmp_path, "run-a")
    table = build_claims([run_dir])
    assert set(table["claim"]) == {"rq1_attribution_vs_accuracy", "locality_vs_accuracy", "rq3_ood_slope"}
    rma = table[(table["metric"] == "rma") & (table["method"] == "gradcam")].iloc[0]
    assert rma["value"] == pytest.approx(sps.spearmanr(level_means(frame, "accuracy", "accuracy"),
                                                       level_means(frame, "interpretability", "rma")
                                                       ).statistic)
    assert main(["claims", str(run_dir), "-o", str(tmp_path / "claims.csv")]) == 0
    printed = capsys.readouterr().out
    assert "Holm" in printed and "rq3_ood_slope" in printed and "verdict" in printed
    written = pd.read_csv(tmp_path / "claims.csv", keep_default_na=False)
    assert list(written["verdict"]) == list(table["verdict"])
    np.testing.assert_allclose(pd.to_numeric(written["value"]), table["value"])
    assert main(["claims", str(run_dir), "--csv"]) == 0
    assert capsys.readouterr().out == table.to_csv(index=False)


def test_one_shot_minus_gradual_at_equal_sparsity():
    """Tartaglione et al.: the declared accuracy claim compares the final levels of a one-shot and a
    gradual pool that end at the same sparsity (and shows nothing for a pool without counterpart)."""
    gradual = records("grad", "small_resnet", np.zeros(4), [0.9, 0.88, 0.87, 0.86], seed=0)
    one_shot = records("shot", "small_resnet", np.zeros(2), [0.9, 0.80], seed=1)
    one_shot.loc[one_shot["level"] == 1, "sparsity"] = gradual["sparsity"].max()
    frame = pd.concat([gradual, one_shot], ignore_index=True)
    claim = [(s, c) for s, c in declared_claims() if c.id == "gradual_better_minima"]
    facts = {"grad": {"schedule": "gradual"}, "shot": {"schedule": "one_shot"}}
    out = evaluate_claims(frame, n_boot=1000, facts=facts, claims=claim).set_index("compared")
    assert list(out.index) == ["grad", "shot", "shot − grad"]
    acc = frame[frame["suite"] == "accuracy"]
    direct = (acc[(acc["run"] == "shot") & (acc["level"] == 1)]["value"].mean()
              - acc[(acc["run"] == "grad") & (acc["level"] == 3)]["value"].mean())
    row = out.loc["shot − grad"]
    assert row["value"] == pytest.approx(direct)
    assert row["expected"] == "−" and row["verdict"] == "supported"
    assert row["ci_low"] < direct < row["ci_high"] < 0
    assert evaluate_claims(gradual, n_boot=200, facts=facts, claims=claim).empty


def test_seeds_of_one_experiment_are_pooled_in_claims_and_counted_in_the_report(tmp_path):
    from test_report import make_run

    from prunelens.report import build_claims, build_report

    runs = [make_run(tmp_path, f"s{seed}", seed=seed)[0] for seed in (0, 1)]
    table = build_claims(runs)
    row = table[(table["claim"] == "rq1_attribution_vs_accuracy") & (table["metric"] == "rma")
                & (table["method"] == "gradcam")].iloc[0]
    assert row["compared"] == "s0 (seeds 0, 1)" and row["n_seeds"] == 2
    assert row["resampled"] == "seeds › levels › images"
    html = build_report(runs, tmp_path / "report").read_text()
    assert "s0 (seeds 0, 1): 2 seeds" in html and "at most 2 seed(s) per run" in html


def test_pool_above_its_random_mask_control_at_every_pruned_level():
    claim = [(s, c) for s, c in declared_claims() if c.id == "locality_above_random_mask"]
    facts = {"fcn": {}, "fcn-rm": {"control": "random_mask", "control_source": "fcn"}}

    def table(control_means):
        pool = records("fcn", "fcn", [1.0, 1.3, 1.5, 1.7], ACC[:4], suite="connectivity",
                       metric="locality_score", method="fc1", sd=0.1)
        control = records("fcn-rm", "fcn", control_means, ACC[:4], suite="connectivity",
                          metric="locality_score", method="fc1", sd=0.1, seed=1)
        frame = pd.concat([pool, control], ignore_index=True)
        out = evaluate_claims(frame, n_boot=1000, facts=facts, claims=claim)
        means = frame[frame["suite"] == "connectivity"].groupby(["run", "level"])["value"].mean()
        direct = min(means["fcn", lv] - means["fcn-rm", lv] for lv in (1, 2, 3))
        return out, direct

    out, direct = table([1.0, 1.0, 1.0, 1.0])
    assert list(out["compared"]) == ["fcn − fcn-rm"]  # only the pair, level 0 left out
    assert out["value"].iloc[0] == pytest.approx(direct) and out["n_levels"].iloc[0] == 3
    assert out["verdict"].iloc[0] == "supported"
    out, _ = table([1.0, 1.0, 1.0, 1.8])              # the control catches up at the last level
    assert out["verdict"].iloc[0] != "supported"
