"""The interpretability suite on a hand-built LevelContext: records against a Captum + Quantus
pipeline, artifacts, Figure 2, options, VOC data."""
from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from _explain_helpers import lively
from _voc_fixture import make_vocdevkit
from PIL import Image

from prunelens.config import validate_section
from prunelens.data.synthetic import SyntheticShapes
from prunelens.errors import ConfigError, DataError, PoolError
from prunelens.suite import LevelContext, RunContext, get_suite
from prunelens.explain.figure import draw_figure2, explain_levels, figure_from_artifacts
from prunelens.io import load_tensors
from prunelens.models import create_model, spec_for
from prunelens.results import records_frame

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
Suite = get_suite("interpretability")


class _Data:
    """Stands in for RunData: the run's synthetic test split."""

    def __init__(self, n=6, size=32):
        self.test = SyntheticShapes("test", n, size, 5, 0.5, "standard", 0)
        self.class_names = self.test.class_names
        self.config = SimpleNamespace(name="synthetic")

    def split(self, name, **overrides):
        assert name == "test"
        return self.test


def _options(**raw):
    return validate_section(Suite.Options, raw, "evaluate.interpretability")


def _context(tmp_path, model, options, level=0, data=None):
    suite_dir = tmp_path / "results" / "interpretability"
    return LevelContext(pool=None, config=None, options=options, device=torch.device("cpu"),
                        data=data or _Data(), spec=spec_for(model), artifacts=suite_dir, batch_size=4,
                        level=SimpleNamespace(index=level, sparsity=0.2 * level), model=model,
                        level_artifacts=suite_dir / f"level_{level:02d}")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return lively(create_model("small_resnet", 5, widths=(8, 16)))


