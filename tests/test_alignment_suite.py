"""The ``alignment`` suite on a hand-built level: the synthetic counterpart and a model-vs-human tree."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from prunelens.alignment import (DecisionMapping, human_benchmark, human_reference, read_human_trials,
                                 read_trials)
from prunelens.alignment.suite import AlignmentOptions, AlignmentSuite
from prunelens.config import RunConfig, validate_section
from prunelens.data import distortions as D
from prunelens.data.provider import RunData
from prunelens.data.synthetic import SyntheticShapes
from prunelens.errors import ConfigError
from prunelens.suite import LevelContext, get_suite
from prunelens.models import ArchSpec, create_model, spec_for
from prunelens.results import records_frame

N, SIZE, CLASSES = 40, 32, 6
DATA = {"name": "synthetic", "image_size": SIZE, "num_classes": CLASSES, "texture_correlation": 0.5}
SYNTHETIC_DATASETS = {f"synthetic-{d}" for d in (
    "colour", "contrast", "high-pass", "low-pass", "phase-scrambling", "power-equalisation",
    "false-colour", "rotation", "uniform-noise", "silhouette", "edge", "cue-conflict")}


def _ctx(tmp_path, model, options, spec=None, index=3):
    config = RunConfig.model_validate({"data": DATA, "model": {"name": "small_resnet", "widths": [8, 16]}})
    return LevelContext(
        pool=None, config=config,
        options=validate_section(AlignmentOptions, options, "evaluate.alignment"),
        device=torch.device("cpu"), data=RunData(config.data, config.seed),
        spec=spec or spec_for(model), artifacts=tmp_path / "alignment", batch_size=64,
        level=SimpleNamespace(index=index, sparsity=0.5), model=model.eval(),
        level_artifacts=tmp_path / "alignment" / f"level_{index:02d}")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("small_resnet", CLASSES, widths=(8, 16)).eval()


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("run")
    ctx = _ctx(tmp, model, {"n_images": N})
    return ctx, records_frame(AlignmentSuite().evaluate_level(ctx))


def _direct(model, images, labels):
    with torch.no_grad():
        return (model(spec_for(model).normalize(images)).argmax(1) == labels).float().numpy()


def _split(variant="standard"):
    return SyntheticShapes("test", N, SIZE, CLASSES, 0.5, variant, 0)


def _accuracy(frame, dataset, condition):
    rows = frame[(frame.metric == "accuracy") & (frame.dataset == dataset) & (frame.condition == condition)]
    return rows.set_index("item")["value"]


def test_suite_is_registered():
    assert get_suite("alignment") is AlignmentSuite


def test_every_dataset_and_condition_of_the_synthetic_counterpart(synthetic_run):
    _, frame = synthetic_run
    assert set(frame["dataset"]) == SYNTHETIC_DATASETS
    acc = frame[frame.metric == "accuracy"]
    for name, recipe in D.DISTORTIONS.items():
        per_cond = acc[acc.dataset == f"synthetic-{name}"].groupby("condition").size()
        assert dict(per_cond) == {c: N for c in recipe.conditions}, name
    assert set(frame[frame.metric == "shape_bias"]["dataset"]) == {"synthetic-cue-conflict"}
    assert len(frame[frame.metric == "ood_accuracy"]) == len(SYNTHETIC_DATASETS)


def test_per_image_accuracy_matches_a_direct_evaluation(synthetic_run, model):
    _, frame = synthetic_run
    split = _split()
    x = split.images.float() / 255
    ids = split.item_ids
    np.testing.assert_array_equal(_accuracy(frame, "synthetic-colour", "cr")[ids].to_numpy(),
                                  _direct(model, x, split.labels))
    rotated = D.quantize(D.rotate(D.greyscale(x), 90))
    np.testing.assert_array_equal(_accuracy(frame, "synthetic-rotation", "90")[ids].to_numpy(),
                                  _direct(model, rotated, split.labels))
    low = D.quantize(D.low_pass(D.greyscale(x), 10 * SIZE / 224))  # filters scaled to the image size
    np.testing.assert_array_equal(_accuracy(frame, "synthetic-low-pass", "10")[ids].to_numpy(),
                                  _direct(model, low, split.labels))
    edge = _split("edge")
    np.testing.assert_array_equal(_accuracy(frame, "synthetic-edge", "0")[ids].to_numpy(),
                                  _direct(model, edge.images.float() / 255, edge.labels))


def test_ood_accuracy_pools_non_excluded_conditions(synthetic_run):
    _, frame = synthetic_run
    acc = frame[frame.metric == "accuracy"]
    ood = frame[frame.metric == "ood_accuracy"].set_index("dataset")["value"]
    contrast = acc[(acc.dataset == "synthetic-contrast") & ~acc.condition.isin(["c100", "c03", "c01"])]
    assert ood["synthetic-contrast"] == pytest.approx(contrast["value"].mean())
    noise = acc[(acc.dataset == "synthetic-uniform-noise") & ~acc.condition.isin(["0.0", "0.6", "0.9"])]
    assert ood["synthetic-uniform-noise"] == pytest.approx(noise["value"].mean())
    assert ood["synthetic-edge"] == pytest.approx(acc[acc.dataset == "synthetic-edge"]["value"].mean())


def test_responses_are_saved_in_the_benchmark_format(synthetic_run):
    ctx, frame = synthetic_run
    folder = ctx.level_artifacts / "synthetic-contrast"
    (csv,) = folder.glob("*.csv")
    assert csv.name == "synthetic-contrast_small-resnet-level-03_session-1.csv"
    assert list(pd.read_csv(csv).columns) == ["subj", "session", "trial", "rt", "object_response",
                                              "category", "condition", "imagename"]
    trials = read_trials(csv)
    assert (trials["subj"] == "small-resnet-level-03").all() and len(trials) == 8 * N
    hits = (trials["object_response"] == trials["category"]).to_numpy(float)
    records = frame[(frame.metric == "accuracy") & (frame.dataset == "synthetic-contrast")]
    np.testing.assert_array_equal(hits, records["value"].to_numpy())
    assert set(trials["category"]) <= set(SyntheticShapes("test", 1, SIZE, CLASSES).class_names)


def test_shape_bias_counts_shape_and_texture_decisions(synthetic_run):
    ctx, frame = synthetic_run
    (csv,) = (ctx.level_artifacts / "synthetic-cue-conflict").glob("*.csv")
    trials = read_trials(csv)
    split = _split("cue_conflict")
    names = np.array(split.class_names)
    shape, texture = names[split.labels.numpy()], names[split.texture_labels.numpy()]
    assert (shape != texture).all()
    resp = trials["object_response"].to_numpy()
    s, t = (resp == shape).sum(), (resp == texture).sum()
    bias = frame[frame.metric == "shape_bias"]["value"].item()
    assert bias == pytest.approx(s / (s + t)) if s + t else np.isnan(bias)


def test_decision_mapping_option_groups_classes(tmp_path, model):
    groups = {"round": ["circle", "ring"], "angular": ["square", "triangle"]}
    ctx = _ctx(tmp_path, model, {"n_images": N, "decision_mapping": groups, "distortions": ["colour"],
                                 "variants": False})
    frame = records_frame(AlignmentSuite().evaluate_level(ctx))
    split = _split()
    keep = np.isin(np.array(split.class_names)[split.labels.numpy()], sum(groups.values(), []))
    (csv,) = (ctx.level_artifacts / "synthetic-colour").glob("*.csv")
    trials = read_trials(csv)
    assert len(trials) == 2 * keep.sum()
    assert set(trials["category"]) | set(trials["object_response"]) <= {"round", "angular"}
    mapping = DecisionMapping.from_groups(groups, split.class_names)
    x = split.images[torch.from_numpy(keep)].float() / 255
    with torch.no_grad():
        decided = mapping(model(spec_for(model).normalize(x)))
    expected = (decided == mapping.class_to_category()[split.labels[torch.from_numpy(keep)]]).float()
    np.testing.assert_array_equal(_accuracy(frame, "synthetic-colour", "cr").to_numpy(), expected.numpy())


def test_runs_are_deterministic(tmp_path, model):
    options = {"n_images": 16, "distortions": ["uniform-noise", "phase-scrambling"], "variants": False}
    a = records_frame(AlignmentSuite().evaluate_level(_ctx(tmp_path / "a", model, options)))
    b = records_frame(AlignmentSuite().evaluate_level(_ctx(tmp_path / "b", model, options)))
    pd.testing.assert_frame_equal(a, b)


# ---- the real model-vs-human datasets, on a fixture tree ----------------------------------------------
class TinyImageNetModel(nn.Module):
    """A fixed random 1000-way classifier of 4x4-pooled pixels."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(48, 1000)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(1000, 48, generator=torch.Generator().manual_seed(0)) * 5)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def _mvh_tree(root):
    rng = np.random.default_rng(0)
    for dataset in ("colour", "edge"):
        humans = read_human_trials(dataset)
        for _, row in humans[humans["subj"] == humans["subj"].iloc[0]].iterrows():
            if dataset == "edge":
                path = root / dataset / row["category"] / row["image_id"]
            else:
                fields = row["imagename"].split("_")
                fields[2] = "dnn"
                path = root / dataset / "dnn" / "session-1" / "_".join(fields)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


