"""A tiny VOCdevkit in the real on-disk layout, generated in tmp_path (shared by the VOC tests)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The VOC colour map: index i's colour from its bits, interleaved over R, G, B."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_mask(path, labels: np.ndarray) -> None:
    png = Image.fromarray(labels.astype(np.uint8))
    png.putpalette(voc_palette())
    assert png.mode == "P"
    png.save(path)


def write_image(path, h: int, w: int, colour=(200, 30, 60)) -> None:
    Image.fromarray(np.full((h, w, 3), colour, dtype=np.uint8)).save(path, quality=95)


# person (15) square with a 255 border; dog (12) and aeroplane (1) in the portrait image
PERSON = np.array([[0, 0, 0, 0, 0, 0],
                   [0, 255, 255, 255, 255, 0],
                   [0, 255, 15, 15, 255, 0],
                   [0, 255, 255, 255, 255, 0]], dtype=np.uint8)
PORTRAIT = np.array([[1, 1, 0, 0],
                     [1, 1, 0, 0],
                     [255, 255, 255, 255],
                     [0, 0, 12, 12],
                     [0, 0, 12, 12],
                     [0, 0, 0, 0]], dtype=np.uint8)


def make_vocdevkit(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    write_image(voc / "JPEGImages" / "2007_000002.jpg", 4, 6)
    write_mask(voc / "SegmentationClass" / "2007_000002.png", PERSON)
    write_image(voc / "JPEGImages" / "2007_000001.jpg", 6, 4)
    write_mask(voc / "SegmentationClass" / "2007_000001.png", PORTRAIT)
    blocks = np.kron(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), np.ones((2, 2))).astype(np.uint8)  # 4 x 8
    write_image(voc / "JPEGImages" / "2008_000003.jpg", 4, 8)
    write_mask(voc / "SegmentationClass" / "2008_000003.png", blocks)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2008_000003\n2007_000002\n2007_000001\n")
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n")
    return tmp_path
