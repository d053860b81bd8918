"""VOC2012 segmentation ground truth from a tiny generated VOCdevkit (palette PNGs with 255 borders),
and the same interface over the synthetic masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _voc_fixture import PERSON, PORTRAIT, make_vocdevkit, write_mask
from PIL import Image

from prunelens.data.segmentation import SyntheticSegmentation, iter_batches
from prunelens.data.synthetic import SyntheticShapes
from prunelens.data.voc import VOC_CLASSES, VOCSegmentation
from prunelens.errors import DataError


@pytest.fixture
def voc_root(tmp_path):
    return make_vocdevkit(tmp_path)


def test_reads_palette_indices_with_ignore_border(voc_root):
    data = VOCSegmentation(voc_root, "val", resize="none")
    assert data.item_ids == ["2007_000001", "2007_000002", "2008_000003"]  # sorted
    image, labels = data[1]
    assert image.shape == (3, 4, 6) and image.dtype == torch.uint8
    assert torch.equal(labels, torch.from_numpy(PERSON))  # indices, not RGB colours
    batch = data.batch([1])
    assert batch.object_masks()[0].tolist() == (PERSON == 15).tolist()
    assert batch.ignore[0].tolist() == (PERSON == 255).tolist()
    assert batch.item_ids == ["2007_000002"]


def test_class_agnostic_and_per_class_ground_truth(voc_root):
    batch = VOCSegmentation(voc_root, "val", resize="none").batch([0])
    assert batch.object_masks()[0].tolist() == np.isin(PORTRAIT, [1, 12]).tolist()
    dog = VOC_CLASSES.index("dog")
    assert batch.class_masks(torch.tensor([dog]))[0].tolist() == (PORTRAIT == 12).tolist()
    assert not batch.class_masks(torch.tensor([-1])).any()
    assert not batch.class_masks(torch.tensor([VOC_CLASSES.index("cat")])).any()


def test_shorter_side_centre_crop_moves_image_and_mask_together(voc_root):
    data = VOCSegmentation(voc_root, "val", image_size=2)
    image, labels = data[2]  # 8 wide x 4 high, mask in 2x2 blocks of classes 1..8
    # shorter side 4 → 2: the whole picture halves to 4 x 2; the centred 2 x 2 keeps block columns 1, 2
    assert labels.tolist() == [[2, 3], [6, 7]]
    assert image.shape == (3, 2, 2)
    assert (image.int() - torch.tensor([200, 30, 60]).view(3, 1, 1)).abs().max() <= 6  # JPEG rounding
    assert data.sizes() == [(2, 2)] * 3
    assert data.batch([0, 1, 2]).images.shape == (3, 3, 2, 2)


def test_full_resolution_batches_split_where_the_size_changes(voc_root):
    data = VOCSegmentation(voc_root, "val", resize="none")
    sizes = data.sizes()
    assert sizes == [(6, 4), (4, 6), (4, 8)]
    batches = list(iter_batches(data, 8, sizes))
    assert [b.item_ids for b in batches] == [["2007_000001"], ["2007_000002"], ["2008_000003"]]
    with pytest.raises(DataError, match="different sizes"):
        data.batch([0, 1])


def test_split_and_limit_select_deterministically(voc_root):
    assert VOCSegmentation(voc_root, "val", limit=2).item_ids == ["2007_000001", "2007_000002"]
    assert VOCSegmentation(voc_root, "train").item_ids == ["2007_000001"]
    assert VOCSegmentation(voc_root / "VOCdevkit", "train").item_ids == ["2007_000001"]
    assert VOCSegmentation(voc_root / "VOCdevkit" / "VOC2012", "train").item_ids == ["2007_000001"]


def test_mask_of_the_wrong_size_names_the_file(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    write_mask(voc / "SegmentationClass" / "2007_000002.png", np.zeros((5, 6)))
    data = VOCSegmentation(voc_root, "val")
    with pytest.raises(DataError, match=r"2007_000002\.png is 6x5 but its image .*2007_000002\.jpg is 6x4"):
        data[1]


def test_rgb_masks_and_missing_files_are_clear_errors(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(voc / "SegmentationClass" / "2007_000002.png")
    with pytest.raises(DataError, match="mode P"):
        VOCSegmentation(voc_root, "val")[1]
    (voc / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(DataError, match=r"2007_000001\.jpg .*does not exist"):
        VOCSegmentation(voc_root, "val")[0]
    with pytest.raises(DataError, match="splits found: train, val"):
        VOCSegmentation(voc_root, "test")
    with pytest.raises(DataError, match="VOCdevkit/VOC2012"):
        VOCSegmentation(voc_root / "nowhere")


def test_synthetic_masks_through_the_same_interface():
    ds = SyntheticShapes("test", 5, 32, 4, 0.5, "standard", 0)
    data = SyntheticSegmentation(ds, limit=3)
    assert data.item_ids == ds.item_ids[:3]
    batch = data.batch([0, 2])
    assert torch.equal(batch.object_masks(), ds.masks[[0, 2]])
    assert not batch.ignore.any()
    torch.testing.assert_close(batch.images01(), ds.images[[0, 2]].float() / 255)
    right = batch.class_masks(ds.labels[[0, 2]] + 1)
    assert torch.equal(right, ds.masks[[0, 2]])
    assert not batch.class_masks(ds.labels[[0, 2]] + 1 + 1).any()  # another shape: empty