def test_model_vs_human_datasets_are_compared_with_the_human_trials(tmp_path):
    _mvh_tree(tmp_path / "mvh")
    model = TinyImageNetModel()
    ctx = _ctx(tmp_path, model, {"n_images": 0, "mvh_root": str(tmp_path / "mvh"),
                                 "mvh_datasets": ["colour", "edge", "sketch"]}, spec=ArchSpec())
    with pytest.raises(ConfigError, match="needs its own mapping"):  # a 'synthetic' run's labels
        AlignmentSuite().evaluate_level(ctx)
    ctx.data = SimpleNamespace(provides=lambda capability: capability == "imagenet_classes",
                               class_names=ctx.data.class_names)  # labels in ImageNet's class order
    with pytest.warns(UserWarning, match="'sketch' not found"):
        frame = records_frame(AlignmentSuite().evaluate_level(ctx))
    assert set(frame["dataset"]) == {"colour", "edge"}
    for dataset, n in (("colour", 1280), ("edge", 160)):
        rows = frame[frame.dataset == dataset]
        assert (rows.metric == "accuracy").sum() == n
        (csv,) = (ctx.level_artifacts / dataset).glob("*.csv")
        trials = read_trials(csv)
        assert len(trials) == n and set(trials["object_response"]) <= set(DecisionMapping.imagenet16().categories)
        expected = human_benchmark(trials, read_human_trials(dataset)).set_index("metric")["value"]
        got = rows[rows.item == ""].set_index("metric")["value"]
        assert got["ood_accuracy"] == pytest.approx(expected["accuracy"])
        for metric in ("accuracy_difference", "observed_consistency", "error_consistency"):
            assert got[metric] == pytest.approx(expected[metric])
        assert -1 <= got["error_consistency"] <= 1 and 0 <= got["observed_consistency"] <= 1
    # the decisions are the benchmark's 16-class rule on the model's outputs
    (csv,) = (ctx.level_artifacts / "edge").glob("*.csv")
    trials = read_trials(csv).set_index("imagename")
    some = sorted((tmp_path / "mvh" / "edge").glob("*/*.png"))[:10]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
                     for p in some]).float() / 255
    mapping = DecisionMapping.imagenet16()
    with torch.no_grad():
        decided = [mapping.categories[k] for k in mapping(model(ArchSpec().normalize(x))).tolist()]
    assert decided == [trials.loc[p.name, "object_response"] for p in some]
    # after all levels: the humans' own values, for the report's reference line
    AlignmentSuite().after_levels(ctx)
    ref = pd.read_csv(ctx.artifacts / "human_reference.csv")
    assert set(ref["dataset"]) == {"colour", "edge"}
    pd.testing.assert_frame_equal(ref[ref.dataset == "edge"].reset_index(drop=True),
                                  human_reference(read_human_trials("edge")))


