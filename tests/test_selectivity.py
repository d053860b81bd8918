"""Class selectivity of first-layer units vs shuffled labels, and the weights of translated copies,
on hand-built units whose answers are known and against scipy / scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunelens.analysis import connectivity as conn
from prunelens.analysis import selectivity as sel
from prunelens.models import create_model, spec_for


def test_eta_squared_hand_worked():
    # class means 2 and 5, grand mean 3.5: SS_between = 2·3·1.5² = 13.5, SS_total = 17.5
    r = torch.tensor([1.0, 2, 3, 4, 5, 6]).unsqueeze(1)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert sel.eta_squared(r, y).item() == pytest.approx(13.5 / 17.5)


def test_eta_squared_is_the_anova_effect_size_of_scipy():
    from scipy.stats import f_oneway

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    r = rng.normal(size=(90, 4)) + np.array([0.0, 0.5, 1.0, 2.0]) * (y[:, None] == 1)
    got = sel.eta_squared(torch.tensor(r), torch.tensor(y)).numpy()
    k, n = 3, len(y)
    for u in range(4):
        f = f_oneway(*(r[y == c, u] for c in range(k))).statistic
        assert got[u] == pytest.approx(f * (k - 1) / (f * (k - 1) + n - k), rel=1e-10)


def test_on_off_information_is_sklearns_mutual_information_in_bits():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    r = rng.normal(size=(300, 3)) + np.array([0.0, 1.0, 3.0]) * (y[:, None] == 2)
    got = sel.on_off_information(torch.tensor(r), torch.tensor(y)).numpy()
    for u in range(3):
        want = mutual_info_score(y, r[:, u] > 0) / math.log(2)
        assert got[u] == pytest.approx(want, abs=1e-12)


def hand_built_responses():
    """200 images, 4 balanced classes. Unit 0 fires for class 0 only; unit 1 has the same response
    values in every class (class independent by construction); unit 2 is constant (disconnected)."""
    y = torch.arange(200) % 4
    within = torch.arange(200) // 4                      # 0 … 49 in every class
    r = torch.stack([(y == 0).double() * 2.0 - 0.5,      # on for class 0, off otherwise
                     within.double() - 20.0,             # identical distribution per class
                     torch.full((200,), 0.3, dtype=torch.float64)], 1)
    return r, y


@pytest.mark.parametrize("measure", sel.MEASURES)
def test_class_selective_and_class_independent_units_are_told_apart(measure):
    r, y = hand_built_responses()
    ci = sel.class_independence(r, y, n_permutations=99, seed=0, measure=measure)
    assert ci.independent[0] == 0.0 and ci.independent[1] == 1.0 and math.isnan(ci.independent[2])
    assert ci.fraction == pytest.approx(0.5)              # constant units are left out
    assert ci.p_value[0] == pytest.approx(1 / 100)        # nothing shuffled reaches it
    if measure == "eta2":
        assert ci.selectivity[0] == pytest.approx(1.0) and ci.selectivity[1] == pytest.approx(0.0, abs=1e-12)
    else:  # the on/off state of unit 0 is 1[y = 0]: I = H(1/4) bits
        h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
        assert ci.selectivity[0] == pytest.approx(h)
    again = sel.class_independence(r, y, n_permutations=99, seed=0, measure=measure)
    torch.testing.assert_close(again.threshold, ci.threshold)  # seeded baseline


def test_shuffled_baseline_of_eta_squared_has_the_null_expectation():
    # under shuffled labels E[η²] = (K − 1)/(N − 1) for any fixed responses
    rng = np.random.default_rng(2)
    r = torch.tensor(rng.normal(size=(120, 2)))
    y = torch.arange(120) % 4
    null = sel.shuffled_selectivity(r, y, n_permutations=400, seed=1)
    assert null.mean(0).numpy() == pytest.approx([3 / 119] * 2, rel=0.15)


def test_first_layer_responses_are_the_pre_activations_and_stop_early():
    torch.manual_seed(0)
    fcn = create_model("fcn", 3, input_shape=(1, 4, 4), widths=[5, 6]).eval()
    x = torch.rand(7, 1, 4, 4)
    calls = []
    fcn.layers.classifier.register_forward_hook(lambda *_: calls.append(1))
    got = sel.first_layer_responses(fcn, spec_for(fcn), x, batch_size=3)
    spec = spec_for(fcn)
    want = spec.normalize(x).flatten(1) @ fcn.layers.fc1.weight.T + fcn.layers.fc1.bias
    torch.testing.assert_close(got, want.double(), rtol=1e-6, atol=1e-6)
    assert not calls                                      # the rest of the net never ran
    cnn = create_model("small_resnet", 3, widths=[4, 8]).eval()
    x = torch.rand(2, 3, 16, 16)
    want = cnn.conv1(spec_for(cnn).normalize(x)).mean((2, 3))
    torch.testing.assert_close(sel.first_layer_responses(cnn, spec_for(cnn), x), want.double())


def translated_units():
    """Unit 1 is unit 0 moved by (2, 3); unit 2 is unit 0 moved by (0, 4) with its weights negated;
    unit 3 has another mask."""
    w = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, -0.7], [0.9, 0.1, -0.4]])
    weights = torch.zeros(4, 1, 8, 8)
    weights[0, 0, 1:4, 1:4] = w
    weights[1, 0, 3:6, 4:7] = w
    weights[2, 0, 1:4, 5:8] = -w
    weights[3, 0, 6, 0:5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    return weights != 0, weights


def test_translated_copies_have_shift_mask_and_weight_similarity_one():
    units, weights = translated_units()
    pairs = torch.tensor([[0, 1], [0, 2], [0, 3]])
    got = sel.pair_weight_similarity(units, weights, pairs)
    assert got.shift[0].tolist() == [2, 3] and got.shift[1].tolist() == [0, 4]
    assert got.mask_similarity[:2].tolist() == pytest.approx([1.0, 1.0])
    assert got.weight_similarity[:2].tolist() == pytest.approx([1.0, -1.0])
    assert got.mask_similarity[2] < 0.5
    # brute force: the weights of unit 3 shifted by the found shift, against unit 0's
    s = got.shift[2].tolist()
    moved = torch.zeros(1, 20, 20)
    moved[:, 6:14, 6:14] = weights[3]
    window = moved[:, 6 + s[0]:14 + s[0], 6 + s[1]:14 + s[1]]
    cos = float((weights[0] * window).sum() / (weights[0].norm() * weights[3].norm()))
    assert got.weight_similarity[2].item() == pytest.approx(cos)


def test_best_shift_matches_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 2, 6, 7, generator=g) < 0.3
    b = torch.rand(5, 2, 6, 7, generator=g) < 0.3
    shift = conn.best_shift(a, b)
    best, _ = conn.shift_similarity(a, b)
    for i in range(5):
        dy, dx = shift[i].tolist()
        pa = torch.nn.functional.pad(a[i].double(), (7, 7, 6, 6))
        pb = torch.nn.functional.pad(b[i].double(), (7, 7, 6, 6))
        overlap = float((pa[:, 6:12, 7:14] * pb[:, 6 + dy:12 + dy, 7 + dx:14 + dx]).sum())
        norm = math.sqrt(float(a[i].sum()) * float(b[i].sum()))
        assert overlap / norm == pytest.approx(best[i].item())


def test_selectivity_records_of_a_hand_built_fcn():
    """fc1 unit 0 reads a pixel lit only in class-0 images, unit 1 a pixel with the same values in
    every class, units 2 and 3 are translated copies; unit 4 is disconnected."""
    torch.manual_seed(0)
    model = create_model("fcn", 4, input_shape=(1, 8, 8), widths=[5]).eval()
    spec = spec_for(model)
    y = torch.arange(160) % 4
    images = torch.zeros(160, 1, 8, 8)
    images[:, 0, 0, 0] = (y == 0).float()
    images[:, 0, 7, 7] = (torch.arange(160) // 4).float() / 40
    mask = torch.zeros(5, 64, dtype=torch.bool)
    w = torch.zeros(5, 64)
    w[0, 0], w[1, 63] = 1.0, 1.0
    patch = torch.zeros(8, 8)
    patch[2:4, 2:4] = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    w[2] = patch.flatten()
    w[3] = torch.roll(patch, (3, 1), (0, 1)).flatten()
    mask = w != 0
    with torch.no_grad():
        model.layers.fc1.weight.copy_(w)
        model.layers.fc1.bias.zero_()
    records = list(sel.selectivity_records(model, spec, {"layers.fc1.weight": mask}, images, y,
                                           n_permutations=99, n_pairs=100, match=0.99))
    by = {}
    for r in records:
        by.setdefault(r.metric, {})[r.item] = r.value
    assert {r.method for r in records} == {"layers.fc1"} and {r.suite for r in records} == {"connectivity"}
    independent = by["class_independent_fraction"]
    assert independent["0"] == 0.0 and independent["1"] == 1.0 and math.isnan(independent["4"])
    assert by["class_selectivity"]["0"] == pytest.approx(1.0)
    # one-pixel masks (units 0, 1) are translated copies too, with the same weight (1.0)
    assert by["translated_weight_similarity"] == {"0-1": pytest.approx(1.0), "2-3": pytest.approx(1.0)}
    assert set(by["translated_weight_similarity_random"]) == {"0-1", "0-2", "0-3", "1-2", "1-3", "2-3"}
    assert by["translated_pair_fraction"][""] == pytest.approx(2 / 6)
