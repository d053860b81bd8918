"""Human-alignment metrics of model-vs-human (Geirhos et al., NeurIPS 2021), on trials tables.

Definitions and aggregation follow the benchmark (``modelvshuman/plotting/analyses.py`` and
``plotting/plot.py``):

* accuracy: fraction of trials with ``object_response == category`` (``na`` is wrong);
* OOD accuracy of a dataset: accuracy over all its trials in the non-excluded conditions
  (:data:`~prunelens.data.model_vs_human.CONDITIONS`), pooled, not averaged per condition;
* dataset accuracy: accuracy over every trial of a dataset, all conditions pooled, as the
  toolbox's evaluator counts it (``evaluation/metrics.py`` ``Accuracy``), the number Cassano et
  al.'s Figure 6 plots;
* for a model against each human subject, per non-excluded condition: accuracy difference
  (acc_model − acc_human)², observed consistency (fraction of trials, matched by image, that
  both get right or both get wrong) and error consistency (Cohen's κ of that agreement,
  Geirhos, Meding & Wichmann, NeurIPS 2020, eq. 1–3; κ = 1 when observed consistency is 1);
  each averaged over conditions, then over human subjects;
* shape bias (Geirhos et al., ICLR 2019) on cue-conflict: shape hits / (shape + texture hits),
  trials whose shape and texture categories agree dropped.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from prunelens.data.model_vs_human import CONDITIONS, benchmark_dataset, image_id, texture_category
from prunelens.errors import DataError

HUMAN_METRICS = ("accuracy_difference", "observed_consistency", "error_consistency")


def correct(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial's response is its category (``na`` and any non-category are wrong)."""
    return trials["object_response"] == trials["category"]


def ood_conditions(dataset: str) -> tuple[str, ...] | None:
    """The conditions a dataset's OOD/human metrics use; None: all its trials."""
    listed, excluded = CONDITIONS.get(benchmark_dataset(dataset), ((), ()))
    return tuple(c for c in listed if c not in excluded) if listed else None


