"""Human-alignment metrics on the real human trials, against an independent computation.

The oracle below reads the vendored CSVs the way the benchmark does (pandas' own type inference,
then ``astype(str)``), uses the benchmark's exclusion list transcribed from
``modelvshuman/plotting/plot.py`` and scikit-learn's Cohen's kappa.
"""
import gzip
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from prunelens.alignment import (accuracy_by_condition, error_consistency, human_benchmark,
                                 human_datasets, human_reference, ood_accuracy, read_human_trials,
                                 read_trials, shape_bias, write_trials)
from prunelens.data.model_vs_human import CONDITIONS, DATASETS
from prunelens.errors import DataError

SHARED = Path("/work/shared/data/model-vs-human")
RAW = resources.files("prunelens.alignment") / "human_data" / "raw-data"
EXCLUDE = {  # model-vs-human plot.py EXCLUDE_CONDITIONS
    "colour": ["cr"], "contrast": ["c100", "c03", "c01"],
    "high-pass": ["inf", "0.55", "0.45", "0.4"], "low-pass": ["0", "15", "40"],
    "phase-scrambling": ["0", "150", "180"], "power-equalisation": ["0"], "false-colour": ["True"],
    "rotation": ["0"], "eidolonI": ["1-10-10", "64-10-10", "128-10-10"],
    "eidolonII": ["1-3-10", "32-3-10", "64-3-10", "128-3-10"],
    "eidolonIII": ["1-0-10", "16-0-10", "32-0-10", "64-0-10", "128-0-10"],
    "uniform-noise": ["0.0", "0.6", "0.9"],
}


def _oracle_read(dataset):
    frames = []
    for f in sorted(RAW.joinpath(dataset).iterdir(), key=lambda f: f.name):
        with f.open("rb") as h:
            df = pd.read_csv(h, compression="gzip")
        df.columns = [c.lower() for c in df.columns]
        frames.append(df)
    df = pd.concat(frames)
    df["condition"] = df["condition"].astype(str)
    name = df["imagename"].str.split("_")
    df["iid"] = [f"{p[-2]}_{p[-1]}" if p[-2].startswith("n0") else p[-1] for p in name]
    df["ok"] = df["object_response"] == df["category"]
    return df[~df["condition"].isin(EXCLUDE.get(dataset, []))]


def _oracle_vs_humans(model, humans):
    """Per human: per condition metrics, mean over conditions; then mean over humans."""
    per_human = []
    for _, h in humans.groupby("subj"):
        rows = []
        for cond, hc in h.groupby("condition"):
            mc = model[model["condition"] == cond].set_index("iid").loc[hc["iid"]]
            a, b = mc["ok"].to_numpy(), hc["ok"].to_numpy()
            obs = np.mean(a == b)
            kappa = 1.0 if obs == 1 else cohen_kappa_score(a, b)
            rows.append(((a.mean() - b.mean()) ** 2, obs, kappa))
        per_human.append(np.mean(rows, axis=0))
    return np.mean(per_human, axis=0)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared copy of model-vs-human is not mounted")
def test_vendored_human_data_is_byte_identical_to_the_source():
    files = sorted((SHARED / "raw-data").glob("*/*.csv"))
    assert len(files) == 90
    for f in files:
        vendored = RAW.joinpath(f.parent.name, f.name + ".gz").read_bytes()
        assert gzip.decompress(vendored) == f.read_bytes(), f.name
    ours = resources.files("prunelens.alignment") / "human_data" / "imagenet16_indices.json"
    assert ours.read_bytes() == (SHARED / "imagenet16_indices.json").read_bytes()


