"""Connectivity & locality (prunelens.analysis.connectivity) and the ``connectivity`` suite.

Oracles: hand-made masks with hand-counted histograms and scores, a brute-force per-unit loop over
all pairs, Monte-Carlo averages of random masks for the analytic baseline, and models whose
ablation outcome is known.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from prunelens.analysis import connectivity as conn


def brute_force_histograms(units: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs of distinct connected inputs of every unit, counted one by one."""
    u, c, h, w = units.shape
    sc = np.zeros((2 * h - 1, 2 * w - 1))
    dc = np.zeros((2 * h - 1, 2 * w - 1))
    for unit in units:
        points = [tuple(p) for p in torch.nonzero(unit).tolist()]
        for (c1, y1, x1), (c2, y2, x2) in itertools.permutations(points, 2):
            target = sc if c1 == c2 else dc
            target[y2 - y1 + h - 1, x2 - x1 + w - 1] += 1
    return sc, dc


def single_unit(shape, points) -> torch.Tensor:
    units = torch.zeros(1, *shape, dtype=torch.bool)
    for p in points:
        units[(0, *p)] = True
    return units


# ---- hand-made masks -----------------------------------------------------------------------------
def test_two_pixels_same_channel_give_one_pair_each_way():
    units = single_unit((1, 3, 3), [(0, 0, 0), (0, 0, 2)])
    sc, dc = conn.pair_histograms(units)
    assert sc.shape == (5, 5)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[2, 4] = expected[2, 0] = 1  # d = (0, +2) and (0, -2)
    assert torch.equal(sc, expected)
    assert dc.abs().sum() == 0


def test_same_pixel_in_two_channels_is_a_different_channel_pair_at_zero_displacement():
    units = single_unit((2, 3, 3), [(0, 1, 1), (1, 1, 1)])
    sc, dc = conn.pair_histograms(units)
    assert sc.abs().sum() == 0
    assert dc[2, 2] == 2 and dc.sum() == 2


@pytest.mark.parametrize("method", ["fft", "direct", "auto"])
def test_histograms_match_brute_force_on_random_masks(method):
    g = torch.Generator().manual_seed(0)
    for shape, density in (((3, 6, 5), 0.3), ((1, 7, 7), 0.5), ((2, 4, 9), 0.9), ((3, 5, 5), 0.02)):
        units = torch.rand(9, *shape, generator=g) < density
        units[4] = False  # an empty unit
        sc, dc = conn.pair_histograms(units, chunk=4, method=method)  # several chunks
        ref_sc, ref_dc = brute_force_histograms(units)
        np.testing.assert_array_equal(sc.numpy(), ref_sc)
        np.testing.assert_array_equal(dc.numpy(), ref_dc)
        per_sc, _ = conn.pair_histograms(units, per_unit=True, method=method)
        np.testing.assert_array_equal(per_sc[3].numpy(), brute_force_histograms(units[3:4])[0])
        assert torch.equal(sc, sc.flip(0).flip(1))  # S(d) = S(-d)


def test_direct_method_splits_many_pairs_into_chunks(monkeypatch):
    monkeypatch.setattr(conn, "_PAIR_BUDGET", 50)  # forces one or two units per chunk
    g = torch.Generator().manual_seed(7)
    units = torch.rand(12, 2, 4, 4, generator=g) < 0.4
    sc, dc = conn.pair_histograms(units, method="direct")
    ref_sc, ref_dc = brute_force_histograms(units)
    np.testing.assert_array_equal(sc.numpy(), ref_sc)
    np.testing.assert_array_equal(dc.numpy(), ref_dc)


def test_auto_picks_pairs_for_sparse_and_fft_for_dense_masks():
    g = torch.Generator().manual_seed(8)
    assert conn._use_direct(torch.rand(64, 3, 32, 32, generator=g) < 0.01)
    assert not conn._use_direct(torch.rand(64, 3, 32, 32, generator=g) < 0.5)


def test_total_pairs_are_k_times_k_minus_one():
    g = torch.Generator().manual_seed(1)
    units = torch.rand(20, 3, 8, 8, generator=g) < 0.2
    sc, dc = conn.pair_histograms(units)
    k = conn.connections_per_unit(units).double()
    assert float(sc.sum() + dc.sum()) == float((k * (k - 1)).sum())


