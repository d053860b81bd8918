"""The embedded synthetic dataset: deterministic, shapes as classes, masks/boxes, variants."""
from __future__ import annotations

import pytest
import torch

from prunelens.data.synthetic import SHAPES, SyntheticShapes, boxes_from_masks


def test_deterministic_and_splits_differ():
    a = SyntheticShapes("train", 64, image_size=32, seed=3)
    b = SyntheticShapes("train", 64, image_size=32, seed=3)
    c = SyntheticShapes("test", 64, image_size=32, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (64, 3, 32, 32)
    x, y = a[0]
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1 and y == int(a.labels[0])


def test_at_least_ten_shapes_and_every_class_drawn():
    assert len(SHAPES) >= 10
    d = SyntheticShapes("train", 600, image_size=48, num_classes=len(SHAPES))
    assert set(d.labels.tolist()) == set(range(len(SHAPES)))
    areas = d.masks.flatten(1).float().mean(1)
    assert float(areas.min()) > 0.02  # every object is visible


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_texture_correlation(rho):
    d = SyntheticShapes("train", 4000, image_size=16, num_classes=10, texture_correlation=rho)
    agreement = float((d.texture_labels == d.labels).float().mean())
    expected = rho + (1 - rho) / 12  # otherwise uniform over 12 textures
    assert agreement == pytest.approx(expected, abs=0.03)


def test_boxes_are_tight_around_masks():
    d = SyntheticShapes("val", 50, image_size=40)
    for mask, box in zip(d.masks, d.boxes):
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        assert box.tolist() == [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
    hand = torch.zeros(1, 5, 6, dtype=torch.bool)
    hand[0, 1:3, 2:5] = True
    assert boxes_from_masks(hand).tolist() == [[2.0, 1.0, 5.0, 3.0]]


def test_variants_render_the_same_objects():
    std = SyntheticShapes("test", 40, image_size=32, num_classes=10)
    sil = SyntheticShapes("test", 40, image_size=32, num_classes=10, variant="silhouette")
    edge = SyntheticShapes("test", 40, image_size=32, num_classes=10, variant="edge")
    cue = SyntheticShapes("test", 40, image_size=32, num_classes=10, variant="cue_conflict")
    for v in (sil, edge, cue):
        assert torch.equal(v.masks, std.masks) and torch.equal(v.labels, std.labels)
    # silhouette: black inside the mask, white outside
    assert torch.all(sil.images.permute(0, 2, 3, 1)[sil.masks] == 0)
    assert torch.all(sil.images.permute(0, 2, 3, 1)[~sil.masks] == 255)
    # edge: ink only on the mask's border, less of it than the silhouette
    ink = edge.images[:, 0] == 0
    assert torch.all(ink <= edge.masks) and int(ink.sum()) < int(sil.masks.sum())
    # cue conflict: both labels kept, texture class always another class
    assert torch.all(cue.texture_labels != cue.labels)
    assert int(cue.texture_labels.max()) < 10


@pytest.mark.parametrize("kw,message", [
    ({"split": "holdout"}, "split 'holdout'"), ({"variant": "sketch"}, "variant 'sketch'"),
    ({"num_classes": 40}, "num_classes must be in 2.."), ({"texture_correlation": 2.0}, "texture_correlation"),
])
def test_bad_arguments(kw, message):
    from prunelens.errors import DataError
    with pytest.raises(DataError, match=message):
        SyntheticShapes(**{"n": 4, **kw})


def test_the_classes_of_the_synthetic_data_need_no_split_built(tmp_path):
    """A resume with nothing to do reads the classes; they are those every split has."""
    from prunelens.config import DataConfig
    from prunelens.data.provider import RunData

    data = RunData(DataConfig(name="synthetic", num_classes=5, n_train=8, n_val=8, n_test=8,
                              image_size=16), seed=0)
    names = data.checked_class_names()
    assert data._cache == {}  # nothing rendered
    assert names == [list(data.split(s).class_names) for s in ("train", "val", "test")][0]
    assert all(list(data.split(s).class_names) == names for s in ("train", "val", "test"))
