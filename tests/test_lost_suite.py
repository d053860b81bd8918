"""The ``discovery`` suite on hand-built level contexts (synthetic data and a VOC fixture)."""
from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from prunelens.config import DataConfig
from prunelens.data.provider import RunData
from prunelens.discovery.features import patch_features
from prunelens.discovery.lost import SeedInBackgroundError, lost
from prunelens.discovery.suite import DiscoveryOptions, DiscoverySuite, discover
from prunelens.suite import LevelContext, RunContext, get_suite
from prunelens.models import create_model, spec_for
from test_voc_annotations import IMAGES, make_voc


@pytest.fixture(scope="module")
def data():
    return RunData(DataConfig(name="synthetic", image_size=32, num_classes=4, n_test=16), seed=0)


def level_ctx(tmp_path: Path, model, data, level: int = 0, sparsity: float = 0.0, levels=(0, 1, 2, 3),
              **options):
    """A level's context; its pool (name, levels) and config are what the suite reads of them."""
    from prunelens.config import RunConfig

    artifacts = tmp_path / "results" / "discovery"
    pool = SimpleNamespace(name="lost-test", levels=[SimpleNamespace(index=i) for i in levels])
    return LevelContext(
        pool=pool, config=RunConfig(), options=DiscoveryOptions(**options),
        device=torch.device("cpu"), data=data, spec=spec_for(model), artifacts=artifacts,
        batch_size=5, level=SimpleNamespace(index=level, sparsity=sparsity), model=model.eval(),
        level_artifacts=artifacts / f"level_{level:02d}")


def small_resnet(seed=0):
    torch.manual_seed(seed)
    return create_model("small_resnet", 4)


def test_registered_under_its_name():
    assert get_suite("discovery") is DiscoverySuite


def test_per_image_records_boxes_and_summary(tmp_path, data):
    model = small_resnet()
    ctx = level_ctx(tmp_path, model, data, n_images=12)
    records = DiscoverySuite().evaluate_level(ctx)
    frame = pd.DataFrame([asdict(r) for r in records])
    items = data.split("test").item_ids[:12]
    assert set(frame["suite"]) == {"discovery"} and set(frame["method"]) == {"lost"}
    assert set(frame["dataset"]) == {"synthetic"} and set(frame["condition"]) == {""}
    wide = frame.pivot(index="item", columns="metric", values="value").loc[items]
    assert ((wide["iou"] >= 0.5) == (wide["corloc"] == 1)).all()
    assert wide["corloc"].isin([0.0, 1.0]).all() and wide["iou"].between(0, 1).all()

    boxes = pd.read_csv(ctx.level_artifacts / "boxes.csv", dtype={"item": str})
    assert boxes["item"].tolist() == items
    # the saved box of every image is LOST on that image's features, computed directly here
    split = data.split("test")
    feats = patch_features(model, split.images[:12].float() / 255)
    direct = lost(feats.features, feats.grid_hw, feats.stride, (32, 32))
    torch.testing.assert_close(torch.tensor(boxes[["xmin", "ymin", "xmax", "ymax"]].values,
                                            dtype=torch.float32), direct.boxes)
    assert boxes["seed"].tolist() == direct.seeds.tolist()
    assert boxes["iou"].tolist() == pytest.approx(wide["iou"].tolist())

    summary = json.loads((ctx.level_artifacts / "summary.json").read_text())
    assert summary["n"] == 12 and summary["n_skipped"] == 0 and summary["dataset"] == "synthetic"
    assert summary["corloc"] == pytest.approx(wide["corloc"].mean())
    assert summary["mean_iou"] == pytest.approx(wide["iou"].mean())
    assert summary["ci_low"] <= summary["corloc"] <= summary["ci_high"]
    # the same interval the results summary gives this number (one bootstrap, seeded alike)
    from prunelens.stats import summarize
    rows = frame.assign(run="lost-test", level=0, sparsity=0.0)
    row = summarize(rows, n_boot=ctx.config.evaluate.n_boot).set_index("metric").loc["corloc"]
    assert (summary["ci_low"], summary["ci_high"]) == (row["ci_low"], row["ci_high"])