def test_locality_of_adjacent_pair_hand_computed():
    # 1 channel 4x4 grid, r = 1: ordered pairs of distinct pixels at |d| = 1 are 2 * (4*3 + 4*3) = 48
    # of 16 * 15 = 240, so the random-mask fraction is 0.2; a unit linking two neighbours scores 5.
    units = torch.cat([single_unit((1, 4, 4), [(0, 1, 1), (0, 1, 2)]),
                       single_unit((1, 4, 4), [(0, 0, 0), (0, 3, 3)]),
                       single_unit((1, 4, 4), [(0, 2, 2)])])
    loc = conn.locality(units, radius=1.0)
    assert loc.baseline_fraction == pytest.approx(0.2)
    assert loc.unit_fraction[0] == 1.0 and loc.unit_score[0] == pytest.approx(5.0)
    assert loc.unit_fraction[1] == 0.0 and loc.unit_score[1] == 0.0
    assert math.isnan(loc.unit_score[2])  # one connection: no pair, no score
    assert loc.pooled_fraction == pytest.approx(0.5)  # 2 local of 4 ordered pairs
    assert loc.pooled_score == pytest.approx(2.5)
    assert math.isnan(loc.dc_score)  # single channel


def test_dense_mask_is_exactly_as_local_as_random():
    units = torch.ones(4, 3, 6, 6, dtype=torch.bool)
    loc = conn.locality(units, radius=2.0)
    assert loc.pooled_score == pytest.approx(1.0)
    assert loc.dc_score == pytest.approx(1.0)
    torch.testing.assert_close(loc.s_sc, loc.expected_sc)
    torch.testing.assert_close(loc.s_dc, loc.expected_dc)
    torch.testing.assert_close(loc.unit_score, torch.ones(4, dtype=torch.float64))


def test_compact_receptive_fields_score_far_above_random_ones():
    g = torch.Generator().manual_seed(2)
    units = torch.zeros(32, 3, 16, 16, dtype=torch.bool)
    for u in range(32):
        y, x = torch.randint(0, 13, (2,), generator=g).tolist()
        units[u, :, y:y + 3, x:x + 3] = True
    local = conn.locality(units, radius=2.0)
    shuffled = conn.locality(conn.random_masks_like(units, g), radius=2.0)
    assert local.pooled_score > 5
    assert shuffled.pooled_score == pytest.approx(1.0, abs=0.25)


# ---- the random baseline -------------------------------------------------------------------------
def test_random_masks_keep_each_units_count():
    g = torch.Generator().manual_seed(3)
    units = torch.rand(50, 3, 5, 5, generator=g) < torch.rand(50, 1, 1, 1, generator=g)
    units[0] = False
    units[1] = True
    shuffled = conn.random_masks_like(units, g)
    assert torch.equal(conn.connections_per_unit(shuffled), conn.connections_per_unit(units))


def test_random_baseline_is_the_expectation_of_random_masks():
    g = torch.Generator().manual_seed(4)
    units = torch.rand(40, 2, 5, 6, generator=g) < 0.3
    e_sc, e_dc = conn.random_baseline(conn.connections_per_unit(units), (2, 5, 6))
    n_draws = 300  # every draw of every unit at once: the units repeated n_draws times
    sum_sc, sum_dc = conn.pair_histograms(conn.random_masks_like(units.repeat(n_draws, 1, 1, 1), g))
    mean_sc, mean_dc = sum_sc / n_draws, sum_dc / n_draws
    k = conn.connections_per_unit(units).double()
    assert float(e_sc.sum() + e_dc.sum()) == pytest.approx(float((k * (k - 1)).sum()))
    # per-cell Monte-Carlo error is a few % where the counts are large
    big = e_sc > 20
    assert torch.allclose(mean_sc[big], e_sc[big], rtol=0.08)
    assert torch.allclose(mean_dc[e_dc > 20], e_dc[e_dc > 20], rtol=0.08)
    assert float((mean_sc - e_sc).abs().sum() / e_sc.sum()) < 0.03


# ---- unit images, counts, second layer -----------------------------------------------------------
def test_linear_rows_reshape_like_flattened_images():
    image = torch.zeros(1, 3, 4, 5)
    image[0, 1, 2, 3] = 1.0
    row = nn.Flatten()(image)  # what the FCN's first layer sees
    units = conn.unit_masks(row.bool(), (3, 4, 5))
    assert units.shape == (1, 3, 4, 5) and units[0, 1, 2, 3] and units.sum() == 1
    with pytest.raises(ValueError):
        conn.unit_masks(row.bool(), (3, 4, 4))


