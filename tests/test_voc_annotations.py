"""VOC07/VOC12 boxes from Annotations/*.xml, on a fixture in the exact VOCdevkit layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prunelens._compat import torchvision
from prunelens.data.voc_annotations import VOCBoxes, parse_annotation, resolve_voc_dir
from prunelens.errors import DataError

# image id -> (width, height, objects (name, xmin, ymin, xmax, ymax, truncated, difficult))
IMAGES = {
    "000005": (48, 32, [("dog", 1, 1, 48, 32, "0", "0")]),                    # the whole image
    "000007": (40, 36, [("cat", 3, 4, 20, 30, "1", "0"), ("car", 10, 12, 39, 36, "0", "0")]),
    "000009": (30, 30, [("person", 5, 5, 25, 25, "0", "1")]),                 # hard only
    "000012": (20, 24, [("bird", 2, 2, 10, 10, None, None)]),                 # no flags
}


def _xml(image_id, width, height, objects) -> str:
    objs = []
    for name, x0, y0, x1, y1, trunc, diff in objects:
        flags = "".join(f"<{t}>{v}</{t}>" for t, v in (("truncated", trunc), ("difficult", diff)) if v)
        objs.append(f"<object><name>{name}</name><pose>Left</pose>{flags}"
                    f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
                    "<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
                    "<ymax>2</ymax></bndbox></part></object>")
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{''.join(objs)}</annotation>")


def make_voc(root: Path, year: str = "2007") -> Path:
    from PIL import Image

    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, (w, h, objects) in IMAGES.items():
        (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, w, h, objects))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "ImageSets/Main/trainval.txt").write_text("\n".join(IMAGES) + "\n")
    (voc / "ImageSets/Main/val.txt").write_text("000007\n")
    return voc


@pytest.fixture
def voc_root(tmp_path):
    make_voc(tmp_path)
    return tmp_path


def test_boxes_are_0_based_with_exclusive_max(voc_root):
    data = VOCBoxes(voc_root)
    assert (data.name, data.year, data.n_skipped) == ("voc07", "2007", 0)
    assert data.item_ids == list(IMAGES)
    assert data.boxes(0).tolist() == [[0, 0, 48, 32]]   # 1..W inclusive covers the image: 0..W
    assert data.boxes(1).tolist() == [[2, 3, 20, 30], [9, 11, 39, 36]]


def test_no_hard_drops_truncated_and_difficult_and_skips_empty_images(voc_root):
    data = VOCBoxes(voc_root, no_hard=True)
    assert data.item_ids == ["000005", "000007", "000012"] and data.n_skipped == 1
    assert data.boxes(1).tolist() == [[9, 11, 39, 36]]
    assert data.boxes(2).tolist() == [[1, 1, 10, 10]]  # missing flags count as 0


def test_matches_torchvision_voc_detection_read_as_lost_does(voc_root):
    tv = torchvision()
    ref = tv.datasets.VOCDetection(str(voc_root), year="2007", image_set="trainval", download=False)
    ours = VOCBoxes(voc_root)
    for i in range(len(ref)):
        image, target = ref[i]
        objects = target["annotation"]["object"]
        expected = [[int(o["bndbox"]["xmin"]) - 1, int(o["bndbox"]["ymin"]) - 1,
                     int(o["bndbox"]["xmax"]), int(o["bndbox"]["ymax"])] for o in objects]
        assert ours.boxes(i).tolist() == expected
        np.testing.assert_array_equal((ours.image(i) * 255).round().byte().permute(1, 2, 0).numpy(),
                                      np.asarray(image))


def test_root_may_be_any_level_of_the_layout(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    for root in (voc_root, voc_root / "VOCdevkit", voc):
        assert resolve_voc_dir(root) == (voc, "2007")
    assert resolve_voc_dir(voc_root, 2007) == (voc, "2007")
    make_voc(voc_root, "2012")
    data = VOCBoxes(voc_root, "2012", image_set="val")
    assert data.name == "voc12" and data.item_ids == ["000007"]


def test_errors_name_the_path_and_the_fix(tmp_path, voc_root):
    with pytest.raises(DataError, match="VOCdevkit/VOC2007/Annotations"):
        VOCBoxes(tmp_path / "nowhere")
    with pytest.raises(DataError, match="VOC 2012"):
        VOCBoxes(voc_root, 2012)
    with pytest.raises(DataError, match="year must be one of"):
        VOCBoxes(voc_root, 2010)
    with pytest.raises(DataError, match="test.txt does not exist"):
        VOCBoxes(voc_root, image_set="test")
    voc = voc_root / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets/Main/train.txt").write_text("000005\n999999\n")
    with pytest.raises(DataError, match="999999.xml does not exist"):
        VOCBoxes(voc_root, image_set="train")
    bad = voc / "Annotations" / "000005.xml"
    bad.write_text(bad.read_text().replace("<xmin>1</xmin>", "<xmin>one</xmin>", 1))
    with pytest.raises(DataError, match=r"000005.xml: <xmin> is not a number"):
        parse_annotation(bad)
    bad.write_text("<annotation>")
    with pytest.raises(DataError, match="cannot read VOC annotation"):
        parse_annotation(bad)


def test_image_is_rgb_float_in_unit_range(voc_root):
    image = VOCBoxes(voc_root).image(1)
    assert image.shape == (3, 36, 40) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
