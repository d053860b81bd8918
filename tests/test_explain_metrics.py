"""Relevance Mass / Rank Accuracy against Quantus (oracle) and hand-worked cases; pooling; NaNs."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from prunelens.errors import DataError
from prunelens.explain import localisation_scores, pool_heatmaps, relevance_mass_accuracy, relevance_rank_accuracy
from prunelens.explain.metrics import _kth_largest, _order_keys


def _random_case(b=6, h=20, w=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    heat = torch.rand(b, h, w, generator=g, dtype=dtype) ** 3  # continuous: no ties
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        y0, x0 = torch.randint(0, h // 2, (2,), generator=g).tolist()
        masks[i, y0:y0 + 3 + i, x0:x0 + 5 + i] = True
    return heat, masks


def _quantus(metric_name, heat, masks):
    quantus = pytest.importorskip("quantus")
    a = heat.unsqueeze(1).double().numpy()
    s = masks.unsqueeze(1).numpy().astype(np.float64)
    x = np.zeros((len(a), 3, *a.shape[2:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(quantus, metric_name)(disable_warnings=True)(
            model=None, x_batch=x, y_batch=np.zeros(len(a), dtype=int), a_batch=a, s_batch=s)
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rma_rra_equal_quantus_on_nonnegative_maps_without_ties(dtype):
    heat, masks = _random_case(dtype=dtype)
    np.testing.assert_allclose(relevance_mass_accuracy(heat, masks).double().numpy(),
                               _quantus("RelevanceMassAccuracy", heat, masks), rtol=1e-5)
    np.testing.assert_allclose(relevance_rank_accuracy(heat, masks).double().numpy(),
                               _quantus("RelevanceRankAccuracy", heat, masks), rtol=0,
                               atol=1e-12 if dtype == torch.float64 else 1e-7)


def test_hand_worked_scores():
    heat = torch.tensor([[[4.0, 3.0, 0.0],
                          [2.0, 1.0, 0.0]]])
    gt = torch.tensor([[[True, False, False],
                        [True, True, False]]])
    # mass: (4 + 2 + 1) / 10; rank: K = 3, top-3 = {4, 3, 2}, two inside
    assert relevance_mass_accuracy(heat, gt).item() == pytest.approx(0.7)
    assert relevance_rank_accuracy(heat, gt).item() == pytest.approx(2 / 3)


def test_ties_count_as_the_expected_value_of_random_tie_breaking():
    heat = torch.tensor([[[5.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0]]])
    gt = torch.tensor([[[True, True, True, False],
                        [False, False, False, False]]])
    # K = 3: the 5 (inside) is certain; 2 more places among 7 zeros of which 2 are inside GT
    expected = (1 + 2 * 2 / 7) / 3
    assert relevance_rank_accuracy(heat, gt).item() == pytest.approx(expected)
    # the value does not depend on where the tied pixels are
    flipped = relevance_rank_accuracy(heat.flip(-1), gt.flip(-1))
    assert flipped.item() == pytest.approx(expected)


def test_ignored_pixels_leave_numerator_denominator_and_ranking():
    heat = torch.tensor([[[9.0, 1.0, 2.0, 3.0]]])
    gt = torch.tensor([[[False, True, False, False]]])
    ignore = torch.tensor([[[True, False, False, False]]])
    assert relevance_mass_accuracy(heat, gt, ignore).item() == pytest.approx(1 / 6)
    assert relevance_rank_accuracy(heat, gt, ignore).item() == 0.0  # top-1 of {1, 2, 3} is 3
    gt_on_ignored = torch.tensor([[[True, True, False, False]]])
    assert relevance_mass_accuracy(heat, gt_on_ignored, ignore).item() == pytest.approx(1 / 6)


def test_undefined_items_are_nan_not_zero():
    heat = torch.rand(4, 5, 5)
    heat[1] = 0
    heat[3, 0, 0] = math.inf
    gt = torch.zeros(4, 5, 5, dtype=torch.bool)
    gt[[1, 2, 3], 2, 2] = True
    ignore = torch.zeros_like(gt)
    ignore[2, 2, 2] = True  # its only GT pixel is ignored → empty
    scores = localisation_scores(heat, gt, ignore)
    for metric in ("rma", "rra"):
        assert torch.isnan(scores[metric]).tolist() == [True, True, True, True]
    gt[0, 0, 0] = True
    assert not torch.isnan(localisation_scores(heat, gt)["rma"][0])


def test_poolings_follow_clevr_xai_definitions():
    r = torch.tensor([[[[1.0]], [[-2.0]], [[0.5]]]])  # (B=1, C=3, 1, 1)
    expected = {"sum,abs": 0.5, "sum,pos": 0.0, "max-norm": 2.0, "l1-norm": 3.5,
                "l2-norm": math.sqrt(5.25), "l2-norm,sq": 5.25}
    for pooling, value in expected.items():
        assert pool_heatmaps(r, pooling).item() == pytest.approx(value), pooling
    assert pool_heatmaps(torch.tensor([[[-1.5]]]), "sum,pos").item() == 0.0
    with pytest.raises(DataError, match="non-negative"):
        pool_heatmaps(torch.tensor([[[-1.5]]]), "none")
    with pytest.raises(DataError, match="one channel"):
        pool_heatmaps(r, "none")
    with pytest.raises(DataError, match="unknown heatmap pooling"):
        pool_heatmaps(r, "mean")


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(DataError, match=r"masks of shape \(2, 4, 4\) do not match heatmaps of shape \(2, 8, 8\)"):
        relevance_mass_accuracy(torch.rand(2, 8, 8), torch.ones(2, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radix_select_equals_sorting(dtype):
    g = torch.Generator().manual_seed(3)
    for trial in range(30):
        n = int(torch.randint(1, 300, (1,), generator=g))
        h = torch.rand(7, n, generator=g, dtype=dtype) * 10 ** float(torch.randint(-30, 30, (1,), generator=g))
        if trial % 3 == 0:
            h = torch.round(h / h.max() * 3)  # heavy ties
        if trial % 4 == 0:
            h[:, : n // 2] = 0
        valid = torch.rand(7, n, generator=g) > 0.3
        valid[:, 0] = True
        keys, n_bits = _order_keys(h, valid)
        k = (torch.rand(7, generator=g) * valid.sum(1)).long().clamp(min=1)
        marked = torch.rand(7, n, generator=g) > 0.5
        thr, n_above, n_tied, marked_above, marked_tied = _kth_largest(keys, k, n_bits, marked)
        ordered = keys.sort(1, descending=True).values
        expected = ordered.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
        assert torch.equal(thr, expected)
        above, tied = keys > expected.unsqueeze(1), keys == expected.unsqueeze(1)
        assert torch.equal(n_above, above.sum(1)) and torch.equal(n_tied, tied.sum(1))
        assert torch.equal(marked_above, (above & marked).sum(1))
        assert torch.equal(marked_tied, (tied & marked).sum(1))


# ---- the paper's scoring choices ---------------------------------------------------------------------
def test_index_tie_rule_is_quantus_ranking_with_a_stable_sort():
    """Quantus ranks with np.argsort(-a) and takes the first K: ties in index order."""
    g = torch.Generator().manual_seed(3)
    heat = torch.round(torch.rand(6, 9, 9, generator=g) * 3)          # heavy ties
    masks = torch.rand(6, 9, 9, generator=g) > 0.6
    a, s = heat.reshape(6, -1).numpy(), masks.reshape(6, -1).numpy()
    expected = []
    for row, gt in zip(a, s):
        top = np.argsort(-row, kind="stable")[:gt.sum()]
        expected.append(gt[top].sum() / gt.sum())
    got = relevance_rank_accuracy(heat, masks, ties="index")
    np.testing.assert_allclose(got.double().numpy(), expected)
    # hand-worked: three pixels tie for the top-1 place; the first in raster order wins
    heat = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    assert relevance_rank_accuracy(heat, torch.tensor([[[True, False, False, False]]]), ties="index") == 1
    assert relevance_rank_accuracy(heat, torch.tensor([[[False, True, False, False]]]), ties="index") == 0
    assert relevance_rank_accuracy(heat, torch.tensor([[[False, True, False, False]]])) == pytest.approx(1 / 3)


def test_minmax_normalisation_removes_the_relevance_floor():
    # an attention-like map: a uniform floor of 0.3 everywhere, more on the object (last two pixels)
    heat = torch.tensor([[[0.3, 0.3, 0.5, 0.9]]])
    mask = torch.tensor([[[False, False, True, True]]])
    plain = localisation_scores(heat, mask)
    scaled = localisation_scores(heat, mask, minmax=True)
    assert plain["rma"].item() == pytest.approx(1.4 / 2.0)           # (0.5 + 0.9) / 2.0
    assert scaled["rma"].item() == pytest.approx((1 / 3 + 1) / (4 / 3))  # [0, 0, 1/3, 1]
    assert scaled["rra"].item() == plain["rra"].item() == 1.0
    # ignored pixels are left out of the minimum and the maximum
    ignore = torch.tensor([[[True, False, False, False]]])
    heat = torch.tensor([[[9.0, 0.4, 0.3, 0.9]]])                 # valid part → [1/6, 0, 1]
    assert localisation_scores(heat, mask, ignore, minmax=True)["rma"].item() == pytest.approx(6 / 7)