def test_counts_per_unit_and_input_and_alive_fraction():
    units = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    units[0, 0, 0, 0] = units[0, 1, 1, 1] = True
    units[1, 0, 0, 0] = True
    assert conn.connections_per_unit(units).tolist() == [2, 1, 0]
    per_input = conn.connections_per_input(units)
    assert per_input[0, 0, 0] == 2 and per_input[1, 1, 1] == 1 and per_input.sum() == 3
    assert conn.alive_units_fraction(units) == pytest.approx(2 / 3)


def test_effective_mask_is_the_reachable_inputs():
    m1 = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)  # 3 units, 4 inputs
    m2 = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    eff = conn.effective_mask(m1, m2)
    assert eff.tolist() == [[True, True, True, False], [False] * 4, [True, False, False, False]]


# ---- translation structure -----------------------------------------------------------------------
def test_shifted_copy_has_similarity_one_at_its_shift():
    g = torch.Generator().manual_seed(5)
    a = torch.zeros(1, 3, 10, 10, dtype=torch.bool)
    a[0, :, 2:5, 1:4] = torch.rand(3, 3, 3, generator=g) < 0.6
    b = torch.roll(a, shifts=(3, 4), dims=(2, 3))  # stays inside the 10x10 grid
    best, aligned = conn.shift_similarity(a, b)
    assert best.item() == pytest.approx(1.0)
    assert aligned.item() < 0.5


def test_shift_similarity_matches_brute_force():
    g = torch.Generator().manual_seed(6)
    a = torch.rand(5, 2, 4, 5, generator=g) < 0.4
    b = torch.rand(5, 2, 4, 5, generator=g) < 0.4
    best, aligned = conn.shift_similarity(a, b)
    for i in range(5):
        pa = torch.nn.functional.pad(a[i].float(), (4, 4, 3, 3))  # every shift inside the padding
        overlaps = [float((pa[:, 3 + dy:7 + dy, 4 + dx:9 + dx] * b[i].float()).sum())
                    for dy in range(-3, 4) for dx in range(-4, 5)]
        norm = math.sqrt(float(a[i].sum()) * float(b[i].sum()))
        assert best[i].item() == pytest.approx(max(overlaps) / norm)
        assert aligned[i].item() == pytest.approx(float((a[i] & b[i]).sum()) / norm)


def test_sample_unit_pairs_are_distinct_alive_pairs():
    alive = torch.tensor([2, 5, 7, 11])
    everything = conn.sample_unit_pairs(alive, 100)
    assert {tuple(p) for p in everything.tolist()} == set(itertools.combinations([2, 5, 7, 11], 2))
    some = conn.sample_unit_pairs(alive, 3, torch.Generator().manual_seed(0))
    assert len({tuple(p) for p in some.tolist()}) == 3
    assert len(conn.sample_unit_pairs(alive[:1], 3)) == 0


# ---- ablation ------------------------------------------------------------------------------------
def test_choose_units_most_least_random():
    counts = torch.tensor([5, 0, 9, 1, 3, 7, 0, 2, 8, 4])  # 8 connected units
    chosen = conn.choose_units(counts, 0.25, torch.Generator().manual_seed(0))
    assert chosen["most"].tolist() == [2, 8]
    assert chosen["least"].tolist() == [7, 3]
    assert len(chosen["random"]) == 2 and all(counts[chosen["random"]] > 0)


def test_zeroing_units_equals_pruning_their_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x, y = torch.rand(16, 3, 2, 2), torch.randint(3, (16,))
    units = torch.tensor([1, 4])
    ablated = conn.ablation_correct(model, model[1], units, [(x, y)])
    with torch.no_grad():
        model[1].weight[units] = 0
        model[1].bias[units] = 0
        expected = model(x).argmax(1) == y
    assert torch.equal(ablated, expected)


