"""Figure 6 of Cassano et al. (``alignment_datasets``): accuracy per model-vs-human dataset vs
pruning level, one line per dataset, one panel per model, and the humans' accuracy on request.

Reference: the model-vs-human toolbox's count of a dataset's accuracy, which the paper's
``mvh_performance_plot.py`` reads back per dataset and pruning step, transcribed below.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from conftest import hand_made_pool
from prunelens.alignment import human_reference, ood_accuracy, read_human_trials
from prunelens.alignment.suite import HUMAN_REFERENCE_FILE, level_records
from prunelens.data.model_vs_human import CATEGORIES
from prunelens.report.figures import _at_resolution, _draw, _fit_lines, _rows, plots_for
from prunelens.report.runs import figure_references
from prunelens.results import write_level
from prunelens.stats import summarize

DATASETS = ("colour", "contrast", "sketch")   # excluded conditions (cr; c100, c03, c01) and none
LEVELS = 3
GROUPS = {"resnet18": "resnet18", "resnet50": "resnet50"}


def toolbox_accuracy(responses: list[str], targets: list[str], batch_size: int = 7) -> float:
    """A transcription of the model-vs-human toolbox (bethgelab/model-vs-human, commit 2921634):
    ``model_evaluator.py`` ``ModelEvaluator._pytorch_evaluator`` calls ``metric.update(predictions,
    batch_targets, paths)`` for every batch of the dataset's loader, every image of every
    condition; ``evaluation/metrics.py`` ``Accuracy.update``: ``correct = [t in p[:self.topk] for
    t, p in zip(targets, predictions)]``, ``self._sum += np.sum(correct)``, ``self._count +=
    len(predictions)``; ``Accuracy.value``: ``self._sum / self._count`` (0 when empty), written per
    dataset by ``print_performance_to_csv``. ``predictions`` are ranked category lists; the top-1
    entry is the trial's ``object_response``."""
    total, count = 0, 0
    for start in range(0, len(responses), batch_size):
        predictions = [[r] for r in responses[start:start + batch_size]]
        batch_targets = targets[start:start + batch_size]
        correct = [t in p[:1] for t, p in zip(batch_targets, predictions)]
        total += np.sum(correct)
        count += len(predictions)
    return 0 if count == 0 else total / count


def _model_trials(dataset: str, subj: str, skill: float, rng: np.random.Generator) -> pd.DataFrame:
    """A model observer's trials on the images of one human subject: right with probability
    ``skill`` (lower in the conditions the benchmark excludes, so pooling them matters)."""
    trials = read_human_trials(dataset)
    trials = trials[trials["subj"] == trials["subj"].iloc[0]].reset_index(drop=True).assign(subj=subj)
    p = np.where(trials["condition"].isin(["cr", "c03", "c01", "c100"]), skill / 3, skill)
    right = rng.random(len(trials)) < p
    wrong = rng.choice(CATEGORIES, len(trials))
    trials["object_response"] = np.where(right, trials["category"], wrong)
    trials["item"] = trials["imagename"]
    return trials


@pytest.fixture(scope="module")
def runs():
    """Two models × three levels × three datasets: their trials and the records the suite yields."""
    rng = np.random.default_rng(0)
    trials, frames = {}, []
    for run, base in (("resnet18", 0.8), ("resnet50", 0.6)):
        for level in range(LEVELS):
            for dataset in DATASETS:
                t = _model_trials(dataset, f"{run}-level-{level:02d}", base - 0.15 * level, rng)
                trials[run, level, dataset] = t
                records = pd.DataFrame([asdict(r) for r in level_records(t)])
                frames.append(records.assign(run=run, model=run, level=level, sparsity=1 - 0.8 ** level))
    return trials, pd.concat(frames, ignore_index=True)


def _figure6(frame: pd.DataFrame):
    spec = next(p for p in plots_for(frame) if p.name == "alignment_datasets")
    rows, _ = _at_resolution(_rows(frame, spec), spec)
    summary = summarize(rows, GROUPS, n_boot=50)
    return _fit_lines(spec, summary), summary