def test_read_human_trials_of_all_datasets():
    assert human_datasets() == list(DATASETS)
    total = 0
    for name in DATASETS:
        t = read_human_trials(name)
        total += len(t)
        assert {"subj", "condition", "category", "object_response", "imagename", "image_id"} <= set(t.columns)
        conds, _ = CONDITIONS[name]
        if conds:  # the spelling of the benchmark's condition lists, for every dataset
            assert set(t["condition"]) == set(conds), name
        assert (t["dataset"] == name).all()
    assert total == 85_120
    colour = read_human_trials("colour")
    assert (colour["object_response"] == "na").sum() == 26  # kept as text, counted wrong


def test_read_trials_from_file_or_folder_and_write_round_trip(tmp_path):
    humans = read_human_trials("uniform-noise")
    one = humans[humans["subj"] == "subject-02"].copy()
    one["condition"] = one["condition"].replace({"0.9": "0.90"})  # as the raw files spell it
    path = write_trials(tmp_path / "uniform-noise" / "uniform-noise_subject-02_session_1.csv", one)
    back = read_trials(path)
    assert list(pd.read_csv(path).columns) == ["subj", "session", "trial", "rt", "object_response",
                                               "category", "condition", "imagename"]
    pd.testing.assert_frame_equal(back.drop(columns="session").reset_index(drop=True),
                                  humans[humans["subj"] == "subject-02"].drop(columns="session")
                                  .reset_index(drop=True), check_like=True)
    assert len(read_trials(tmp_path / "uniform-noise")) == len(one)
    with pytest.raises(DataError, match="lacks column"):
        (tmp_path / "bad_x.csv").write_text("subj,trial\ns,1\n")
        read_trials(tmp_path / "bad_x.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_trials(tmp_path / "nothing.csv")
    (tmp_path / "empty_x.csv").write_text("")
    with pytest.raises(DataError, match="cannot read trials file"):
        read_trials(tmp_path / "empty_x.csv")


def test_error_consistency_hand_worked_case():
    # 10 trials: A right on 6, B right on 5, they agree on 7 -> c_exp = .6*.5 + .4*.5 = .5
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    b = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0], bool)
    r = error_consistency(a, b)
    assert r["expected_consistency"] == pytest.approx(0.5)
    assert r["observed_consistency"] == pytest.approx(0.7)
    assert r["error_consistency"] == pytest.approx(0.4)  # (.7 - .5) / (1 - .5)
    # identical observers: kappa 1, also when both are always right (c_exp = 1)
    assert error_consistency(a, a)["error_consistency"] == 1.0
    assert error_consistency(np.ones(4, bool), np.ones(4, bool))["error_consistency"] == 1.0


def test_error_consistency_equals_cohens_kappa():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(50) < rng.random(), rng.random(50) < rng.random()
        if (a == b).all():
            continue
        assert error_consistency(a, b)["error_consistency"] == pytest.approx(cohen_kappa_score(a, b))


@pytest.mark.parametrize("dataset", DATASETS)
def test_one_subject_as_the_model_matches_an_independent_computation(dataset):
    trials = read_human_trials(dataset)
    model = trials[trials["subj"] == "subject-01"]
    got = human_benchmark(model, trials).set_index("metric")["value"]
    oracle = _oracle_read(dataset)
    o_model, o_humans = oracle[oracle["subj"] == "subject-01"], oracle[oracle["subj"] != "subject-01"]
    acc_diff, obs, kappa = _oracle_vs_humans(o_model, o_humans)
    assert got["accuracy"] == pytest.approx(o_model["ok"].mean(), abs=1e-12)
    assert got["accuracy_difference"] == pytest.approx(acc_diff, abs=1e-12)
    assert got["observed_consistency"] == pytest.approx(obs, abs=1e-12)
    assert got["error_consistency"] == pytest.approx(kappa, abs=1e-12)


def test_a_subject_is_fully_consistent_with_itself():
    for dataset in ("contrast", "cue-conflict", "sketch"):
        trials = read_human_trials(dataset)
        me = trials[trials["subj"] == "subject-03"]
        got = human_benchmark(me.assign(subj="model"), me).set_index("metric")["value"]
        assert got["error_consistency"] == 1.0 and got["observed_consistency"] == 1.0
        assert got["accuracy_difference"] == 0.0