def ood_selection(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials in non-excluded conditions (each row's dataset decides)."""
    allowed = {d: ood_conditions(d) for d in trials["dataset"].unique()}
    keep = [allowed[d] is None or c in allowed[d]
            for d, c in zip(trials["dataset"], trials["condition"])]
    return trials[np.asarray(keep, dtype=bool)]


def accuracy_by_condition(trials: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and number of trials per (dataset, condition)."""
    frame = trials.assign(correct=correct(trials).astype(float))
    out = frame.groupby(["dataset", "condition"], sort=False)["correct"].agg(["mean", "size"])
    return out.rename(columns={"mean": "accuracy", "size": "n"}).reset_index()


def ood_accuracy(trials: pd.DataFrame) -> pd.Series:
    """OOD accuracy per dataset: accuracy pooled over the trials of its non-excluded conditions."""
    selected = ood_selection(trials)
    return correct(selected).groupby(selected["dataset"], sort=False).mean().rename("ood_accuracy")


def dataset_accuracy(trials: pd.DataFrame) -> pd.Series:
    """Accuracy per dataset over every trial, all conditions pooled (excluded ones included).

    The model-vs-human toolbox's evaluator (``model_evaluator.py`` ``_pytorch_evaluator``) feeds
    every batch of a dataset's loader to ``Accuracy.update`` (``evaluation/metrics.py``: the
    number of targets in the top-1 decision over the number of predictions) and writes its
    ``value`` per dataset (``print_performance_to_csv``); Cassano et al. plot that value per
    dataset and pruning step (``mvh_performance_plot.py``). Its loader yields every image of every
    ``dnn/session-*`` folder (or category folder), the stimuli
    :func:`prunelens.data.model_vs_human.list_stimuli` reads, so the per-trial ``accuracy``
    records pooled by dataset give the same number (tests/test_figure6.py).
    """
    return correct(trials).groupby(trials["dataset"], sort=False).mean().rename("dataset_accuracy")


def shape_bias(trials: pd.DataFrame, texture: pd.Series | None = None) -> float:
    """Shape hits / (shape hits + texture hits) over cue-conflict trials whose cues disagree.

    The texture category is read from the image name (``…_airplane1-bicycle2.png`` → bicycle)
    unless ``texture`` gives it per trial. NaN when no trial hits either cue.
    """
    tex = trials["imagename"].map(texture_category) if texture is None else texture
    conflict = trials["category"] != tex
    resp = trials["object_response"][conflict]
    shape_hits = int((resp == trials["category"][conflict]).sum())
    texture_hits = int((resp == tex[conflict]).sum())
    total = shape_hits + texture_hits
    return shape_hits / total if total else math.nan


def error_consistency(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Expected, observed and error consistency (Cohen's κ) of two observers' trial-wise correctness.

    Geirhos, Meding & Wichmann 2020: c_exp = p_a p_b + (1 − p_a)(1 − p_b) with p the accuracies,
    c_obs = fraction of equal outcomes, κ = (c_obs − c_exp) / (1 − c_exp), and κ = 1 if c_obs = 1.
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("need two equally long, non-empty sets of matched trials")
    pa, pb = a.mean(), b.mean()
    expected = pa * pb + (1 - pa) * (1 - pb)
    observed = float((a == b).mean())
    kappa = 1.0 if observed == 1.0 else (observed - expected) / (1 - expected)
    return {"expected_consistency": float(expected), "observed_consistency": observed,
            "error_consistency": float(kappa)}


def _matched(model: pd.DataFrame, human: pd.DataFrame, dataset: str, subj: str, human_subj: str
             ) -> pd.DataFrame:
    """Two observers' trials of one dataset's OOD conditions, joined by (condition,) image.

    As in the benchmark, both must hold exactly the same images, once each.
    """
    key = ["image_id"] if ood_conditions(dataset) is None else ["condition", "image_id"]
    for who, frame in ((subj, model), (human_subj, human)):
        dup = frame.duplicated(key)
        if dup.any():
            raise DataError(f"{dataset}: observer {who} has several trials of image "
                            f"{frame['image_id'][dup].iloc[0]}; one trial per image is expected")
    both = model.merge(human, on=key, how="outer", suffixes=("_m", "_h"), indicator=True)
    unmatched = both[both["_merge"] != "both"]
    if len(unmatched):
        side = {"left_only": subj, "right_only": human_subj}
        row = unmatched.iloc[0]
        where = f" in condition {row['condition']}" if "condition" in key else ""
        raise DataError(
            f"{dataset}: the trials of {subj} and {human_subj} do not cover the same images "
            f"({len(unmatched)} unmatched, e.g. {row['image_id']}{where}, seen only by "
            f"{side[row['_merge']]}); evaluate the model on the complete dataset")
    return both


def _per_condition(both: pd.DataFrame) -> pd.DataFrame:
    keys = both["condition"] if "condition" in both.columns else pd.Series("", index=both.index)
    rows = []
    for cond, group in both.groupby(keys, sort=False):
        cm, ch = group["correct_m"].to_numpy(), group["correct_h"].to_numpy()
        ec = error_consistency(cm, ch)
        rows.append({"condition": cond, "accuracy_difference": (cm.mean() - ch.mean()) ** 2,
                     "observed_consistency": ec["observed_consistency"],
                     "error_consistency": ec["error_consistency"]})
    return pd.DataFrame(rows)


def _outcomes(trials: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """image_id, (condition,) correct of the trials in the dataset's OOD conditions."""
    selected = ood_selection(trials)
    if "image_id" not in selected.columns:
        selected = selected.assign(image_id=selected["imagename"].map(image_id))
    cols = ["image_id"] if ood_conditions(dataset) is None else ["condition", "image_id"]
    return selected[cols].assign(correct=correct(selected).to_numpy())


def human_benchmark(model_trials: pd.DataFrame, human_trials: pd.DataFrame) -> pd.DataFrame:
    """Model-vs-human metrics per (observer, dataset): a tidy frame ``subj, dataset, metric, value``.

    ``model_trials`` may hold several observers (``subj``) and datasets; each is compared with
    every human subject of the same dataset in ``human_trials`` (except itself). Metrics:
    ``accuracy`` (OOD accuracy), ``accuracy_difference``, ``observed_consistency``,
    ``error_consistency``, aggregated as in the benchmark (module docstring).
    """
    rows = []
    for (subj, dataset), model in model_trials.groupby(["subj", "dataset"], sort=False):
        humans = human_trials[(human_trials["dataset"] == dataset) & (human_trials["subj"] != subj)]
        if humans.empty:
            raise DataError(f"no human trials of dataset '{dataset}' to compare {subj} with")
        accuracy = ood_accuracy(model)
        rows.append((subj, dataset, "accuracy", float(accuracy.iloc[0]) if len(accuracy) else math.nan))
        m = _outcomes(model, dataset)
        per_human = []
        for human_subj, human in humans.groupby("subj", sort=True):
            both = _matched(m, _outcomes(human, dataset), dataset, subj, human_subj)
            per_cond = _per_condition(both)
            per_human.append(per_cond[list(HUMAN_METRICS)].mean())  # mean over conditions
        means = pd.DataFrame(per_human).mean()                       # then over human subjects
        rows += [(subj, dataset, metric, float(means[metric])) for metric in HUMAN_METRICS]
    return pd.DataFrame(rows, columns=["subj", "dataset", "metric", "value"])


def human_reference(human_trials: pd.DataFrame) -> pd.DataFrame:
    """The same metrics for humans: each subject against the others, averaged over subjects.

    As the benchmark's "humans" entry: the mean over all pairs of subjects (the metrics are
    symmetric) and, for accuracy, the OOD accuracy pooled over all subjects' trials; plus
    ``dataset_accuracy`` (:func:`dataset_accuracy` of all subjects' trials, every condition), the
    humans' counterpart of the models' Figure 6 curves.
    """
    per_subject = human_benchmark(human_trials, human_trials)
    out = per_subject.groupby(["dataset", "metric"], sort=False)["value"].mean().reset_index()
    pooled = ood_accuracy(human_trials)
    out.loc[out["metric"] == "accuracy", "value"] = out.loc[out["metric"] == "accuracy", "dataset"].map(pooled)
    every = dataset_accuracy(human_trials)
    out = pd.concat([out, pd.DataFrame({"dataset": every.index, "metric": "dataset_accuracy",
                                        "value": every.to_numpy()})], ignore_index=True)
    return out.assign(subj="humans")[["subj", "dataset", "metric", "value"]]