def test_vit_levels_and_the_figure_across_levels(tmp_path, data):
    suite = DiscoverySuite()
    for level, sparsity in ((0, 0.0), (1, 0.2), (2, 0.36)):
        torch.manual_seed(level)
        vit = create_model("small_vit", 4, image_size=32, patch_size=8, num_layers=1, hidden_dim=16,
                           mlp_dim=32)
        ctx = level_ctx(tmp_path, vit, data, level, sparsity, n_images=4, figure_levels=2,
                        figure_images=3)
        records = suite.evaluate_level(ctx)
        assert len(records) == 8
    run_ctx = RunContext(**{k: getattr(ctx, k) for k in RunContext.__dataclass_fields__})
    suite.after_levels(run_ctx)
    png = (ctx.artifacts / "boxes_across_levels.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(io.BytesIO(png)).size
    assert width < height  # 2 level columns (first and last), 3 image rows


def test_voc_images_of_mixed_sizes(tmp_path):
    make_voc(tmp_path / "voc")
    model = small_resnet()
    ctx = level_ctx(tmp_path, model, None, voc_root=str(tmp_path / "voc"), no_hard=True)
    records = DiscoverySuite().evaluate_level(ctx)
    assert {r.dataset for r in records} == {"voc07"}
    assert {r.condition for r in records} == {"trainval-no_hard"}
    assert [r.item for r in records if r.metric == "corloc"] == ["000005", "000007", "000012"]
    summary = json.loads((ctx.level_artifacts / "summary.json").read_text())
    assert summary["n"] == 3 and summary["n_skipped"] == 1
    # batched by padded size (here 32x48 holds 000005 (48x32); 40x40 000007 (40x36)) = one at a time
    from prunelens.data.voc_annotations import VOCBoxes
    voc = VOCBoxes(tmp_path / "voc", no_hard=True)
    together = discover(model, voc, batch_size=8)
    alone = discover(model, voc, batch_size=1)
    pd.testing.assert_frame_equal(together, alone)
    for i, item in enumerate(voc.item_ids):
        w, h, _ = IMAGES[item]
        assert (together.loc[i, "image_h"], together.loc[i, "image_w"]) == (h, w)
        assert together.loc[i, "xmax"] <= w and together.loc[i, "ymax"] <= h


def test_several_voc_image_sets_in_one_run(tmp_path):
    """``image_set: [trainval, val]`` (the paper's run_lost_pruning_iterations.sh runs main_lost.py on
    both): each set's records are those a run on that set alone gives, its condition naming the set;
    summary.json keeps each set's CorLoc, the figure draws the first set."""
    make_voc(tmp_path / "voc", "2012")
    model, root = small_resnet(), str(tmp_path / "voc")
    suite = DiscoverySuite()
    ctx = level_ctx(tmp_path / "both", model, None, voc_root=root, image_set=["trainval", "val"],
                    figure_levels=2, figure_images=2)
    both = pd.DataFrame([asdict(r) for r in suite.evaluate_level(ctx)])
    assert list(dict.fromkeys(both["condition"])) == ["trainval", "val"] and set(both["dataset"]) == {"voc12"}
    for image_set in ("trainval", "val"):
        alone = pd.DataFrame([asdict(r) for r in DiscoverySuite().evaluate_level(
            level_ctx(tmp_path / image_set, model, None, voc_root=root, image_set=image_set))])
        assert set(alone["condition"]) == {image_set}
        pd.testing.assert_frame_equal(both[both["condition"] == image_set].reset_index(drop=True), alone)
    assert list(both.loc[(both.condition == "val") & (both.metric == "corloc"), "item"]) == ["000007"]
    summary = json.loads((ctx.level_artifacts / "summary.json").read_text())
    assert [(s["condition"], s["n"]) for s in summary["image_sets"]] == [("trainval", 4), ("val", 1)]
    assert summary["image_sets"][1]["corloc"] == both.loc[(both.condition == "val") & (both.metric == "corloc"),
                                                          "value"].mean()
    boxes = pd.read_csv(ctx.level_artifacts / "boxes.csv", dtype={"item": str})
    assert list(boxes["condition"]) == ["trainval"] * 4 + ["val"]
    run_ctx = RunContext(**{k: getattr(ctx, k) for k in RunContext.__dataclass_fields__})
    suite.after_levels(run_ctx)
    assert (ctx.artifacts / "boxes_across_levels.png").read_bytes()[:4] == b"\x89PNG"


def test_one_image_set_keeps_the_options_and_records_of_earlier_versions():
    """A string image_set validates, dumps and compares as before the list form existed, so results
    an earlier version stored stay current (their sidecar options equal today's)."""
    stored = DiscoveryOptions().model_dump(mode="json")
    assert stored["image_set"] == "trainval"
    assert DiscoverySuite.options_from(stored) == DiscoveryOptions()
    assert DiscoverySuite.condition(DiscoveryOptions(voc_root="x", no_hard=True)) == "trainval-no_hard"
    with pytest.raises(ValueError, match="each set once"):
        DiscoveryOptions(image_set=["val", "val"])
    with pytest.raises(ValueError, match="at least one"):
        DiscoveryOptions(image_set=[])


def test_seed_in_background_is_an_error_or_a_miss(tmp_path, data):
    dead = small_resnet()
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()      # every feature is 0: the seed's expansion set is empty
    with pytest.raises(SeedInBackgroundError, match="seed_in_background='miss'") as err:
        DiscoverySuite().evaluate_level(level_ctx(tmp_path, dead, data, n_images=3,
                                                  seed_in_background="error"))
    assert err.value.images == data.split("test").item_ids[:3]
    ctx = level_ctx(tmp_path, dead, data, n_images=3)  # the default scores a miss
    records = DiscoverySuite().evaluate_level(ctx)
    assert [r.value for r in records] == [0.0] * 6
    assert not pd.read_csv(ctx.level_artifacts / "boxes.csv")["found"].any()


def test_skip_reasons(tmp_path, data):
    suite = DiscoverySuite()
    fcn = create_model("fcn", 4, input_shape=(3, 32, 32), widths=(8,))
    assert "spatial feature map" in suite.skip_reason(level_ctx(tmp_path, fcn, data))
    assert suite.skip_reason(level_ctx(tmp_path, small_resnet(), data)) is None
    no_boxes = SimpleNamespace(split=lambda name: torch.utils.data.TensorDataset(torch.zeros(1)),
                               eval_split="test", entry=SimpleNamespace(splits=("train", "test")))
    assert "voc_root" in suite.skip_reason(level_ctx(tmp_path, small_resnet(), no_boxes))
    no_test = SimpleNamespace(eval_split="val", entry=SimpleNamespace(splits=("train", "val")),
                              split=lambda name: torch.utils.data.TensorDataset(torch.zeros(1)))
    assert "voc_root" in suite.skip_reason(level_ctx(tmp_path, small_resnet(), no_test))  # ImageNet: val
    wrong = level_ctx(tmp_path, small_resnet(), no_test, synthetic_split="test")
    assert "no 'test' split" in suite.skip_reason(wrong)


def test_default_image_count_and_options():
    assert DiscoverySuite.n_images(DiscoveryOptions()) == 64
    assert DiscoverySuite.n_images(DiscoveryOptions(voc_root="x")) is None
    assert DiscoveryOptions(voc_year=2012).voc_year == 2012
    with pytest.raises(ValueError):
        DiscoveryOptions(voc_year=2010)
    with pytest.raises(ValueError):
        DiscoveryOptions(k_patch=5)   # unknown keys are errors


@pytest.mark.slow
def test_trained_cnn_features_find_the_objects():
    """End to end: a briefly trained small ResNet localises the synthetic objects (~35 s on a CPU)."""
    import torch.nn.functional as F

    from prunelens.data.synthetic import SyntheticShapes
    from prunelens.discovery.corloc import SyntheticBoxes

    train = SyntheticShapes("train", 3000, 64, 6, 0.3, "standard", 0)
    test = SyntheticShapes("test", 100, 64, 6, 0.3, "standard", 0)
    torch.manual_seed(0)
    model = create_model("small_resnet", 6)
    spec = spec_for(model)
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    for _ in range(4):
        for idx in torch.randperm(3000).split(100):
            loss = F.cross_entropy(model(spec.normalize(train.images[idx].float() / 255)), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    found = discover(model, SyntheticBoxes(test))
    whole_image = discover(create_model("small_resnet", 6).eval(), SyntheticBoxes(test))
    assert found["corloc"].mean() > 0.5      # measured 0.71 on 200 images
    assert whole_image["corloc"].mean() < 0.1 and whole_image["iou"].mean() < found["iou"].mean()