def test_ood_accuracy_pools_the_non_excluded_conditions():
    rows = [("c100", "cat", "cat")] * 4 + [("c50", "cat", "cat")] * 3 + [("c50", "cat", "dog")] \
        + [("c10", "dog", "na")] * 2 + [("c01", "dog", "dog")]
    trials = pd.DataFrame(rows, columns=["condition", "category", "object_response"]).assign(
        dataset="contrast", subj="m", imagename=[f"{i}.png" for i in range(len(rows))])
    # c100 and c01 excluded; c50: 3/4 right, c10: 0/2 -> pooled 3/6 (a mean per condition gives 3/8)
    assert ood_accuracy(trials)["contrast"] == pytest.approx(0.5)
    by_cond = accuracy_by_condition(trials).set_index("condition")
    assert by_cond.loc["c50", "accuracy"] == 0.75 and by_cond.loc["c10", "n"] == 2


def test_shape_bias_drops_agreeing_cues_and_ignores_other_answers():
    names = ["0_a_s_0_cat_00_cat1-dog2.png", "1_a_s_0_cat_00_cat3-dog1.png",
             "2_a_s_0_dog_00_dog1-cat1.png", "3_a_s_0_cat_00_cat1-cat2.png",
             "4_a_s_0_car_00_car1-bird4.png"]
    trials = pd.DataFrame({"imagename": names, "category": ["cat", "cat", "dog", "cat", "car"],
                           "object_response": ["cat", "dog", "dog", "cat", "oven"]})
    # shape hits: rows 0, 2; texture hits: row 1; row 3 has no conflict; row 4 hits neither
    assert shape_bias(trials) == pytest.approx(2 / 3)
    texture = pd.Series(["dog", "dog", "cat", "cat", "bird"])
    assert shape_bias(trials, texture) == pytest.approx(2 / 3)
    assert math.isnan(shape_bias(trials.iloc[[3, 4]]))


def test_shape_bias_of_humans_matches_an_independent_count():
    trials = read_human_trials("cue-conflict")
    tex = trials["imagename"].str.extract(r"-([a-z]+)\d*\.png$")[0]
    conflict = trials[trials["category"] != tex]
    shape = (conflict["object_response"] == conflict["category"]).sum()
    texture = (conflict["object_response"] == tex[conflict.index]).sum()
    assert shape_bias(trials) == pytest.approx(shape / (shape + texture))
    assert 0.9 < shape_bias(trials) < 1.0  # humans are strongly shape-biased (Geirhos et al. 2019)


def test_human_reference_is_the_mean_over_pairs_of_subjects():
    trials = read_human_trials("colour")
    oracle = _oracle_read("colour")
    subjects = sorted(oracle["subj"].unique())
    pairs = [_oracle_vs_humans(oracle[oracle["subj"] == a], oracle[oracle["subj"] == b])
             for i, a in enumerate(subjects) for b in subjects[i + 1:]]
    ref = human_reference(trials).set_index("metric")["value"]
    np.testing.assert_allclose([ref["accuracy_difference"], ref["observed_consistency"],
                                ref["error_consistency"]], np.mean(pairs, axis=0), atol=1e-12)
    assert ref["accuracy"] == pytest.approx(oracle["ok"].mean())


def test_human_benchmark_needs_the_same_images():
    trials = read_human_trials("edge")
    model = trials[trials["subj"] == "subject-01"].iloc[1:]
    with pytest.raises(DataError, match="do not cover the same images"):
        human_benchmark(model.assign(subj="model"), trials)
    twice = pd.concat([model, model.iloc[:1]]).assign(subj="model")
    with pytest.raises(DataError, match="several trials"):
        human_benchmark(twice, trials)
    with pytest.raises(DataError, match="no human trials"):
        human_benchmark(model.assign(subj="model", dataset="other"), trials)