def test_ablating_the_only_informative_unit_breaks_a_hand_made_classifier():
    # class = which of two inputs is larger; unit 0 computes x0 - x1, unit 1 is inert
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.Identity(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        model[1].bias.zero_()
        model[3].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model[3].bias.copy_(torch.tensor([0.0, 0.0]))
    x = torch.tensor([[[[2.0, 1.0]]], [[[0.0, 3.0]]], [[[5.0, 1.0]]]])
    y = torch.tensor([0, 1, 0])
    assert conn.ablation_correct(model, model[1], torch.tensor([], dtype=torch.long), [(x, y)]).all()
    assert conn.ablation_correct(model, model[1], torch.tensor([1]), [(x, y)]).all()
    # without unit 0 all logits tie at 0 and argmax picks class 0: right only for class-0 images
    without_0 = conn.ablation_correct(model, model[1], torch.tensor([0]), [(x, y)])
    assert without_0.tolist() == [True, False, True]


def test_conv_ablation_zeroes_output_channels():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
    x, y = torch.rand(8, 2, 5, 5), torch.randint(3, (8,))
    got = conn.ablation_correct(model, conv, torch.tensor([0, 3]), [(x, y)])
    with torch.no_grad():
        h = conv(x)
        h[:, [0, 3]] = 0
        expected = model[2](model[1](h)).argmax(1) == y
    assert torch.equal(got, expected)


# ---- the suite -----------------------------------------------------------------------------------
def make_context(tmp_path, model, masks, options):
    from prunelens.config import DataConfig
    from prunelens.data.provider import RunData
    from prunelens.suite import LevelContext
    from prunelens.models import spec_for

    data = RunData(DataConfig(name="synthetic", image_size=16, n_train=64, n_val=16, n_test=48), seed=0)
    return LevelContext(pool=None, config=None, options=options,
                        device=torch.device("cpu"), data=data, spec=spec_for(model),
                        artifacts=tmp_path / "connectivity", batch_size=16, level=None, model=model,
                        masks=masks, level_artifacts=tmp_path / "connectivity" / "level_01")


def pruned_fcn(density=0.1, seed=0):
    from prunelens.models import create_model, spec_for

    torch.manual_seed(seed)
    model = create_model("fcn", 10, input_shape=(3, 16, 16), widths=(64, 32)).eval()
    masks = {n: torch.rand_like(p) < density for n, p in spec_for(model).prunable(model).items()}
    masks["layers.fc1.weight"][5] = False  # a dead unit
    with torch.no_grad():
        for n, p in spec_for(model).prunable(model).items():
            p.mul_(masks[n])
    return model, masks


def test_connectivity_suite_on_a_pruned_fcn(tmp_path):
    from prunelens.suite import get_suite

    model, masks = pruned_fcn()
    suite = get_suite("connectivity")
    opts = suite.Options(n_images=32, n_shift_pairs=20, radius=1.5)
    ctx = make_context(tmp_path, model, masks, opts)
    records = list(suite().evaluate_level(ctx))
    assert all(r.suite == "connectivity" for r in records)
    by = {}
    for r in records:
        by.setdefault((r.metric, r.method, r.condition), []).append(r)

    m1 = masks["layers.fc1.weight"]
    counts = by[("connections_per_unit", "layers.fc1", "")]
    assert [r.value for r in counts] == m1.sum(1).float().tolist()
    assert [r.item for r in counts] == [str(u) for u in range(64)]
    alive = by[("alive_units_fraction", "layers.fc1", "")][0].value
    assert alive == pytest.approx(float(m1.any(1).float().mean()))
    assert ("alive_units_fraction", "layers.classifier", "") in by  # every prunable layer

    # locality: the baseline is the grid fraction of pairs with 0 < |d| <= 1.5 (8 neighbours)
    same, _ = conn.grid_pair_counts((3, 16, 16))
    dy, dx = conn.displacement_grid(16, 16)
    near = (dy ** 2 + dx ** 2 <= 1.5 ** 2) & ((dy != 0) | (dx != 0))
    baseline = by[("locality_baseline", "layers.fc1", "")][0].value
    assert baseline == pytest.approx(float(same[near].sum() / same.sum()))
    scores = [r.value for r in by[("locality_score", "layers.fc1", "")]]
    assert len(scores) == 64 and math.isnan(scores[5])
    loc = conn.locality(conn.unit_masks(m1, (3, 16, 16)), 1.5)
    np.testing.assert_allclose(scores, loc.unit_score.numpy(), equal_nan=True)

    # second layer: its effective mask M2·M1
    eff = conn.effective_mask(m1, masks["layers.fc2.weight"])
    eff_counts = [r.value for r in by[("connections_per_unit", "layers.fc2 (effective)", "")]]
    assert eff_counts == eff.sum(1).float().tolist()

    pairs = by[("shift_similarity", "layers.fc1", "")]
    assert len(pairs) == 20 and all(0 < r.value <= 1 for r in pairs)
    assert len(by[("shift_similarity_random", "layers.fc1", "")]) == 20

    # ablation: per-image 0/1 under each condition and drops consistent with them
    for condition in ("none", "most", "least", "random"):
        rows = by[("ablation_accuracy", "layers.fc1", condition)]
        assert len(rows) == 32 and {r.value for r in rows} <= {0.0, 1.0}
    mean = {c: np.mean([r.value for r in by[("ablation_accuracy", "layers.fc1", c)]])
            for c in ("none", "most")}
    drop = by[("accuracy_drop", "layers.fc1", "most")][0].value
    assert drop == pytest.approx(mean["none"] - mean["most"])

    names = {p.name for p in ctx.level_artifacts.iterdir()}
    assert {"connections_layers.fc1.png", "pairs_layers.fc1.png", "gallery_layers.fc1.png",
            "pairs_layers.fc2_effective.png"} <= names

    # class-independent response: the selectivity module's records for the suite's images
    from prunelens.analysis.selectivity import selectivity_records
    from prunelens.analysis.suites import sample_images, stacked
    x, y = stacked(ctx, sample_images(ctx, "test", opts.selectivity_images))
    direct = list(selectivity_records(model, ctx.spec, masks, x, y, num_classes=10, batch_size=16,
                                      n_pairs=20))
    fraction = by[("class_independent_fraction", "layers.fc1", "eta2")]
    assert len(fraction) == 64
    assert [r.value for r in fraction] == pytest.approx(
        [r.value for r in direct if r.metric == "class_independent_fraction"], nan_ok=True)


def test_connectivity_suite_reads_conv_kernels(tmp_path):
    from prunelens.suite import get_suite
    from prunelens.models import create_model, spec_for

    torch.manual_seed(0)
    model = create_model("small_vit", 10, image_size=16, patch_size=8, num_layers=1, num_heads=2,
                         hidden_dim=16, mlp_dim=16).eval()
    masks = {n: torch.rand_like(p) < 0.3 for n, p in spec_for(model).prunable(model).items()}
    suite = get_suite("connectivity")
    ctx = make_context(tmp_path, model, masks, suite.Options(n_images=0, figures=False))
    records = list(suite().evaluate_level(ctx))
    metrics = {(r.metric, r.method) for r in records}
    assert ("locality_score", "conv_proj") in metrics  # 8x8 patch kernels are images
    assert not any(r.metric == "ablation_accuracy" for r in records)  # n_images=0
    counts = [r.value for r in records if r.metric == "connections_per_unit"]
    assert counts == masks["conv_proj.weight"].flatten(1).sum(1).float().tolist()

    small = suite.Options(n_images=0, figures=False, min_kernel=9)  # 8x8 < 9: counts only
    records = list(suite().evaluate_level(make_context(tmp_path, model, masks, small)))
    assert not any(r.metric.startswith("locality") for r in records)


def test_skip_reason_only_for_architectures_without_images_in_the_first_layer(tmp_path):
    from types import SimpleNamespace

    from prunelens.suite import get_suite
    from prunelens.models.spec import ArchSpec, FCNSpec, ResNetSpec

    from prunelens.models import create_model

    suite = get_suite("connectivity")
    opts = suite.Options()

    def ctx(spec, model):
        return SimpleNamespace(spec=spec, options=opts, architecture=lambda: model)
    fcn = create_model("fcn", 3, input_shape=(1, 4, 4), widths=(8,))
    cnn = create_model("small_resnet", 3, widths=(4, 8))
    assert suite().skip_reason(ctx(FCNSpec(), fcn)) is None
    assert suite().skip_reason(ctx(ResNetSpec(), cnn)) is None
    assert "generic" in suite().skip_reason(ctx(ArchSpec(), torch.nn.Sequential(torch.nn.Linear(16, 3))))


def test_a_dense_layer_is_exactly_as_local_as_a_random_one(tmp_path):

    from prunelens.suite import get_suite
    from prunelens.results import write_level

    model, masks = pruned_fcn()
    suite = get_suite("connectivity")
    opts = suite.Options(n_images=0, figures=False, selectivity_images=0)
    from conftest import hand_made_pool
    pool = hand_made_pool(tmp_path, (0.0, 0.9))
    levels = pool.levels
    dense = {n: torch.ones_like(m) for n, m in masks.items()}
    for level, level_masks in zip(levels, (dense, masks)):
        records = list(suite().evaluate_level(make_context(tmp_path, model, level_masks, opts)))
        write_level(tmp_path, "connectivity", level.index, records, meta={})
    from prunelens.results import load_results
    frame = load_results(tmp_path, suite="connectivity")
    dense_scores = frame[(frame.metric == "locality_score") & (frame.sparsity == 0.0)
                         & (frame.method == "layers.fc1")]["value"]
    assert np.allclose(dense_scores, 1.0)  # a dense layer is exactly as local as a random one
