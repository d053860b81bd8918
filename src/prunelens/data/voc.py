"""PASCAL VOC 2012 segmentation ground truth, read from the standard ``VOCdevkit/VOC2012`` layout.

``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png`` for the ids listed in
``ImageSets/Segmentation/<split>.txt``. The masks are palette PNGs: their *indices* are read (0
background, 1-20 the classes of :data:`VOC_CLASSES`, 255 the "void" border that metrics ignore),
never their RGB colours. Images are selected deterministically: the split's ids sorted, then the
first ``limit``.

Resize policy, applied with the same geometry to image and mask: ``shorter_crop`` scales the
shorter side to ``image_size`` (image bilinear with antialiasing, mask nearest) and takes the
centred ``image_size`` square; ``none`` keeps full resolution (images of different sizes then go
to different batches).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunelens.data.segmentation import SegmentationBatch
from prunelens.data.images import open_image
from prunelens.errors import DataError

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
RESIZE_POLICIES = ("shorter_crop", "none")


def find_voc2012(root: str | Path) -> Path:
    """The ``VOC2012`` folder given it, ``VOCdevkit`` or the folder holding ``VOCdevkit`` (a VOC2007
    folder given directly is accepted too: it has the same segmentation layout)."""
    root = Path(root).expanduser()
    candidates = [root / "VOCdevkit" / "VOC2012", root / "VOC2012", root]
    for path in candidates:
        if (path / "JPEGImages").is_dir() and (path / "SegmentationClass").is_dir():
            return path
    raise DataError(f"no VOC2012 segmentation data under {root}: expected JPEGImages/ and "
                    f"SegmentationClass/ in one of {', '.join(str(c) for c in candidates)} "
                    "(the VOCdevkit/VOC2012 layout of the official archive)")


def read_split(voc: Path, split: str) -> list[str]:
    """Sorted image ids of ``ImageSets/Segmentation/<split>.txt``."""
    folder = voc / "ImageSets" / "Segmentation"
    path = folder / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise DataError(f"VOC split file {path} does not exist"
                        + (f"; splits found: {', '.join(have)}" if have else ""))
    return sorted({line.split()[0] for line in path.read_text().splitlines() if line.strip()})


def read_label_map(path: Path) -> np.ndarray:
    """Palette indices (H, W) uint8 of a VOC segmentation PNG."""

    if not path.is_file():
        raise DataError(f"segmentation mask {path} does not exist")
    with open_image(path) as png:
        if png.mode not in ("P", "L"):
            raise DataError(f"segmentation mask {path} is a {png.mode} image; VOC masks are palette "
                            "PNGs (mode P) whose indices are the classes — convert colours to indices")
        return np.array(png, dtype=np.uint8)


class VOCSegmentation:
    """VOC2012 images with their class-index masks, as a segmentation set (see
    :mod:`prunelens.data.segmentation`)."""

    def __init__(self, root: str | Path, split: str = "val", limit: int | None = None,
                 image_size: int = 224, resize: str = "shorter_crop") -> None:
        if resize not in RESIZE_POLICIES:
            raise DataError(f"unknown VOC resize policy '{resize}'; choose one of {', '.join(RESIZE_POLICIES)}")
        if image_size < 1:
            raise DataError(f"VOC image_size must be >= 1, got {image_size}")
        self.voc = find_voc2012(root)
        ids = read_split(self.voc, split)
        self.item_ids = ids if limit is None else ids[: int(limit)]
        self.split, self.image_size, self.resize = split, int(image_size), resize
        #: dataset name in results: ``voc12``, or ``voc07`` for a VOC2007 folder (it has masks too)
        self.name = "voc07" if self.voc.name == "VOC2007" else "voc12"
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.item_ids)

    def paths(self, i: int) -> tuple[Path, Path]:
        image_id = self.item_ids[i]
        return self.voc / "JPEGImages" / f"{image_id}.jpg", self.voc / "SegmentationClass" / f"{image_id}.png"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image uint8 (3, H, W) and label map uint8 (H, W) of item ``i``, resized by the policy."""
        if i not in self._cache:
            self._cache[i] = self._load(i)
        return self._cache[i]

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every item after the resize policy (reads only image headers)."""
        if self.resize == "shorter_crop":
            return [(self.image_size, self.image_size)] * len(self)

        out = []
        for i in range(len(self)):
            with open_image(self.paths(i)[0]) as img:
                out.append((img.height, img.width))
        return out

    def batch(self, indices: Sequence[int]) -> SegmentationBatch:
        items = [self[i] for i in indices]
        shapes = {tuple(img.shape) for img, _ in items}
        if len(shapes) > 1:
            raise DataError(f"VOC images of different sizes {sorted(shapes)} cannot share a batch; "
                            "use resize='shorter_crop' or batches of equal-size images")
        return SegmentationBatch(torch.stack([img for img, _ in items]),
                                 torch.stack([lab for _, lab in items]),
                                 [self.item_ids[i] for i in indices])

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image_path, mask_path = self.paths(i)
        if not image_path.is_file():
            raise DataError(f"VOC image {image_path} (listed in the {self.split} split) does not exist")
        labels = Image.fromarray(read_label_map(mask_path))
        with open_image(image_path) as raw:
            image = raw.convert("RGB")
        if image.size != labels.size:
            raise DataError(f"segmentation mask {mask_path} is {labels.size[0]}x{labels.size[1]} but its "
                            f"image {image_path} is {image.size[0]}x{image.size[1]}; a VOC mask must "
                            "have its image's size")
        if self.resize == "shorter_crop":
            image, labels = self._shorter_side_centre_crop(image, labels)
        img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return img, torch.from_numpy(np.array(labels, dtype=np.uint8))

    def _shorter_side_centre_crop(self, image, labels):
        from PIL import Image

        s = self.image_size
        w, h = image.size
        scale = s / min(w, h)
        size = (max(s, round(w * scale)), max(s, round(h * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        labels = labels.resize(size, Image.Resampling.NEAREST)
        left, top = (size[0] - s) // 2, (size[1] - s) // 2
        box = (left, top, left + s, top + s)
        return image.crop(box), labels.crop(box)