def test_model_vs_human_needs_a_model_with_the_16_categories(tmp_path, model):
    (tmp_path / "mvh" / "edge" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "mvh" / "edge" / "cat" / "cat1.png")
    ctx = _ctx(tmp_path, model, {"n_images": 0, "mvh_root": str(tmp_path / "mvh"), "mvh_datasets": ["edge"]})
    with pytest.raises(ConfigError, match="mvh_decision_mapping"):
        AlignmentSuite().evaluate_level(ctx)


def test_options_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="blur"):
        validate_section(AlignmentOptions, {"distortions": ["blur"]}, "evaluate.alignment")
    with pytest.raises(ConfigError, match="zebra"):
        validate_section(AlignmentOptions, {"mvh_decision_mapping": {"zebra": [1]}}, "evaluate.alignment")
    with pytest.raises(ConfigError, match="imagenet-c"):
        validate_section(AlignmentOptions, {"mvh_datasets": ["imagenet-c"]}, "evaluate.alignment")
    with pytest.raises(ConfigError, match="n_image"):
        validate_section(AlignmentOptions, {"n_image": 3}, "evaluate.alignment")


class _ClassSortedSplit(torch.utils.data.Dataset):
    """A test split ordered by class, as an ImageFolder is: 10 images of each of 3 classes."""

    class_names = ["ant", "bee", "cow"]

    def __len__(self):
        return 30

    def __getitem__(self, i):
        return torch.full((3, 16, 16), i / 30), i // 10


def test_any_labelled_dataset_becomes_an_ood_benchmark(tmp_path):
    data = SimpleNamespace(entry=SimpleNamespace(build=lambda options, split, seed: None),
                           split=lambda name, **kw: _ClassSortedSplit(), eval_split="test")
    model = nn.Sequential(nn.Flatten(), nn.Linear(768, 3))
    ctx = LevelContext(
        pool=None,
        config=SimpleNamespace(data=SimpleNamespace(name="folder"), model=SimpleNamespace(name="mlp")),
        options=validate_section(AlignmentOptions, {"n_images": 6}), device=torch.device("cpu"),
        data=data, spec=ArchSpec(), artifacts=tmp_path, batch_size=4,
        level=SimpleNamespace(index=0), model=model.eval(), level_artifacts=tmp_path / "level_00")
    frame = records_frame(AlignmentSuite().evaluate_level(ctx))
    assert set(frame["dataset"]) == {f"folder-{d}" for d in D.DISTORTIONS}  # no variants here
    colour = _accuracy(frame, "folder-colour", "cr")
    # six images spread over the class-sorted split, so every class is seen
    assert list(colour.index) == [f"test-{i:05d}" for i in (0, 6, 12, 17, 23, 29)]
    (csv,) = (ctx.level_artifacts / "folder-colour").glob("*.csv")
    trials = read_trials(csv)
    assert trials["category"].tolist() == ["ant", "ant", "bee", "bee", "cow", "cow"] * 2
    assert (trials["subj"] == "mlp-level-00").all()
