"""The ``paper`` scoring preset against a transcription of Cassano et al.'s scoring code
(tests/paper_reference.py): the RRA tie rule, blank maps, and IG's SmoothGrad settings."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from _explain_helpers import images, small
from paper_reference import paper_scores, paper_swin_attention_image

from prunelens.explain import integrated_gradients, localisation_scores
from prunelens.explain.suite import PRESETS, InterpretabilityOptions, InterpretabilitySuite


def _tied_case(seed: int, b: int = 8, h: int = 9, w: int = 11, levels: int = 4):
    """Maps with few distinct values (heavy ties) and rectangular masks, as float64 / bool."""
    g = torch.Generator().manual_seed(seed)
    heat = torch.randint(0, levels, (b, h, w), generator=g)
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        y0, x0 = torch.randint(0, h // 2, (2,), generator=g).tolist()
        masks[i, y0:y0 + 2 + i % 3, x0:x0 + 3 + i % 4] = True
    heat = (heat + 2 * masks).clamp(max=levels - 1)  # more relevance on the mask, ties at the top
    return heat.double(), masks


def _tied_at_kth(heat: torch.Tensor, masks: torch.Tensor) -> list[bool]:
    """Per item: is the K-th largest value (K = |GT|) shared with a pixel outside the top K?"""
    out = []
    for hm, m in zip(heat.flatten(1), masks.flatten(1)):
        k = int(m.sum())
        v = hm.sort(descending=True).values
        out.append(bool(v[k - 1] == v[k]))
    return out


def _oracle(heat, masks, pooling):
    return [paper_scores(hm.unsqueeze(0).numpy() if pooling is None else hm.numpy(),
                         m.numpy().astype(np.float64), pooling)
            for hm, m in zip(heat, masks)]


# ---- RRA ties ----------------------------------------------------------------------------------------
def test_paper_tie_rule_equals_the_papers_reversed_argsort_where_ties_straddle_k():
    heat, masks = _tied_case(seed=3)
    tied = _tied_at_kth(heat, masks)
    assert sum(tied) >= 4  # the case exercises ties at the K-th place
    got = localisation_scores(heat, masks, ties="paper", minmax=True, blank_maps="score")
    ref = _oracle(heat, masks, None)
    np.testing.assert_allclose(got["rra"].numpy(), [r["rank"] for r in ref], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["rma"].numpy(), [r["mass"] for r in ref], rtol=1e-12, atol=1e-15)
    index = localisation_scores(heat, masks, ties="index", minmax=True)["rra"]
    differs = (index != got["rra"]).tolist()
    assert any(differs) and not any(d and not t for d, t in zip(differs, tied))  # only where tied


def test_paper_tie_rule_on_a_hand_worked_map():
    # K = 2; values 5 > 1 = 1 = 1: one top place is left for three tied pixels at raster 1, 2, 3
    heat = torch.tensor([[[5.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    last = torch.tensor([[[True, False], [False, True]]])   # GT = {0, 3}
    first = torch.tensor([[[True, True], [False, False]]])  # GT = {0, 1}
    for gt, paper, index in ((last, 1.0, 0.5), (first, 0.5, 1.0)):
        assert localisation_scores(heat, gt, ties="paper")["rra"].item() == paper
        assert localisation_scores(heat, gt, ties="index")["rra"].item() == index
        assert paper_scores(heat.numpy(), gt[0].numpy().astype(float), "l2-norm,sq")["rank"] \
            == pytest.approx(paper_scores(heat.numpy(), gt[0].numpy().astype(float), None)["rank"])
        assert paper_scores(heat.numpy(), gt[0].numpy().astype(float), None)["rank"] == pytest.approx(paper)


def test_paper_tie_rule_with_ig_pooling_and_no_minmax():
    """IG: l2-norm,sq channel pooling, no min-max (evaluate_single with pooling 'l2-norm,sq')."""
    g = torch.Generator().manual_seed(7)
    heat = torch.randint(-2, 3, (8, 3, 9, 11), generator=g).double()  # ties after pooling
    _, masks = _tied_case(seed=7)
    got = localisation_scores(heat, masks, pooling="l2-norm,sq", ties="paper", blank_maps="score")
    ref = _oracle(heat, masks, "l2-norm,sq")
    np.testing.assert_allclose(got["rra"].numpy(), [r["rank"] for r in ref], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["rma"].numpy(), [r["mass"] for r in ref], rtol=1e-12, atol=1e-15)


def test_ignored_pixels_rank_last_under_the_paper_tie_rule():
    heat = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]], dtype=torch.float64)
    gt = torch.tensor([[[False, False, True, False]]])
    ignore = torch.tensor([[[False, False, False, True]]])  # the last pixel leaves the ranking
    assert localisation_scores(heat, gt, ignore, ties="paper")["rra"].item() == 1.0
    assert localisation_scores(heat, gt, ties="paper")["rra"].item() == 0.0


# ---- blank maps --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.0, 0.3])  # all zero, and constant (min-max makes it all zero)
def test_blank_maps_score_as_the_papers_eps_terms_do(value):
    heat = torch.full((3, 4, 4), value, dtype=torch.float64)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 3, :] = True            # GT = last row: the paper's reversed ranking puts it first
    masks[1, 0, :] = True            # GT = first row: ranked last
    masks[2, 0, :2] = True
    masks[2, 3, :] = True            # K = 6, the last 6 pixels hold 4 of them
    ref = _oracle(heat, masks, None)
    assert [r["mass"] for r in ref] == [0.0, 0.0, 0.0]
    assert [r["rank"] for r in ref] == pytest.approx([1.0, 0.0, 4 / 6])
    got = localisation_scores(heat, masks, ties="paper", minmax=True, blank_maps="score")
    np.testing.assert_allclose(got["rma"].numpy(), [0.0, 0.0, 0.0], atol=0)
    np.testing.assert_allclose(got["rra"].numpy(), [r["rank"] for r in ref], rtol=1e-12)
    nan = localisation_scores(heat, masks, ties="paper", minmax=True, blank_maps="nan")
    assert all(math.isnan(v) for v in [*nan["rma"].tolist(), *nan["rra"].tolist()])
    # under the other tie rules a blank map's RRA is what they make of N equal values
    expected = localisation_scores(heat, masks, minmax=True, blank_maps="score")["rra"]
    np.testing.assert_allclose(expected.numpy(), [4 / 16, 4 / 16, 6 / 16])


def test_an_empty_mask_stays_nan_with_either_blank_map_rule():
    heat = torch.rand(1, 4, 4, dtype=torch.float64)
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    for blank in ("nan", "score"):
        s = localisation_scores(heat, empty, ties="paper", blank_maps=blank)
        assert math.isnan(s["rma"].item()) and math.isnan(s["rra"].item())


# ---- the preset --------------------------------------------------------------------------------------
def test_paper_preset_resolves_to_the_papers_choices():
    paper = InterpretabilityOptions(preset="paper")
    assert paper.scoring == ("minmax", "zero", False, "paper", "score", 2, "paper_first_window")
    assert InterpretabilityOptions().scoring == ("none", "black", True, "expected", "nan", 0, "received")
    assert InterpretabilityOptions(preset="paper", ig_noise_samples=0).scoring.ig_noise_samples == 0
    assert InterpretabilityOptions(preset="paper", rra_ties="index").scoring.rra_ties == "index"
    # the noise std is Captum NoiseTunnel's default stdevs, which the paper's call leaves in place
    from captum.attr import NoiseTunnel

    stdevs = inspect.signature(NoiseTunnel.attribute).parameters["stdevs"].default
    assert paper.ig_noise_std == stdevs == 1.0
    text = InterpretabilitySuite.describe(paper)
    assert "SmoothGrad over 2 copies (std 1)" in text and "later first" in text and "RMA 0" in text
    assert "Swin attention of the first window (the paper)" in text


def test_options_stored_before_blank_maps_keep_their_meaning():
    from_old = InterpretabilitySuite.options_from
    # an old default-preset result: ig_noise_samples 0 then = the default preset's 0 now
    assert from_old({"preset": "default", "ig_noise_samples": 0}) == InterpretabilityOptions()
    # an old paper-preset result ranked ties by index, gave blank maps NaN, and had no noise
    old = from_old({"preset": "paper", "ig_noise_samples": 0})
    assert old.scoring == ("minmax", "zero", False, "index", "nan", 0, "received")
    assert old != InterpretabilityOptions(preset="paper")
    # options stored by this version are read as they are
    now = InterpretabilityOptions(preset="paper").model_dump(mode="json")
    assert from_old(now) == InterpretabilityOptions(preset="paper")


def test_options_stored_before_swin_attention_keep_their_meaning():
    """Before ``swin_attention`` every preset mapped the attention Swin's tokens receive: an old
    paper-preset result is recomputed (its Swin map changed), an old default one is still current."""
    from_old = InterpretabilitySuite.options_from
    stored = InterpretabilityOptions(preset="paper").model_dump(mode="json")
    stored.pop("swin_attention")
    old = from_old(stored)
    assert old.scoring.swin_attention == "received" and old != InterpretabilityOptions(preset="paper")
    stored = InterpretabilityOptions().model_dump(mode="json")
    stored.pop("swin_attention")
    assert from_old(stored) == InterpretabilityOptions()


def test_an_old_paper_result_stays_current_where_swin_attention_cannot_act():
    """``evaluate``'s staleness check compares options as they act on the run's architecture: the
    Swin map choice changes nothing on a ResNet or a ViT, so their old paper-preset results are not
    recomputed; on a Swin they are. A stored list of presets is read too (no TypeError)."""
    from prunelens.evaluate import _same_options
    from prunelens.models.registry import spec_of

    for preset in ("paper", ["paper", "default"]):
        stored = InterpretabilityOptions(preset=preset).model_dump(mode="json")
        stored.pop("swin_attention")
        meta = {"options": stored}
        now = InterpretabilityOptions(preset=preset)
        assert _same_options(InterpretabilitySuite, meta, now, spec_of("resnet18"))
        assert _same_options(InterpretabilitySuite, meta, now, spec_of("vit_b_32"))
        assert not _same_options(InterpretabilitySuite, meta, now, spec_of("swin_v2_t"))
    # an option that acts everywhere still makes results stale on every architecture
    meta = {"options": InterpretabilityOptions(preset="default").model_dump(mode="json")}
    assert not _same_options(InterpretabilitySuite, meta, InterpretabilityOptions(preset="paper"),
                             spec_of("resnet18"))


def test_smoothgrad_ig_equals_captum_noise_tunnel_called_as_the_paper_calls_it(monkeypatch):
    """``NoiseTunnel(IntegratedGradients(model)).attribute(nt_samples_batch_size=1, inputs=x,
    target=..., nt_samples=2, nt_type='smoothgrad')`` (the paper's ``integrated_gradients``): its
    noise draws are replaced by the ones prunelens draws from the generator."""
    from captum.attr import IntegratedGradients, NoiseTunnel

    model, x = small("small_resnet"), images(2)
    scoring = PRESETS["paper"]
    std = InterpretabilityOptions(preset="paper").ig_noise_std
    with torch.no_grad():
        target = model(x).argmax(1)
    ours = integrated_gradients(model, x, target, baseline=torch.zeros_like(x), n_steps=50,
                                noise_samples=scoring.ig_noise_samples, noise_std=std,
                                generator=torch.Generator().manual_seed(11)).attributions
    noise = iter(torch.randn((scoring.ig_noise_samples, *x.shape), dtype=x.dtype,
                             generator=torch.Generator().manual_seed(11)))
    normal = torch.normal

    def fake_normal(mean, std, *args, **kwargs):
        if isinstance(std, torch.Tensor) and std.shape == x.shape:  # one sample per call (batch size 1)
            return next(noise) * std
        return normal(mean, std, *args, **kwargs)

    monkeypatch.setattr(torch, "normal", fake_normal)
    theirs = NoiseTunnel(IntegratedGradients(model)).attribute(
        nt_samples_batch_size=1, inputs=x, target=target, nt_samples=2, nt_type="smoothgrad")
    assert next(noise, None) is None  # both noise samples were used
    rel = (ours - theirs).abs().max() / theirs.abs().max()
    assert rel <= 1e-6


# ---- Swin's attention map -------------------------------------------------------------------------
def _last_softmax(model, x, monkeypatch):
    """The probabilities of the last softmax a forward pass computes: the last Swin block's window
    attention, as the authors' modified torchvision Swin saved it (each block overwrote the file)."""
    seen = []
    softmax = torch.nn.functional.softmax

    def recording(*args, **kwargs):
        seen.append(softmax(*args, **kwargs))
        return seen[-1]

    with monkeypatch.context() as m:
        m.setattr(torch.nn.functional, "softmax", recording)
        with torch.no_grad():
            model(x)
    return seen[-1]


def test_paper_swin_attention_map_is_the_papers_first_window_row(monkeypatch):
    """``swin_attention: paper_first_window`` against build_attention_image (tests/paper_reference.py),
    image by image as the paper ran it, on a batch of two non-square images whose last stage has 2x2
    windows (9x11 tokens padded to 16x16) and a cyclic shift."""
    from prunelens.explain import explain_batch
    from prunelens.models import spec_for
    from prunelens._compat import torchvision

    v2 = torchvision().models.swin_transformer

    torch.manual_seed(0)  # swin_v2_t's design (8x8 windows, patch 4, V2 blocks), narrower and shallower
    swin = v2.SwinTransformer([4, 4], 24, [1, 1, 1, 2], [1, 1, 2, 3], [8, 8], stochastic_depth_prob=0.0,
                              num_classes=5, block=v2.SwinTransformerBlockV2,
                              downsample_layer=v2.PatchMergingV2).eval()
    x = torch.randn(2, 3, 288, 352, generator=torch.Generator().manual_seed(3))
    last = [m for m in swin.features[-1].modules() if type(m).__name__ == "ShiftedWindowAttentionV2"][-1]
    assert last.shift_size == [4, 4]
    got = explain_batch(swin, x, ["attention"], window_attention="paper_first_window").heatmaps["attention"]
    for i in range(2):
        attention = _last_softmax(swin, x[i:i + 1], monkeypatch)
        assert attention.shape == (4, 3, 64, 64)                  # 4 windows, 3 heads, 8x8 tokens
        expected = paper_swin_attention_image(attention, 4, 288, 352)
        torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-6)
    # the default map is another object: the attention tokens receive
    received = explain_batch(swin, x, ["attention"]).heatmaps["attention"]
    assert not torch.allclose(received, got)
    assert spec_for(swin).window_attention_map(swin, x[:1], "paper_first_window").shape == (1, 32, 32)


def test_the_paper_preset_asks_for_the_papers_swin_map(monkeypatch, tmp_path):
    """The suite hands the preset's choice to the attention method (default: received)."""
    import prunelens.explain.suite as suite_module
    from prunelens.explain.suite import InterpretabilitySuite

    asked = []

    def stop(*args, window_attention, **kwargs):
        asked.append(window_attention)
        raise KeyboardInterrupt

    monkeypatch.setattr(suite_module, "explain_batch", stop)
    from test_explain_suite import _context, _options

    for preset, expected in (("paper", "paper_first_window"), ("default", "received")):
        ctx = _context(tmp_path, small("small_resnet", torch.float32), _options(preset=preset, n_images=2))
        with pytest.raises(KeyboardInterrupt):
            list(InterpretabilitySuite().evaluate_level(ctx))
        assert asked[-1] == expected
    ctx = _context(tmp_path, small("small_resnet", torch.float32),
                   _options(preset="paper", swin_attention="received", n_images=2))
    with pytest.raises(KeyboardInterrupt):
        list(InterpretabilitySuite().evaluate_level(ctx))
    assert asked[-1] == "received"
