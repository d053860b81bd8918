"""LOST on hand-built feature maps with known answers, and against a per-image numpy/scipy oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lost_reference import lost_one_image, order_like_reference, order_stable
from prunelens.discovery.lost import (SeedInBackgroundError, degree, lost, rank_patches,
                                      seed_component, similarity)
from prunelens.errors import ModelError, PrunelensError


def blob_features(h: int, w: int, blobs: dict[int, list[tuple[int, int]]], dim: int = 4) -> torch.Tensor:
    """(1, h*w, dim): background cells = e0, cells of blob k = e_k (one-hot features)."""
    feats = torch.zeros(h, w, dim)
    feats[..., 0] = 1
    for k, cells in blobs.items():
        for r, c in cells:
            feats[r, c] = 0
            feats[r, c, k] = 1
    return feats.reshape(1, h * w, dim)


def rect(r0, r1, c0, c1):
    return [(r, c) for r in range(r0, r1) for c in range(c0, c1)]


@pytest.mark.parametrize("tie_break", ["reference", "index"])
def test_one_blob_on_uniform_background(tie_break):
    # 6x8 grid, blob rows 2-3, cols 3-5: blob cells have degree 5, background cells 41
    feats = blob_features(6, 8, {1: rect(2, 4, 3, 6)})
    boxes, seeds = lost(feats, (6, 8), 16, (96, 128), tie_break=tie_break)
    assert boxes.tolist() == [[48.0, 32.0, 96.0, 64.0]]
    assert (int(seeds) // 8, int(seeds) % 8) in rect(2, 4, 3, 6)
    if tie_break == "index":
        assert int(seeds) == 2 * 8 + 3  # lowest index among the lowest-degree patches


def test_two_identical_blobs_box_only_the_seed_component():
    # both blobs share one feature, so the map is > 0 on both; the box covers the seed's blob only
    first, second = rect(1, 3, 1, 3), rect(4, 7, 5, 8)
    feats = blob_features(8, 8, {1: first + second})
    boxes, seeds = lost(feats, (8, 8), 10, (80, 80), tie_break="index")
    assert int(seeds) == 1 * 8 + 1
    assert boxes.tolist() == [[10.0, 10.0, 30.0, 30.0]]
    boxes, seeds = lost(feats, (8, 8), 10, (80, 80), tie_break="reference")
    seed_cell = (int(seeds) // 8, int(seeds) % 8)
    expected = [10.0, 10.0, 30.0, 30.0] if seed_cell in first else [50.0, 40.0, 80.0, 70.0]
    assert boxes.tolist() == [expected]


def test_two_different_blobs_the_smaller_one_is_found():
    # the smaller blob has the lower degree (3 vs 8), so it holds the seed
    feats = blob_features(7, 7, {1: rect(0, 3, 0, 3), 2: rect(4, 6, 4, 6)})
    boxes, _ = lost(feats, (7, 7), 8, (56, 56))
    assert boxes.tolist() == [[32.0, 32.0, 48.0, 48.0]]


def test_components_are_four_connected():
    # two blob cells touching only diagonally are two components (scipy.ndimage.label's default)
    feats = blob_features(5, 5, {1: [(1, 1), (2, 2)]})
    boxes, seeds = lost(feats, (5, 5), 4, (20, 20), tie_break="index")
    assert int(seeds) == 6
    assert boxes.tolist() == [[4.0, 4.0, 8.0, 8.0]]


def test_box_scaling_with_padding_is_clipped_to_the_unpadded_image():
    # a 100x70 image padded to 112x80 for stride 16: grid 7x5; a blob in the padded corner
    feats = blob_features(7, 5, {1: rect(5, 7, 3, 5)})
    boxes, _ = lost(feats, (7, 5), 16, (100, 70))
    assert boxes.tolist() == [[48.0, 80.0, 70.0, 100.0]]
    # per-image sizes and a non-square (sy, sx) stride
    boxes, _ = lost(feats.repeat(2, 1, 1), (7, 5), (16.0, 14.0), torch.tensor([[100, 70], [112, 80]]))
    assert boxes.tolist() == [[42.0, 80.0, 70.0, 100.0], [42.0, 80.0, 70.0, 112.0]]


def test_seed_in_background_raises_as_the_reference():
    # an all-zero feature has degree 0, becomes the seed, and its expansion set is empty
    feats = blob_features(4, 4, {1: rect(0, 2, 0, 2)}).repeat(3, 1, 1)
    feats[1, 9] = 0
    with pytest.raises(SeedInBackgroundError, match="seed is in the background") as err:
        lost(feats, (4, 4), 8, (32, 32))
    assert err.value.images == [1]
    assert isinstance(err.value, ValueError) and isinstance(err.value, PrunelensError)
    boxes, seeds = lost(feats, (4, 4), 8, (32, 32), on_background="nan")
    assert int(seeds[1]) == 9 and torch.isnan(boxes[1]).all()
    assert boxes[[0, 2]].tolist() == [[0.0, 0.0, 16.0, 16.0]] * 2
    with pytest.raises(ValueError, match="background"):
        lost_one_image(feats[1].numpy(), (4, 4), 8, (32, 32))


def test_zero_similarity_is_not_an_edge_and_the_diagonal_is_ignored():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])
    A = similarity(feats)
    assert degree(A).tolist() == [[1, 1, 2, 0]]


def test_ranking_reproduces_the_reference_sort_call_and_index_ties_are_stable():
    gen = torch.Generator().manual_seed(0)
    deg = torch.randint(0, 5, (6, 196), generator=gen)
    ref = rank_patches(deg, "reference")
    for row in range(6):
        assert torch.equal(ref[row], torch.argsort(-deg[row].float(), descending=True))
    idx = rank_patches(deg, "index")
    sorted_deg = deg.gather(1, idx)
    assert (sorted_deg[:, 1:] >= sorted_deg[:, :-1]).all()
    ties = sorted_deg[:, 1:] == sorted_deg[:, :-1]
    assert (idx[:, 1:] > idx[:, :-1])[ties].all()
    # up to 16 patches torch's unstable CPU sort keeps equal keys in index order
    assert rank_patches(torch.zeros(1, 16, dtype=torch.long), "reference").tolist() == [list(range(16))]


def test_seed_component_matches_scipy_label():
    import scipy.ndimage

    gen = torch.Generator().manual_seed(1)
    fg = torch.rand(20, 9, 11, generator=gen) > 0.45
    seeds = torch.randint(0, 99, (20,), generator=gen)
    comp = seed_component(fg, seeds)
    for b in range(20):
        labels, _ = scipy.ndimage.label(fg[b].numpy())
        lab = labels[int(seeds[b]) // 11, int(seeds[b]) % 11]
        expected = (labels == lab) if lab else np.zeros_like(labels, dtype=bool)
        assert np.array_equal(comp[b].numpy(), expected)


@pytest.mark.parametrize("grid", [(3, 3), (4, 4), (7, 7), (6, 9), (14, 14)])
@pytest.mark.parametrize("k", [1, 5, 100])
@pytest.mark.parametrize("tie_break", ["reference", "index"])
def test_matches_per_image_numpy_scipy_oracle(grid, k, tie_break):
    # small integer features: every dot product is exact, so batched and per-image sums agree bit for bit
    h, w = grid
    gen = torch.Generator().manual_seed(h * 100 + w + k)
    b, dim = 8, 12
    feats = torch.randint(-3, 4, (b, h * w, dim), generator=gen).float()
    feats[:4, :, 0] += 2  # half the batch with a shared positive component (large components)
    strides = torch.tensor([[16.0, 16.0], [14.0, 16.0]]).repeat(b // 2, 1)
    sizes = torch.stack([strides[:, 0] * h - torch.arange(b), strides[:, 1] * w - 2 * torch.arange(b)], 1)
    boxes, seeds = lost(feats, grid, strides, sizes, k, tie_break=tie_break)
    order = order_like_reference if tie_break == "reference" else order_stable
    for i in range(b):
        box, seed = lost_one_image(feats[i].numpy(), grid, strides[i].tolist(), sizes[i].tolist(), k, order)
        assert int(seeds[i]) == seed
        np.testing.assert_array_equal(boxes[i].numpy(), box.astype(np.float32))


def test_batched_equals_one_image_at_a_time():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(5, 49, 8, generator=gen)
    batched = lost(feats, (7, 7), 32, (224, 224))
    for i in range(5):
        single = lost(feats[i:i + 1], (7, 7), 32, (224, 224))
        assert torch.equal(single.boxes[0], batched.boxes[i]) and int(single.seeds) == int(batched.seeds[i])


def test_bad_shapes_are_reported():
    with pytest.raises(ModelError, match="grid_hw"):
        lost(torch.zeros(1, 10, 3), (3, 3), 8, (24, 24))
    with pytest.raises(ModelError, match="batch, patches, dim"):
        lost(torch.zeros(10, 3), (2, 5), 8, (16, 40))
    with pytest.raises(ModelError, match="image_hw"):
        lost(torch.ones(2, 4, 3), (2, 2), 8, torch.ones(3, 2))
