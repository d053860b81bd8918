"""The 17 out-of-distribution datasets of the model-vs-human benchmark, read from a local folder.

Geirhos et al., NeurIPS 2021 (github.com/bethgelab/model-vs-human). The images are downloaded by
the user from the benchmark's release page; prunelens reads them in the benchmark's own layout::

    ROOT/<dataset>/dnn/session-1/<trial>_<exp>_<subject>_<condition>_<category>_<...>.png
    ROOT/<dataset>/<category>/<file>.png          (edge, silhouette, cue-conflict)

In the first layout the file name's ``_``-separated fields give the condition (4th) and the
category (5th); in the second the folder is the category and the condition is ``0`` (the value
in the human trials). A cue-conflict image's texture category is the last ``-`` token of its
name without digits (``airplane1-bicycle2.png`` → ``bicycle``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunelens.data.images import open_image
from prunelens.errors import DataError

#: the 16 entry-level categories, in the benchmark's (alphabetical) order
CATEGORIES = ("airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair",
              "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck")

# dataset: (its conditions, those excluded from OOD accuracy and the human-likeness metrics).
# Conditions: bethgelab/model-vs-human modelvshuman/datasets/experiments.py (``data_conditions``,
# spelled as the benchmark's pandas reading of the trial CSVs gives them, e.g. high-pass "1.0",
# uniform-noise "0.9", false-colour "True"). Exclusions: modelvshuman/plotting/plot.py
# (``EXCLUDE_CONDITIONS``): the undistorted control condition, and conditions where mean human
# accuracy is below 0.2. Datasets with no conditions here are one condition: all their trials.
CONDITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "colour": (("cr", "bw"), ("cr",)),
    "contrast": (("c100", "c50", "c30", "c15", "c10", "c05", "c03", "c01"), ("c100", "c03", "c01")),
    "high-pass": (("inf", "3.0", "1.5", "1.0", "0.7", "0.55", "0.45", "0.4"),
                  ("inf", "0.55", "0.45", "0.4")),
    "low-pass": (("0", "1", "3", "5", "7", "10", "15", "40"), ("0", "15", "40")),
    "phase-scrambling": (("0", "30", "60", "90", "120", "150", "180"), ("0", "150", "180")),
    "power-equalisation": (("0", "pow"), ("0",)),
    "false-colour": (("True", "False"), ("True",)),
    "rotation": (("0", "90", "180", "270"), ("0",)),
    "eidolonI": (("1-10-10", "2-10-10", "4-10-10", "8-10-10", "16-10-10", "32-10-10", "64-10-10",
                  "128-10-10"), ("1-10-10", "64-10-10", "128-10-10")),
    "eidolonII": (("1-3-10", "2-3-10", "4-3-10", "8-3-10", "16-3-10", "32-3-10", "64-3-10",
                   "128-3-10"), ("1-3-10", "32-3-10", "64-3-10", "128-3-10")),
    "eidolonIII": (("1-0-10", "2-0-10", "4-0-10", "8-0-10", "16-0-10", "32-0-10", "64-0-10",
                    "128-0-10"), ("1-0-10", "16-0-10", "32-0-10", "64-0-10", "128-0-10")),
    "uniform-noise": (("0.0", "0.03", "0.05", "0.1", "0.2", "0.35", "0.6", "0.9"),
                      ("0.0", "0.6", "0.9")),
    "sketch": ((), ()),
    "stylized": ((), ()),
    "edge": ((), ()),
    "silhouette": ((), ()),
    "cue-conflict": ((), ()),
}
DATASETS = tuple(CONDITIONS)
#: datasets stored as ``<category>/<file>.png`` rather than ``dnn/session-1/<file>.png``
CATEGORY_FOLDER_DATASETS = ("edge", "silhouette", "cue-conflict")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def benchmark_dataset(name: str) -> str:
    """The benchmark dataset a prefixed name stands for (``synthetic-cue-conflict`` → ``cue-conflict``).

    Names that end in no benchmark dataset are returned unchanged.
    """
    parts = name.split("-")
    for i in range(len(parts)):
        if "-".join(parts[i:]) in CONDITIONS:
            return "-".join(parts[i:])
    return name


def canonical_condition(dataset: str, condition: str) -> str:
    """``condition`` spelled as in :data:`CONDITIONS` (``1`` → ``1.0`` for high-pass, ``true`` → ``True``).

    Values that match no listed condition are returned unchanged.
    """
    listed = CONDITIONS.get(benchmark_dataset(dataset), ((), ()))[0]
    text = str(condition).strip()
    if text in listed:
        return text
    for cond in listed:
        if cond.lower() == text.lower() or _same_number(cond, text):
            return cond
    return text


def _same_number(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return x == y or (math.isinf(x) and math.isinf(y) and (x > 0) == (y > 0))


def image_id(imagename: str) -> str:
    """The image-specific part of a trial's image name, shared by every observer's file.

    ``0001_cl_s01_cr_oven_40_n04111531_14126.png`` → ``n04111531_14126.png`` (ImageNet images keep
    their ``n0…`` synset prefix); ``0001_edg_s01_0_oven_00_oven10.png`` → ``oven10.png``; a name
    without ``_`` is its own id. Same rule as model-vs-human ``helper/plotting_helper.py``.
    """
    fields = imagename.split("_")
    if len(fields) == 1:
        return imagename
    if fields[-2].startswith("n0"):
        return f"{fields[-2]}_{fields[-1]}"
    return fields[-1]


def texture_category(imagename: str) -> str:
    """Texture category of a cue-conflict image: last ``-`` token of its name, digits removed."""
    stem = imagename.split("_")[-1].split(".")[0]
    return "".join(ch for ch in stem.split("-")[-1] if not ch.isdigit())


@dataclass(frozen=True)
class Stimulus:
    """One image of a model-vs-human dataset, with what its trials record about it."""

    path: Path
    dataset: str
    imagename: str
    condition: str
    category: str
    session: int = 1


def parse_session_filename(dataset: str, path: Path) -> tuple[str, str]:
    """(condition, category) from a ``dnn/session-N`` file name (4th and 5th ``_`` fields)."""
    fields = path.name.split("_")
    if len(fields) < 5:
        raise DataError(
            f"model-vs-human file {path} is not named <trial>_<exp>_<subject>_<condition>_<category>_…"
            f" (found {len(fields)} '_'-separated fields, need at least 5); restore the benchmark's "
            "file names or remove the file")
    return canonical_condition(dataset, fields[3]), fields[4]


def _check_category(category: str, path: Path) -> str:
    if category not in CATEGORIES:
        raise DataError(f"model-vs-human file {path}: category '{category}' is not one of the 16 "
                        f"categories ({', '.join(CATEGORIES)}); restore the benchmark's layout")
    return category


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_stimuli(root: str | Path, dataset: str) -> list[Stimulus]:
    """Every image of ``dataset`` under ``root``, in a fixed (sorted) order."""
    if dataset not in CONDITIONS:
        raise DataError(f"'{dataset}' is not a model-vs-human dataset; known: {', '.join(DATASETS)}")
    base = Path(root).expanduser() / dataset
    if not base.is_dir():
        raise DataError(f"model-vs-human dataset folder {base} does not exist")
    stimuli = []
    if dataset in CATEGORY_FOLDER_DATASETS:
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            category = _check_category(folder.name, folder)
            stimuli += [Stimulus(p, dataset, p.name, "0", category) for p in _images(folder)]
    else:
        sessions = base / "dnn"
        folders = sorted(sessions.glob("session-*")) if sessions.is_dir() else []
        if not folders:
            raise DataError(f"model-vs-human dataset {dataset}: no {sessions}/session-*/ folder; "
                            "expected the benchmark's layout <dataset>/dnn/session-1/<file>.png")
        for folder in folders:
            try:
                session = int(folder.name.split("-")[-1])
            except ValueError:
                raise DataError(f"model-vs-human folder {folder} is not named session-<number>") from None
            for p in _images(folder):
                condition, category = parse_session_filename(dataset, p)
                stimuli.append(Stimulus(p, dataset, p.name, condition, _check_category(category, p),
                                        session))
    if not stimuli:
        raise DataError(f"model-vs-human dataset folder {base} holds no images")
    return stimuli


def find_datasets(root: str | Path, names: list[str] | tuple[str, ...] | None = None
                  ) -> tuple[list[str], list[str]]:
    """(datasets present under ``root``, notes naming each missing one). Unknown names are errors."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"model-vs-human root {root} is not a folder; point it at the folder that "
                        "holds colour/, contrast/, … cue-conflict/")
    names = list(DATASETS if names is None else names)
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise DataError(f"unknown model-vs-human dataset(s) {', '.join(unknown)}; known: "
                        f"{', '.join(DATASETS)}")
    present = [n for n in names if (root / n).is_dir()]
    notes = [f"model-vs-human dataset '{n}' not found under {root}: skipped" for n in names
             if n not in present]
    return present, notes


class ModelVsHumanDataset(torch.utils.data.Dataset):
    """Images of one model-vs-human dataset: ``dataset[i]`` = (float image (3, H, W) in [0, 1], i).

    ``stimuli[i]`` holds the image's name, condition, category and session.
    """

    def __init__(self, root: str | Path, dataset: str) -> None:
        self.name = dataset
        self.stimuli = list_stimuli(root, dataset)

    def __len__(self) -> int:
        return len(self.stimuli)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.stimuli[i].path), i


def load_image(path: Path) -> torch.Tensor:
    """An image file as a float RGB tensor (3, H, W) in [0, 1]."""
    from PIL import UnidentifiedImageError

    try:
        with open_image(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
