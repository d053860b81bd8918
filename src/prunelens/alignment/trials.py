"""Trials: the benchmark's one-row-per-decision CSV format, for humans and models alike.

Model-vs-human stores every decision of an observer (a human subject or a model) as a row
``subj, session, trial, rt, object_response, category, condition, imagename`` in
``<dataset>_<observer>_session_1.csv``. prunelens reads the human trials in that format and writes
its models' responses in it too, so both can be analysed by the same code (here, or by the
benchmark itself).
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import pandas as pd

from prunelens.data.model_vs_human import DATASETS, canonical_condition, image_id
from prunelens.errors import DataError
from prunelens.io import atomic_write_bytes

#: the columns of a trials CSV, in the benchmark's order
TRIAL_COLUMNS = ("subj", "session", "trial", "rt", "object_response", "category", "condition",
                 "imagename")
REQUIRED_COLUMNS = ("subj", "condition", "category", "object_response", "imagename")
_HUMAN_DATA = "human_data"


def _csv_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".csv", ".csv.gz")))
        if not files:
            raise DataError(f"trials folder {path} holds no .csv or .csv.gz files")
        return files
    if not path.is_file():
        raise DataError(f"trials file {path} does not exist")
    return [path]


def _parse(handle, name: str, dataset: str | None) -> pd.DataFrame:
    """One trials CSV from an open binary ``handle``; ``name`` is its file name (for messages)."""
    try:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False,
                            compression="gzip" if name.endswith(".gz") else None)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read trials file {name}: {exc}") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"trials file {name} lacks column(s) {', '.join(missing)}; a trials CSV has "
                        f"the columns {', '.join(TRIAL_COLUMNS)}")
    frame["dataset"] = dataset or Path(name).name.split("_")[0]
    return frame


def _finish(frames: list[pd.DataFrame]) -> pd.DataFrame:
    trials = pd.concat(frames, ignore_index=True)
    for col in REQUIRED_COLUMNS:
        trials[col] = trials[col].str.strip()
    trials["condition"] = [canonical_condition(d, c) for d, c in
                           zip(trials["dataset"], trials["condition"])]
    trials["image_id"] = trials["imagename"].map(image_id)
    return trials


def read_trials(path: str | Path, dataset: str | None = None) -> pd.DataFrame:
    """Trials from a CSV file (``.csv`` or ``.csv.gz``) or from every such file in a folder.

    Column names are lower-cased; all values are kept as text (``na`` responses stay ``na`` and
    count as wrong). ``dataset`` defaults to the file name's part before the first ``_``
    (files are named ``<dataset>_<observer>_session…``);
    conditions are spelled as in :data:`prunelens.data.model_vs_human.CONDITIONS`. Adds the
    columns ``dataset`` and ``image_id`` (the part of the image name shared across observers).
    """
    frames = []
    for file in _csv_files(Path(path).expanduser()):
        with open(file, "rb") as handle:
            frames.append(_parse(handle, str(file), dataset))
    return _finish(frames)


def write_trials(path: str | Path, trials: pd.DataFrame) -> Path:
    """Write ``trials`` as a benchmark CSV (its eight columns, in order), atomically."""
    missing = [c for c in TRIAL_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"trials lack column(s) {missing}")
    path = Path(path)
    atomic_write_bytes(path, trials[list(TRIAL_COLUMNS)].to_csv(index=False).encode())
    return path


def human_datasets() -> list[str]:
    """The datasets whose human trials ship with prunelens."""
    root = resources.files("prunelens.alignment") / _HUMAN_DATA / "raw-data"
    return [d for d in DATASETS if root.joinpath(d).is_dir()]


@functools.lru_cache(maxsize=None)
def _human_trials(dataset: str) -> pd.DataFrame:
    if dataset not in DATASETS:
        raise DataError(f"no human trials for '{dataset}'; model-vs-human datasets: {', '.join(DATASETS)}")
    folder = resources.files("prunelens.alignment") / _HUMAN_DATA / "raw-data" / dataset
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".csv.gz")), key=lambda f: f.name)
    if not files:
        raise DataError(f"the human trials of '{dataset}' are missing from this prunelens install "
                        f"({folder}); reinstall prunelens")
    frames = []
    for file in files:
        with file.open("rb") as handle:
            frames.append(_parse(handle, file.name, dataset))
    return _finish(frames)


def read_human_trials(dataset: str) -> pd.DataFrame:
    """The real human trials of a model-vs-human dataset (vendored in ``alignment/human_data``)."""
    return _human_trials(dataset).copy()
