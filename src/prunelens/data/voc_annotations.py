"""Pascal VOC 2007/2012 object boxes from ``Annotations/*.xml`` (for CorLoc).

On-disk layout (as the VOC tarballs unpack)::

    <root>/VOCdevkit/VOC2007/Annotations/000005.xml
    <root>/VOCdevkit/VOC2007/ImageSets/Main/trainval.txt
    <root>/VOCdevkit/VOC2007/JPEGImages/000005.jpg

``root`` may be that ``VOC2007`` folder, the ``VOCdevkit`` folder or its parent. Images are those
listed in ``ImageSets/Main/<image_set>.txt`` (``trainval`` by default, as LOST), in file order.

Boxes follow LOST's reading of the annotations (valeoai/LOST ``datasets.py``): VOC coordinates are
1-based and inclusive, so ``(xmin, ymin, xmax, ymax)`` becomes ``(xmin - 1, ymin - 1, xmax, ymax)``,
0-based with exclusive max (a box covering a W-pixel-wide image spans 0..W). With ``no_hard`` the
objects marked truncated or difficult are dropped, and images left without any box are skipped
(and counted in ``n_skipped``), as LOST's ``--no_hard``; a missing ``truncated``/``difficult``
tag counts as 0.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prunelens.data.images import open_image
from prunelens.errors import DataError

YEARS = ("2007", "2012")


@dataclass(frozen=True)
class VOCObject:
    name: str
    box: tuple[int, int, int, int]   # 0-based, exclusive max
    truncated: bool
    difficult: bool

    @property
    def hard(self) -> bool:
        return self.truncated or self.difficult


@dataclass(frozen=True)
class VOCAnnotation:
    image_id: str
    filename: str
    width: int
    height: int
    objects: tuple[VOCObject, ...] = field(default_factory=tuple)

    def boxes(self, no_hard: bool = False) -> torch.Tensor:
        """Boxes (G, 4) float, 0-based, exclusive max; ``no_hard`` drops truncated/difficult ones."""
        kept = [o.box for o in self.objects if not (no_hard and o.hard)]
        return torch.tensor(kept, dtype=torch.float32).reshape(-1, 4)


def _text(node: ET.Element, tag: str, path: Path, default: str | None = None) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        if default is not None:
            return default
        raise DataError(f"VOC annotation {path}: missing <{tag}> in <{node.tag}>")
    return child.text.strip()


def _int(text: str, tag: str, path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        try:
            return int(float(text))
        except ValueError:
            raise DataError(f"VOC annotation {path}: <{tag}> is not a number ({text!r})") from None


def parse_annotation(path: str | Path) -> VOCAnnotation:
    """One ``Annotations/<id>.xml`` file; boxes converted to 0-based exclusive-max coordinates."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"cannot read VOC annotation {path}: {exc}") from None
    size = root.find("size")
    if size is None:
        raise DataError(f"VOC annotation {path}: missing <size>")
    objects = []
    for obj in root.findall("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"VOC annotation {path}: an <object> has no <bndbox>")
        xmin, ymin, xmax, ymax = (_int(_text(bnd, t, path), t, path)
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VOCObject(
            name=_text(obj, "name", path),
            box=(xmin - 1, ymin - 1, xmax, ymax),
            truncated=_text(obj, "truncated", path, "0") == "1",
            difficult=_text(obj, "difficult", path, "0") == "1"))
    return VOCAnnotation(image_id=path.stem, filename=_text(root, "filename", path, path.stem + ".jpg"),
                         width=_int(_text(size, "width", path), "width", path),
                         height=_int(_text(size, "height", path), "height", path),
                         objects=tuple(objects))


def resolve_voc_dir(root: str | Path, year: str | int | None = None) -> tuple[Path, str]:
    """The ``VOC<year>`` folder (holding ``Annotations``) under ``root``, and its year."""
    root = Path(root).expanduser()
    year = None if year is None else str(year)
    if year is not None and year not in YEARS:
        raise DataError(f"VOC year must be one of {', '.join(YEARS)}, got {year!r}")
    years = [year] if year else list(YEARS)
    candidates = [root] + [p for y in years for p in (root / f"VOC{y}", root / "VOCdevkit" / f"VOC{y}")]
    for cand in candidates:
        if (cand / "Annotations").is_dir():
            match = re.fullmatch(r"VOC(\d{4})", cand.name)
            found = match.group(1) if match else year
            if found is None:
                raise DataError(f"cannot tell the VOC year of {cand}: name the folder VOC2007/VOC2012 "
                                "or give the year (voc_year)")
            if year is not None and found != year:
                continue
            return cand, found
    raise DataError(f"no Pascal VOC{' ' + year if year else ''} folder with Annotations/ under {root}; "
                    "expected <root>/VOCdevkit/VOC2007/Annotations (or VOC2012), as the VOC tarballs "
                    "unpack. Point voc_root at that folder or one of its parents")


def dataset_name(year: str) -> str:
    return f"voc{year[-2:]}"


class VOCBoxes:
    """The boxes of one VOC image set, as a CorLoc box dataset (see ``discovery.corloc``)."""

    def __init__(self, root: str | Path, year: str | int | None = None, image_set: str = "trainval",
                 no_hard: bool = False) -> None:
        self.voc_dir, self.year = resolve_voc_dir(root, year)
        self.name = dataset_name(self.year)
        self.image_set, self.no_hard = image_set, no_hard
        list_file = self.voc_dir / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_file.is_file():
            raise DataError(f"VOC image set file {list_file} does not exist; image sets are "
                            "train, val, trainval (and test for VOC2007)")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        annotations = []
        for image_id in ids:
            xml = self.voc_dir / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                raise DataError(f"{list_file} lists '{image_id}' but {xml} does not exist")
            annotations.append(parse_annotation(xml))
        keep = [a for a in annotations if not (no_hard and len(a.boxes(no_hard=True)) == 0)]
        self.annotations = keep
        self.n_skipped = len(annotations) - len(keep)
        self.item_ids = [a.image_id for a in keep]

    def __len__(self) -> int:
        return len(self.annotations)

    def boxes(self, i: int) -> torch.Tensor:
        return self.annotations[i].boxes(self.no_hard)

    def image_path(self, i: int) -> Path:
        return self.voc_dir / "JPEGImages" / f"{self.annotations[i].image_id}.jpg"

    def image(self, i: int) -> torch.Tensor:
        """The image as float (3, H, W) in [0, 1] (RGB, as ``ToTensor`` gives it)."""

        path = self.image_path(i)
        try:
            with open_image(path) as img:
                array = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise DataError(f"cannot read VOC image {path}: {exc}") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