def test_figure6_pools_each_dataset_as_the_toolbox_counts_it(runs):
    """Every line point is the toolbox's accuracy of that dataset at that level: all trials of all
    its conditions, the excluded ones too (so not the benchmark's OOD accuracy)."""
    trials, frame = runs
    spec, summary = _figure6(frame)
    assert (spec.panels, spec.lines, spec.x, spec.ylim) == (("group",), ("dataset",), "level", (0.0, 1.0))
    assert len(summary) == len(GROUPS) * LEVELS * len(DATASETS)
    for (run, level, dataset), t in trials.items():
        point = summary[(summary["group"] == run) & (summary["level"] == level)
                        & (summary["dataset"] == dataset)]
        expected = toolbox_accuracy(t["object_response"].tolist(), t["category"].tolist())
        assert point["mean"].item() == pytest.approx(expected, abs=1e-12)
        assert point["n"].item() == len(t)                      # every trial counted once
        if dataset != "sketch":                                 # excluded conditions are pooled in
            assert abs(expected - ood_accuracy(t).item()) > 0.01


def test_figure6_panels_per_model_lines_per_dataset(runs):
    _, frame = runs
    spec, summary = _figure6(frame)
    fig = _draw(spec, summary, summary.iloc[:0], None, sorted(GROUPS))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["resnet18", "resnet50"]
    for ax in panels:
        curves = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
        assert sorted(curves) == sorted(DATASETS)
        want = summary[(summary["group"] == ax.get_title()) & (summary["dataset"] == "colour")]
        np.testing.assert_array_equal(curves["colour"].get_xdata(), range(LEVELS))  # x: the level
        np.testing.assert_allclose(curves["colour"].get_ydata(), want.sort_values("level")["mean"])
        assert ax.get_ylim() == (0.0, 1.0)
        assert not [line for line in ax.lines if str(line.get_gid()).startswith("reference:")]
    # one colour per dataset, the same in both panels
    colours = [{line.get_label(): line.get_color() for line in ax.lines} for ax in panels]
    assert colours[0]["colour"] == colours[1]["colour"] != colours[0]["sketch"]


def test_figure6_keeps_to_the_model_vs_human_datasets_when_there_are_any(runs):
    """The offline counterpart's datasets (``<data>-colour`` …) are left out of Figure 6 when the
    real model-vs-human datasets were evaluated, and drawn when they are all there is."""
    _, frame = runs
    offline = frame[frame["dataset"] == "colour"].assign(dataset="synthetic-colour")
    spec, summary = _figure6(pd.concat([frame, offline], ignore_index=True))
    assert set(summary["dataset"]) == set(DATASETS)
    _, summary = _figure6(offline)
    assert set(summary["dataset"]) == {"synthetic-colour"}


def test_humans_dataset_accuracy_pools_every_condition_of_every_subject():
    for dataset in DATASETS:
        humans = read_human_trials(dataset)
        ref = human_reference(humans)
        value = ref[(ref["metric"] == "dataset_accuracy") & (ref["dataset"] == dataset)]["value"].item()
        assert value == pytest.approx(toolbox_accuracy(humans["object_response"].tolist(),
                                                       humans["category"].tolist()), abs=1e-12)


def _run_folder(root, name, frame):
    run = hand_made_pool(root / name, [1 - 0.8 ** lv for lv in range(LEVELS)], name=name)
    for level in range(LEVELS):
        rows = frame[(frame["run"] == name) & (frame["level"] == level)]
        write_level(run.run_dir, "alignment", level, [_record(r) for r in rows.itertuples()], meta={})
    return run


def _record(row):
    from prunelens.results import Record
    return Record(row.suite, row.metric, row.value, method=row.method, dataset=row.dataset,
                  condition=row.condition, item=row.item)


