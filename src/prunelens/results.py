"""The results store: tidy records of every (suite, level), one table per run.

A suite yields :class:`Record` rows; the evaluate driver writes each (suite, level) to
``RUN_DIR/results/<suite>/level_XX.csv`` (atomically, with a JSON sidecar holding its sha256 and
the options it was computed with). Re-evaluating a level replaces its file, so rows are never
duplicated. :func:`load_results` reads one or several runs into one DataFrame with the columns
``run, model, level, sparsity, suite, metric, method, dataset, condition, item, value``;
:func:`prunelens.stats.summarize` gives per-level summaries (mean, bootstrap CI, n, n_nan).
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from prunelens.errors import PoolError
from prunelens.io import atomic_write_bytes, sha256_file
from prunelens.runfolder import Layout, distinct_runs

RECORD_COLUMNS = ("suite", "metric", "method", "dataset", "condition", "item", "value")
KEY_COLUMNS = ("run", "model", "level", "sparsity", "suite", "metric", "method", "dataset", "condition")


@dataclass(frozen=True, slots=True)
class Record:
    """One measured number.

    ``item`` names what the value is about when it is one of many (an image id, a neuron, a
    trial); it is empty for a value that already summarises the level (e.g. a locality score).
    ``method`` (attribution method, pooling …), ``dataset`` and ``condition`` are empty when
    they do not apply. A NaN value is kept: summaries count it as ``n_nan``.
    """

    suite: str
    metric: str
    value: float
    method: str = ""
    dataset: str = ""
    condition: str = ""
    item: str = ""


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    rows = [asdict(r) for r in records]
    frame = pd.DataFrame(rows, columns=[f.name for f in fields(Record)])
    frame = frame[list(RECORD_COLUMNS)]
    frame["value"] = frame["value"].astype(float)
    return frame


def write_level(run_dir: str | Path, suite: str, level: int, records: Iterable[Record],
                meta: dict) -> Path:
    """Write (replacing) the records of one (suite, level), with a sidecar of ``meta`` + sha256."""
    layout = Layout(run_dir)
    path = layout.result_csv(suite, level)
    frame = records_frame(records)
    bad = frame.loc[frame["suite"] != suite, "suite"].unique()
    if len(bad):
        raise ValueError(f"suite {suite} yielded records of suite(s) {list(bad)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, frame.to_csv(index=False).encode())
    sidecar = dict(meta, suite=suite, level=level, rows=len(frame), sha256=sha256_file(path))
    atomic_write_bytes(layout.sidecar(suite, level), json.dumps(sidecar, indent=1, sort_keys=True).encode())
    return path


def read_sidecar(run_dir: str | Path, suite: str, level: int) -> dict | None:
    """The sidecar of a complete, intact (suite, level) result, or None."""
    layout = Layout(run_dir)
    path, side = layout.result_csv(suite, level), layout.sidecar(suite, level)
    if not (path.is_file() and side.is_file()):
        return None
    meta = _sidecar(side)
    return meta if meta is not None and meta.get("sha256") == sha256_file(path) else None


def options_used(run_dir: str | Path, suite: str) -> list[dict]:
    """The distinct suite options recorded by the intact results of ``suite`` in a run."""
    found: list[dict] = []
    layout = Layout(run_dir)
    for _, level, csv in layout.result_files(suite):
        meta = _sidecar(layout.sidecar(suite, level))
        if meta is not None and meta.get("sha256") == sha256_file(csv) and meta.get("options") not in found:
            found.append(meta.get("options"))
    return found


def _sidecar(side: Path) -> dict | None:
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or UTF-8
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("level"), int) else None


def _read_level_csv(layout: Layout, suite: str, level: int, path: Path) -> tuple[pd.DataFrame, dict]:
    fix = "delete both files and re-run `prunelens evaluate` for that suite"
    side = layout.sidecar(suite, level)
    meta = _sidecar(side)
    if meta is None:
        raise PoolError(f"results file {path} has no readable sidecar {side.name}; {fix}")
    if meta.get("sha256") != sha256_file(path):
        raise PoolError(f"results file {path} does not match its recorded sha256 (corrupt or edited); {fix}")
    if meta.get("suite", suite) != suite or meta["level"] != level:
        raise PoolError(f"results file {path} and its sidecar disagree on suite or level; {fix}")
    frame = pd.read_csv(path, dtype={c: str for c in RECORD_COLUMNS if c != "value"},
                        keep_default_na=False, na_values={"value": ["", "nan", "NaN"]})
    frame["value"] = frame["value"].astype(float)
    frame["level"] = meta["level"]
    return frame, meta


def load_results(run_dirs: str | Path | Sequence[str | Path], suite: str | Sequence[str] | None = None
                 ) -> pd.DataFrame:
    """All records of one or several runs as one tidy DataFrame (see module docstring)."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    suites = [suite] if isinstance(suite, str) else suite
    frames = []
    for pool in distinct_runs(run_dirs):
        levels = {lv.index: lv for lv in pool.levels}
        sparsity = {i: lv.sparsity for i, lv in levels.items()}
        for name, index, path in pool.layout.result_files():
            if suites is not None and name not in suites:
                continue
            frame, meta = _read_level_csv(pool.layout, name, index, path)
            level = levels.get(meta["level"])
            if level is None:
                continue  # results of a level the pool no longer has
            if meta.get("level_sha256") not in (None, level.model_sha256):
                warnings.warn(f"{path} was computed from an earlier version of level {meta['level']} "
                              "(rebuilt since): left out; re-run `prunelens evaluate`", stacklevel=2)
                continue
            frame["run"] = pool.name
            frame["model"] = pool.config.model.name
            frame["sparsity"] = frame["level"].map(sparsity)
            frames.append(frame)
    columns = ["run", "model", "level", "sparsity", *RECORD_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