def _captum_quantus_scores(model, data, n_steps):
    """The same work done the usual way: Captum attributions, Quantus metrics."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    quantus = pytest.importorskip("quantus")
    spec = spec_for(model)
    x = spec.normalize(data.test.images.float() / 255)
    masks = data.test.masks
    target = model(x).argmax(1)
    cam = LayerGradCam(model, spec.gradcam_layer(model)).attribute(x, target=target, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear").detach()
    baseline = spec.normalize(torch.zeros_like(x))
    ig = IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=n_steps)
    ig = ig.detach().square().sum(1, keepdim=True)  # CLEVR-XAI "l2-norm,sq"
    out = {}
    for method, a in (("gradcam", cam), ("integrated_gradients", ig)):
        kwargs = {"model": None, "x_batch": x.numpy(), "y_batch": target.numpy(), "a_batch": a.numpy(),
                  "s_batch": masks.unsqueeze(1).float().numpy()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[(method, "rma")] = np.asarray(quantus.RelevanceMassAccuracy(disable_warnings=True)(**kwargs))
            out[(method, "rra")] = np.asarray(quantus.RelevanceRankAccuracy(disable_warnings=True)(**kwargs))
    return out


def test_records_equal_a_captum_quantus_pipeline(tmp_path, resnet):
    options = _options(ig_steps=8, n_images=6, batch_size=4, figure_images=3)
    frame = records_frame(Suite().evaluate_level(_context(tmp_path, resnet, options)))
    assert set(frame["method"]) == {"gradcam", "guided_gradcam", "integrated_gradients"}
    assert set(frame["metric"]) == {"rma", "rra"} and set(frame["dataset"]) == {"synthetic"}
    assert len(frame) == 3 * 2 * 6 and (frame["condition"] == "").all()
    reference = _captum_quantus_scores(resnet, _Data(), 8)
    for (method, metric), expected in reference.items():
        rows = frame[(frame["method"] == method) & (frame["metric"] == metric)]
        assert rows["item"].tolist() == [f"test-{i:05d}" for i in range(6)]
        np.testing.assert_allclose(rows["value"].to_numpy(), expected, rtol=1e-4, atol=1e-6,
                                   err_msg=f"{method} {metric}")


def test_level_artifacts_and_figure(tmp_path, resnet):
    options = _options(ig_steps=4, n_images=6, batch_size=4, figure_images=5)
    suite = Suite()
    for level in (0, 1):
        list(suite.evaluate_level(_context(tmp_path, resnet, options, level)))
    level_dir = tmp_path / "results" / "interpretability" / "level_01"
    saved = load_tensors(level_dir / "heatmaps.safetensors")
    assert saved["image"].shape == (5, 3, 32, 32) and saved["image"].dtype == torch.uint8
    assert saved["map/gradcam"].shape == (5, 32, 32) and float(saved["map/gradcam"].min()) >= 0
    assert saved["prediction"].tolist() == resnet(
        spec_for(resnet).normalize(saved["image"].float() / 255)).argmax(1).tolist()
    summary = json.loads((level_dir / "summary.json").read_text())
    assert summary["counts"]["gradcam"] == {"n": 6, "nan_rma": 0, "nan_rra": 0}
    assert summary["ig_completeness_gap"]["mean"] >= 0
    run_ctx = RunContext(pool=None, config=None, options=options, device=torch.device("cpu"),
                         data=_Data(), spec=spec_for(resnet), artifacts=tmp_path / "results" / "interpretability")
    suite.after_levels(run_ctx)
    with Image.open(run_ctx.artifacts / "figure2.png") as png:
        width, height = png.size
    assert width > 3 * height / 10  # 4 columns; 5 images x 2 levels = 10 rows
    assert height > 2 * width


def test_figure_from_artifacts_selects_images_and_reports_missing_ones(tmp_path, resnet):
    options = _options(ig_steps=4, n_images=4, figure_images=2, methods=["gradcam", "integrated_gradients"])
    list(Suite().evaluate_level(_context(tmp_path, resnet, options, 3)))
    suite_dir = tmp_path / "results" / "interpretability"
    out = figure_from_artifacts(suite_dir, tmp_path / "fig.png", images=["test-00001"], methods=["gradcam"])
    assert out.is_file()
    with pytest.raises(DataError, match="test-00003"):
        figure_from_artifacts(suite_dir, tmp_path / "fig.png", images=["test-00003"])
    with pytest.raises(PoolError, match="prunelens evaluate"):
        figure_from_artifacts(tmp_path / "nothing", tmp_path / "fig.png")


def test_explain_levels_draws_fresh_rows_for_any_levels(tmp_path, resnet):
    levels = [SimpleNamespace(index=i, sparsity=s, load_model=lambda: resnet) for i, s in ((0, 0.0), (4, 0.59))]
    data = _Data()
    rows, drawn = explain_levels(levels, data.test.images[:2].float() / 255, data.test.item_ids[:2],
                                 methods=["gradcam", "attention"], class_names=data.class_names)
    assert drawn == ["gradcam"]  # attention does not apply to a CNN
    assert [r.label.splitlines()[:2] for r in rows] == [["test-00000", "level 0"], ["test-00000", "level 4"],
                                                         ["test-00001", "level 0"], ["test-00001", "level 4"]]
    assert "59.0% sparse" in rows[1].label
    assert draw_figure2(rows, drawn, tmp_path / "f.png").is_file()


def test_vit_gets_attention_methods(tmp_path):
    torch.manual_seed(0)
    vit = lively(create_model("small_vit", 5, image_size=32, patch_size=8, num_layers=2, hidden_dim=32,
                              mlp_dim=64))
    options = _options(ig_steps=4, n_images=2, figure_images=1)
    frame = records_frame(Suite().evaluate_level(_context(tmp_path, vit, options)))
    assert set(frame["method"]) == {"gradcam", "guided_gradcam", "integrated_gradients", "attention", "rollout"}
    assert frame["value"].notna().all()


def test_class_ground_truth_is_empty_for_wrong_predictions(tmp_path, resnet):
    frames = {}
    data = _Data(n=24)
    for gt in ("object", "class"):
        options = _options(ig_steps=4, n_images=24, ground_truth=gt, methods=["gradcam"])
        frames[gt] = records_frame(Suite().evaluate_level(_context(tmp_path / gt, resnet, options, data=data)))
    predicted = resnet(spec_for(resnet).normalize(data.test.images.float() / 255)).argmax(1)
    right = (predicted == data.test.labels).tolist()
    for metric in ("rma", "rra"):
        obj = frames["object"][frames["object"]["metric"] == metric]["value"].to_numpy()
        cls = frames["class"][frames["class"]["metric"] == metric]["value"].to_numpy()
        for r, o, c in zip(right, obj, cls):
            assert (c == pytest.approx(o)) if r else math.isnan(c)
    assert 0 < sum(right) < 24  # both cases occur


def test_voc_data_through_the_suite(tmp_path, resnet):
    root = make_vocdevkit(tmp_path / "voc")
    options = _options(data="voc", voc_root=str(root), image_size=32, ig_steps=4, methods=["gradcam"])
    frame = records_frame(Suite().evaluate_level(_context(tmp_path, resnet, options)))
    assert set(frame["dataset"]) == {"voc12"}
    assert frame["item"].unique().tolist() == ["2007_000001", "2007_000002", "2008_000003"]
    # voc_root alone selects VOC (what `prunelens evaluate --voc-root` sets)
    full = _options(voc_root=str(root), resize="none", ig_steps=4, methods=["integrated_gradients"])
    frame = records_frame(Suite().evaluate_level(_context(tmp_path / "full", resnet, full)))
    assert len(frame) == 6


def test_options_are_validated_with_key_names():
    with pytest.raises(ConfigError, match="voc_root"):
        _options(data="voc")
    with pytest.raises(ConfigError, match="evaluate.interpretability.methods"):
        _options(methods=["lrp"])
    with pytest.raises(ConfigError, match="evaluate.interpretability.pooling"):
        _options(pooling={"gradcam": "mean"})
    with pytest.raises(ConfigError, match="class_map"):
        _options(data="voc", voc_root="/x", ground_truth="class")
    with pytest.raises(ConfigError, match="not VOC classes"):
        _options(class_map={0: "kitten"})


def test_skip_reason_for_runs_without_masks():
    from prunelens.config import DataConfig
    from prunelens.data.provider import RunData
    from prunelens.data.registry import folders_unchecked

    with folders_unchecked():
        imagenet = RunData(DataConfig(name="imagenet", root="/data/imagenet"), seed=0)
    ctx = SimpleNamespace(options=_options(), spec=spec_for(create_model("resnet18", 5)), data=imagenet)
    assert "--voc-root" in Suite().skip_reason(ctx)
    ctx.options = _options(voc_root="/data/voc")
    assert Suite().skip_reason(ctx) is None


def test_skip_reason_for_models_without_feature_maps():
    fcn = create_model("fcn", 5, input_shape=(3, 8, 8), widths=(4,))
    from prunelens.config import DataConfig
    from prunelens.data.provider import RunData

    ctx = SimpleNamespace(options=_options(methods=["gradcam"]), spec=spec_for(fcn),
                          data=RunData(DataConfig(name="synthetic"), seed=0))
    assert "spatial feature map" in Suite().skip_reason(ctx)
    ctx.options = _options()
    assert Suite().skip_reason(ctx) is None  # Integrated Gradients still applies


def test_explain_run_draws_the_requested_images_of_a_run(tmp_path, resnet, monkeypatch):

    from prunelens.config import RunConfig
    from prunelens.explain.figure import explain_run
    from prunelens.runfolder import Layout

    config = RunConfig(name="demo", data={"name": "synthetic", "n_test": 6, "image_size": 32, "num_classes": 5})
    levels = [SimpleNamespace(index=i, sparsity=s, load_model=lambda: resnet) for i, s in ((0, 0.0), (2, 0.36))]
    pool = SimpleNamespace(levels=levels, config=config, name="demo", layout=Layout(tmp_path))
    monkeypatch.setattr("prunelens.runfolder.RunFolder", lambda run_dir: pool)
    out = explain_run(tmp_path, ["test-00004", "test-00001"], levels=[2], methods=["gradcam"])
    assert out == tmp_path / "results" / "interpretability" / "figure2_explain.png"
    with Image.open(out) as png:
        assert png.size[1] > png.size[0]  # two rows (one level, two images), two columns
    with pytest.raises(DataError, match="test-00099"):
        explain_run(tmp_path, ["test-00099"])
    with pytest.raises(PoolError, match="no levels"):
        explain_run(tmp_path, ["test-00001"], levels=[7])


def test_an_image_size_the_model_cannot_take_is_a_data_error(tmp_path):
    torch.manual_seed(0)
    lenet = lively(create_model("lenet5", 5, in_channels=3, input_size=32))  # fixed-size classifier
    root = make_vocdevkit(tmp_path / "voc")
    options = _options(data="voc", voc_root=str(root), image_size=48, methods=["gradcam"])
    with pytest.raises(DataError, match="cannot take 48x48 images .*image_size"):
        list(Suite().evaluate_level(_context(tmp_path, lenet, options)))


def test_reevaluating_without_figure_images_drops_stale_heatmaps(tmp_path, resnet):
    suite = Suite()
    list(suite.evaluate_level(_context(tmp_path, resnet, _options(ig_steps=2, n_images=2, figure_images=1))))
    saved = tmp_path / "results/interpretability/level_00/heatmaps.safetensors"
    assert saved.is_file()
    list(suite.evaluate_level(_context(tmp_path, resnet, _options(ig_steps=2, n_images=2, figure_images=0))))
    assert not saved.exists()


def test_paper_preset_equals_the_papers_own_pipeline(tmp_path, resnet):
    """preset: paper = min-max normalised GradCAM, Captum's default (zero) IG baseline, Quantus'
    RMA, and RRA ranked as the paper's ``np.argsort(h)[::-1]`` (tests/paper_reference.py). IG's
    SmoothGrad copies (the preset's 2) are switched off here to compare with plain Captum IG;
    tests/test_paper_scoring.py compares them with Captum's NoiseTunnel."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
    from paper_reference import paper_scores

    quantus = pytest.importorskip("quantus")
    options = _options(preset="paper", methods=["gradcam", "integrated_gradients"], ig_steps=8,
                       n_images=6, batch_size=4, figure_images=0, ig_noise_samples=0)
    assert options.scoring == ("minmax", "zero", False, "paper", "score", 0, "paper_first_window")
    assert _options(preset="paper", guide_gelu=True).scoring.guide_gelu  # one choice overridden
    frame = records_frame(Suite().evaluate_level(_context(tmp_path, resnet, options)))
    spec, data = spec_for(resnet), _Data()
    x = spec.normalize(data.test.images.float() / 255)
    target = resnet(x).argmax(1)
    cam = LayerGradCam(resnet, spec.gradcam_layer(resnet)).attribute(x, target=target, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear").detach()
    low, high = cam.amin((1, 2, 3), keepdim=True), cam.amax((1, 2, 3), keepdim=True)
    cam = (cam - low) / (high - low)                                     # the paper's min-max
    ig = IntegratedGradients(resnet).attribute(x, target=target, n_steps=8, method="gausslegendre")
    ig = ig.detach().square().sum(1, keepdim=True)                       # zero baseline: Captum's default
    masks = data.test.masks.unsqueeze(1).float().numpy()
    for method, a in (("gradcam", cam), ("integrated_gradients", ig)):
        kwargs = {"model": None, "x_batch": x.numpy(), "y_batch": target.numpy(), "a_batch": a.numpy(),
                  "s_batch": masks}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rma = quantus.RelevanceMassAccuracy(disable_warnings=True)(**kwargs)
        rows = frame[(frame["method"] == method) & (frame["metric"] == "rma")]
        np.testing.assert_allclose(rows["value"].to_numpy(), rma, rtol=1e-4, atol=1e-6, err_msg=method)
        pooling = None if method == "gradcam" else "l2-norm,sq"
        raw = cam if method == "gradcam" else IntegratedGradients(resnet).attribute(
            x, target=target, n_steps=8, method="gausslegendre").detach()
        rra = [paper_scores(r.double().numpy(), m[0].astype(np.float64), pooling)["rank"]
               for r, m in zip(raw, masks)]
        rows = frame[(frame["method"] == method) & (frame["metric"] == "rra")]
        np.testing.assert_allclose(rows["value"].to_numpy(), rra, rtol=1e-6, err_msg=method)
    assert "scoring preset 'paper'" in Suite.describe(options)


def test_paper_preset_reaches_the_scoring_and_ig(tmp_path, resnet, monkeypatch):
    """The suite hands the preset's tie rule, blank-map rule and SmoothGrad copies on: a GradCAM
    map made blank scores RMA 0 and the paper's last-K RRA (tests/paper_reference.py), and IG is
    called with 2 noise copies of std 1.0 around a zero baseline."""
    import dataclasses

    from paper_reference import paper_scores

    import prunelens.explain.pipeline as pipeline

    calls = []
    real_ig = pipeline.integrated_gradients

    def spy_ig(*args, **kwargs):
        calls.append({k: kwargs[k] for k in ("noise_samples", "noise_std")}
                     | {"zero_baseline": bool((kwargs["baseline"] == 0).all())})
        return real_ig(*args, **{**kwargs, "n_steps": 2})

    monkeypatch.setattr(pipeline, "integrated_gradients", spy_ig)
    blank = dataclasses.replace(pipeline.ATTRIBUTION_METHODS["gradcam"],
                                compute=lambda p: torch.zeros(len(p.x), *p.x.shape[-2:]))
    monkeypatch.setitem(pipeline.ATTRIBUTION_METHODS, "gradcam", blank)
    options = _options(preset="paper", methods=["gradcam", "integrated_gradients"], ig_steps=2,
                       n_images=4, batch_size=4, figure_images=0)
    frame = records_frame(Suite().evaluate_level(_context(tmp_path, resnet, options)))
    assert calls and all(c == {"noise_samples": 2, "noise_std": 1.0, "zero_baseline": True} for c in calls)
    masks = _Data().test.masks[:4].numpy().astype(np.float64)
    zeros = np.zeros((1, *masks.shape[1:]))
    for metric, key in (("rma", "mass"), ("rra", "rank")):
        rows = frame[(frame["method"] == "gradcam") & (frame["metric"] == metric)]
        ref = [paper_scores(zeros, m, None)[key] for m in masks]
        np.testing.assert_allclose(rows["value"].to_numpy(), ref, rtol=1e-6, atol=0)  # float32 maps


# ---- both presets in one run -------------------------------------------------------------------------
def test_a_list_of_presets_is_validated_and_one_preset_stays_the_plain_option():
    both = _options(preset=["paper", "default"])
    assert both.presets == ("paper", "default")
    assert both.scorings == {"paper": ("minmax", "zero", False, "paper", "score", 2, "paper_first_window"),
                             "default": ("none", "black", True, "expected", "nan", 0, "received")}
    assert _options(preset=["paper", "default"], ig_noise_samples=0).scorings["paper"].ig_noise_samples == 0
    # a list of one is the plain option: the same options, hence the same stored results
    assert _options(preset=["paper"]) == _options(preset="paper")
    assert _options(preset=["paper"]).model_dump() == _options(preset="paper").model_dump()
    assert Suite.options_from(_options(preset="paper").model_dump(mode="json")) == _options(preset="paper")
    assert Suite.options_from(both.model_dump(mode="json")) == both
    for bad in ([], ["paper", "paper"], ["paper", "nope"]):
        with pytest.raises(ConfigError, match="evaluate.interpretability.preset"):
            _options(preset=bad)
    resolved = Suite.resolved_options(both)
    assert resolved["rra_ties"] == {"paper": "paper", "default": "expected"}
    assert resolved["ig_noise_samples"] == {"paper": 2, "default": 0}
    text = Suite.describe(both)
    assert "scoring preset 'paper'" in text and "scoring preset 'default'" in text
    with pytest.raises(ValueError, match="several presets"):
        both.scoring  # noqa: B018 - one scoring does not exist for two presets


def test_both_presets_in_one_run_equal_two_single_preset_runs(tmp_path, resnet):
    """Records carry their preset as condition; each preset's values (SmoothGrad noise included)
    equal those of a run with that preset alone, whose records keep an empty condition."""
    common = dict(methods=["gradcam", "integrated_gradients"], ig_steps=2, n_images=5, batch_size=4,
                  figure_images=0, seed=3)
    both = records_frame(Suite().evaluate_level(
        _context(tmp_path / "both", resnet, _options(preset=["paper", "default"], **common))))
    assert sorted(set(both["condition"])) == ["default", "paper"]
    key = ["metric", "method", "item"]
    for preset in ("paper", "default"):
        alone = records_frame(Suite().evaluate_level(
            _context(tmp_path / preset, resnet, _options(preset=preset, **common))))
        assert (alone["condition"] == "").all()
        mine = both[both["condition"] == preset].sort_values(key).reset_index(drop=True)
        alone = alone.sort_values(key).reset_index(drop=True)
        assert len(mine) == len(alone) == 2 * 2 * 5
        pd.testing.assert_frame_equal(mine[key], alone[key])
        np.testing.assert_array_equal(mine["value"].to_numpy(), alone["value"].to_numpy())
    # the presets differ where the paper's choices matter (here: IG's baseline and noise)
    ig = both[(both["method"] == "integrated_gradients") & (both["metric"] == "rma")]
    assert not np.allclose(ig[ig["condition"] == "paper"]["value"], ig[ig["condition"] == "default"]["value"])
    summary = json.loads((tmp_path / "both/results/interpretability/level_00/summary.json").read_text())
    assert set(summary["counts"]) == {"paper", "default"}


def test_report_overlays_the_presets_in_the_interpretability_figures():
    """The figure's data holds one line per (method, preset); the preset picks the line style and
    the method the colour, so a reader sees what the paper's scoring changes."""
    from prunelens.report.figures import _at_resolution, _draw, _fit_lines, _rows, plots_for
    from prunelens.stats import summarize

    rng = np.random.default_rng(0)
    rows = [{"run": "r", "model": "m", "level": level, "sparsity": 1 - 0.8 ** level,
             "suite": "interpretability", "metric": metric, "method": method, "dataset": "voc12",
             "condition": preset, "item": str(i), "value": float(rng.random())}
            for level in range(3) for metric in ("rma", "rra") for method in ("gradcam", "integrated_gradients")
            for preset in ("paper", "default") for i in range(8)]
    frame = pd.DataFrame(rows)
    spec = next(p for p in plots_for(frame) if p.name == "interpretability")
    picked, exact = _at_resolution(_rows(frame, spec), spec)
    assert exact  # the preset is a line, not pooled away
    summary = summarize(picked, n_boot=50)
    spec = _fit_lines(spec, summary)
    fig = _draw(spec, summary, summary.iloc[:0], None, ["r"])
    ax = next(a for a in fig.axes if a.get_title() == "voc12 · rma")
    lines = {line.get_label(): line for line in ax.lines if " · " in line.get_label()}
    assert sorted(lines) == ["gradcam · default", "gradcam · paper", "integrated_gradients · default",
                             "integrated_gradients · paper"]
    want = summary[(summary["metric"] == "rma") & (summary["method"] == "gradcam")
                   & (summary["condition"] == "paper")].sort_values("level")["mean"]
    np.testing.assert_allclose(lines["gradcam · paper"].get_ydata(), want)
    assert lines["gradcam · paper"].get_color() == lines["gradcam · default"].get_color()
    assert lines["gradcam · paper"].get_linestyle() != lines["gradcam · default"].get_linestyle()
    assert lines["gradcam · paper"].get_linestyle() == lines["integrated_gradients · paper"].get_linestyle()