def test_human_reference_drawn_only_when_asked(runs, tmp_path):
    """``references``: the humans' accuracy per dataset (human_reference.csv), one dashed line per
    dataset in its colour; without it, none (as the paper draws Figure 6)."""
    from prunelens.cli import main

    _, frame = runs
    frame = frame[frame["run"] == "resnet18"]
    run = _run_folder(tmp_path, "resnet18", frame)
    ref = pd.concat([human_reference(read_human_trials(d)) for d in DATASETS], ignore_index=True)
    (run.layout.suite("alignment") / HUMAN_REFERENCE_FILE).write_text(ref.to_csv(index=False))

    refs, missing = figure_references([run], {"resnet18": "resnet18"}, frame)
    assert not missing and set(refs["figure"]) == {"alignment_datasets"}
    assert sorted(refs["key"]) == sorted(DATASETS)
    spec, summary = _figure6(frame)
    fig = _draw(spec, summary, summary.iloc[:0], None, ["resnet18"], refs)
    drawn = {line.get_gid(): line for line in fig.axes[0].lines if str(line.get_gid()).startswith("reference:")}
    assert sorted(drawn) == [f"reference:{d}" for d in sorted(DATASETS)]
    humans = ref[ref["metric"] == "dataset_accuracy"].set_index("dataset")["value"]
    curves = {line.get_label(): line for line in fig.axes[0].lines}
    for dataset in DATASETS:
        line = drawn[f"reference:{dataset}"]
        np.testing.assert_allclose(line.get_ydata(), humans[dataset], rtol=1e-12)
        assert line.get_color() == curves[dataset].get_color()

    # through the command line: the SVG holds the reference lines only with --references
    out = tmp_path / "report"
    assert main(["report", str(run.run_dir), "-o", str(out), "--n-boot", "100"]) == 0
    assert "reference:colour" not in (out / "figures" / "alignment_datasets.svg").read_text()
    assert main(["report", str(run.run_dir), "-o", str(out), "--n-boot", "100", "--references"]) == 0
    svg = (out / "figures" / "alignment_datasets.svg").read_text()
    assert all(f'id="reference:{d}"' in svg for d in DATASETS)
    assert "Dashed horizontal lines: humans" in (out / "index.html").read_text()


def test_a_missing_human_reference_is_listed_not_drawn(runs, tmp_path):
    _, frame = runs
    frame = frame[frame["run"] == "resnet50"]
    run = _run_folder(tmp_path, "resnet50", frame)
    refs, missing = figure_references([run], {"resnet50": "resnet50"}, frame)
    assert refs.empty
    assert missing == [("alignment", "humans in figure 'alignment_datasets' of resnet50",
                        "suite 'alignment' wrote no human_reference.csv for this run (with "
                        "evaluate.alignment.mvh_root)")]


def _toolbox_images(root, dataset: str, contains_sessions: bool) -> list[tuple[str, str]]:
    """(image name, target) of every image the toolbox's loader yields for a dataset, transcribed
    from bethgelab/model-vs-human (commit 2921634): ``datasets/base.py`` ``Dataset.__init__``
    (``path = pjoin(params.path, "dnn/")`` when ``contains_sessions``, else the dataset folder);
    ``datasets/dataloaders.py`` ``ImageFolderWithPaths`` (torchvision ``ImageFolder`` over it, the
    target replaced by the info mapping's category); ``datasets/info_mappings.py``
    ``InfoMappingWithSessions`` (``img_name.split("_")[4]``) / ``ImageNetInfoMapping`` (the parent
    folder's name)."""
    from prunelens._compat import torchvision

    ImageFolder = torchvision().datasets.ImageFolder
    path = root / dataset / "dnn" if contains_sessions else root / dataset
    out = []
    for file, _ in ImageFolder(str(path)).imgs:
        name = file.split("/")[-1]
        out.append((name, name.split("_")[4] if contains_sessions else file.split("/")[-2]))
    return out


def test_the_trials_are_the_images_the_toolbox_counts(tmp_path):
    """Every image of every session (or category folder), each with the toolbox's target: the
    trials whose accuracy Figure 6 pools are the ones the toolbox's ``Accuracy`` counts."""
    from PIL import Image

    from prunelens.data.model_vs_human import list_stimuli

    humans = read_human_trials("colour")
    sample = humans[humans["subj"] == "subject-01"].iloc[::80]  # both conditions, 16 images
    for k, name in enumerate(sample["imagename"]):
        fields = name.split("_")
        fields[2] = "dnn"
        session = f"session-{1 + k % 2}"
        path = tmp_path / "colour" / "dnn" / session / "_".join(fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (k, 0, 0)).save(path)
    for category, name in (("oven", "oven10.png"), ("cat", "cat3.png"), ("cat", "cat7.png")):
        path = tmp_path / "edge" / category / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
    for dataset, sessions in (("colour", True), ("edge", False)):
        ours = sorted((s.imagename, s.category) for s in list_stimuli(tmp_path, dataset))
        assert ours == sorted(_toolbox_images(tmp_path, dataset, sessions))
    assert {s.condition for s in list_stimuli(tmp_path, "colour")} == {"cr", "bw"}
