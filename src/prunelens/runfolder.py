"""The run folder: every path in it (:class:`Layout`) and the one reader that verifies before it
trusts (:class:`RunFolder`). Prune writes it, evaluate adds results, report reads it; nothing else
knows where a file lies. See ``docs/architecture.md`` for the data flow.

::

    RUN_DIR/pool.json                      the manifest (format 2): name, the config as resolved,
                                           levels (each with the sha256 of its level.json), stop
                                           reason, versions, and its own sha256 (manifest_sha256)
    RUN_DIR/level_XX/level.json            sparsity (prunable weights and all parameters, per
                                           layer), accuracies, epochs, times, sha256 of its files
    RUN_DIR/level_XX/model.safetensors     the state dict (loads strict into the plain model)
    RUN_DIR/level_XX/masks.safetensors     keep-masks (bool) of the pruned parameters
    RUN_DIR/level_XX.partial/              the epoch checkpoint of the level being trained
    RUN_DIR/stale/                         levels set aside because one before them failed its hash
    RUN_DIR/results/<suite>/level_XX.csv   tidy records (+ .json sidecar with their sha256)
    RUN_DIR/results/summary.csv            per-level summaries (+ summary.json: what it covers)
    RUN_DIR/report/                        the default report folder

Integrity: pool.json carries the sha256 of its own canonical content and of every level.json,
each level.json the sha256 of its files, and each results sidecar that of its CSV. Every reader
checks this chain before it uses a value, so an edited or damaged file is reported, never used.
The hashes detect damage and edits; they are not signatures against someone who recomputes them,
which is why names read from the files are also checked against :data:`NAME_PATTERN`.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from prunelens.config import NAME_PATTERN, RunConfig, config_from_stored, digest
from prunelens.errors import ConfigError, PoolError, RunLockedError
from prunelens.io import load_tensors, sha256_file

#: the pool.json format this version writes; format 1 (no ``format`` key) is read after
#: ``prunelens pool upgrade``
FORMAT = 2

_NAME = re.compile(NAME_PATTERN)
_LEVEL_FILE = re.compile(r"^[a-z][a-z0-9_]*\.safetensors$")

POOL_KEYS = ("format", "name", "config", "num_classes", "levels", "complete", "manifest_sha256")
LEVEL_KEYS = ("index", "sparsity", "layer_sparsity", "metrics", "epochs", "wall_time_s", "files")


class PoolNote(UserWarning):
    """Something a reader noticed and worked around (e.g. an option this version no longer has)."""


# ---- layout ---------------------------------------------------------------------------------------
_LEVEL_DIR = re.compile(r"level_(\d{2,})")


def level_dir_name(index: int) -> str:
    return f"level_{index:02d}"


def level_index(name: str) -> int | None:
    """The index a level folder (or a per-level results file stem) ``level_XX`` stands for, or None
    for any other name."""
    match = _LEVEL_DIR.fullmatch(name)
    return int(match.group(1)) if match and level_dir_name(int(match.group(1))) == name else None


@dataclass(frozen=True)
class Layout:
    """Every path of a run folder. The file names below are the only spelling of each; a suite
    names the files of its own artifacts folder (:meth:`suite`, :meth:`level_artifacts`)."""

    POOL_JSON: ClassVar[str] = "pool.json"
    LEVEL_JSON: ClassVar[str] = "level.json"
    MODEL: ClassVar[str] = "model.safetensors"
    MASKS: ClassVar[str] = "masks.safetensors"
    #: level 0 of a rewinding pool: the weights at ``prune.rewind_step``
    REWIND: ClassVar[str] = "rewind.safetensors"
    #: the epoch checkpoint of a level being trained (in its ``.partial`` folder)
    TRAIN_STATE: ClassVar[str] = "train_state.safetensors"
    TRAIN_STATE_JSON: ClassVar[str] = "train_state.json"
    #: the periodic validation errors of a level being trained (``train.validate_every``)
    VALIDATION_CURVE: ClassVar[str] = "validation_curve.json"
    #: in ``results/<suite>/``: why the suite does not apply / which of its parts do not
    SKIPPED: ClassVar[str] = "skipped.json"
    NOT_APPLICABLE: ClassVar[str] = "not_applicable.json"
    #: in ``results/<suite>/``: what the figures across levels were drawn from, and why any of the
    #: suite's declared figures was not drawn
    DRAWN: ClassVar[str] = "drawn.json"
    #: per-level summaries: ``results/summary.csv`` (with ``summary.json``, what it covers) and the
    #: report's own table of them
    SUMMARY_CSV: ClassVar[str] = "summary.csv"
    SUMMARY_JSON: ClassVar[str] = "summary.json"
    #: a suite's summary of one level, in its level artifacts folder
    LEVEL_SUMMARY: ClassVar[str] = "summary.json"

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def pool_json(self) -> Path:
        return self.root / self.POOL_JSON

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def stale(self) -> Path:
        return self.root / "stale"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def summary_csv(self) -> Path:
        return self.results / self.SUMMARY_CSV

    @property
    def summary_json(self) -> Path:
        return self.results / self.SUMMARY_JSON

    @property
    def report(self) -> Path:
        return self.root / "report"

    def level(self, index: int) -> Path:
        return self.root / level_dir_name(index)

    def level_json(self, index: int) -> Path:
        return self.level(index) / self.LEVEL_JSON

    def level_dirs(self) -> dict[int, Path]:
        """Index → folder of every ``level_XX`` folder present (listed in pool.json or not)."""
        found = {level_index(p.name): p for p in self.root.glob("level_*") if p.is_dir()}
        return {i: found[i] for i in sorted(i for i in found if i is not None)}

    def partial(self, index: int) -> Path:
        """Where a level being trained keeps its epoch checkpoint (read by every rank)."""
        return self.root / f"{level_dir_name(index)}.partial"

    def level_tmp(self, index: int) -> Path:
        """Where a level is assembled before it is renamed into place."""
        return self.root / f".{level_dir_name(index)}.tmp"

    def train_state(self, index: int) -> tuple[Path, Path]:
        """The epoch checkpoint of level ``index``: its tensors and its JSON."""
        return self.partial(index) / self.TRAIN_STATE, self.partial(index) / self.TRAIN_STATE_JSON

    def validation_curve(self, index: int) -> Path:
        """The periodic validation errors of level ``index`` while it trains."""
        return self.partial(index) / self.VALIDATION_CURVE

    def suite(self, suite: str) -> Path:
        return self.results / check_name(suite, "suite name")

    def result_csv(self, suite: str, level: int) -> Path:
        return self.suite(suite) / f"{level_dir_name(level)}.csv"

    def sidecar(self, suite: str, level: int) -> Path:
        """The JSON beside a results CSV: its sha256, options, inputs and level."""
        return self.result_csv(suite, level).with_suffix(".json")

    def result_files(self, suite: str | None = None) -> list[tuple[str, int, Path]]:
        """(suite, level, CSV path) of every per-level results file (of ``suite`` only if given);
        suite folder names are checked as plain names."""
        out = []
        folders = [self.suite(suite)] if suite is not None else sorted(
            p for p in self.results.glob("*") if p.is_dir())
        for folder in folders:
            for csv in sorted(folder.glob("level_*.csv")):
                index = level_index(csv.stem)
                if index is not None:
                    out.append((check_name(folder.name, "suite folder"), index, csv))
        return out

    def skipped(self, suite: str) -> Path:
        return self.suite(suite) / self.SKIPPED

    def not_applicable(self, suite: str) -> Path:
        return self.suite(suite) / self.NOT_APPLICABLE

    def drawn(self, suite: str) -> Path:
        return self.suite(suite) / self.DRAWN

    def level_artifacts(self, suite: str, level: int) -> Path:
        return self.suite(suite) / level_dir_name(level)

    def saved_artifacts(self, suite: str, name: str) -> dict[int, Path]:
        """Level → ``results/<suite>/level_XX/<name>`` for every level folder that holds it."""
        return saved_per_level(self.suite(suite), name)

    def links(self) -> list[Path]:
        """Symbolic links anywhere in the run folder (the folder itself may be one)."""
        found = []
        for folder, dirs, files in os.walk(self.root):  # os.walk does not follow links
            found += [Path(folder) / name for name in (*dirs, *files) if (Path(folder) / name).is_symlink()]
        return sorted(found)

    def check_no_links(self) -> None:
        """A PoolError if the run folder holds a symbolic link: through one, reading a run folder
        someone sent could copy any file into a report, and writing one could write elsewhere."""
        found = self.links()
        if found:
            shown = ", ".join(f"{p.relative_to(self.root)} -> {os.readlink(p)}" for p in found[:3])
            raise PoolError(f"run folder {self.root} holds symbolic links ({shown}): prunelens uses a "
                            "run folder only through its own files; replace each link by a copy of "
                            "what it points to")

    def leftovers(self) -> list[Path]:
        """What interrupted runs leave behind and a finished one no longer needs: half-written
        files and level folders, and the epoch checkpoints of levels set aside."""
        found = [*self.root.glob(".*.tmp"), *self.stale.glob("*.partial-*"),
                 *self.results.glob("**/.*.tmp")]
        return sorted(set(found))


def saved_per_level(artifacts: Path, name: str) -> dict[int, Path]:
    """Level → ``artifacts/level_XX/<name>`` for every level folder of a suite's artifacts folder
    that holds a file ``name`` (what a suite's ``after_levels`` draws across levels)."""
    found = {level_index(p.parent.name): p for p in Path(artifacts).glob(f"level_*/{name}")}
    return {i: found[i] for i in sorted(i for i in found if i is not None)}


def check_name(name: str, what: str) -> str:
    """``name`` if it is a plain name (no path separator, no leading dot), else a PoolError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PoolError(f"{what} {name!r} read from a run folder is not a plain name (letters, digits, "
                        "'_', '.', '-'; no '/' or leading '.'): the folder was edited or damaged")
    return name


# ---- JSON with hashes -----------------------------------------------------------------------------
def read_json(path: Path, fix: str) -> dict:
    """A JSON object from ``path``, or a PoolError naming the file and ``fix``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PoolError(f"{path} is missing: {fix}") from None
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5000-digit number, deep nesting
        raise PoolError(f"{path} is not readable JSON ({_reason(exc)}): {fix}") from None
    if not isinstance(data, dict):
        raise PoolError(f"{path} does not hold a JSON object: {fix}")
    return data


def _reason(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:120]


def verified_sha256(path: Path) -> str:
    """sha256 of ``path``, computed once per command for a file that has not changed since (same
    inode, size and modification time): a command that reads a level several times hashes it once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns,
           stat.st_ctime_ns)
    if key in _HASHED:
        return _HASHED[key]
    digest_ = sha256_file(path)
    # a file changed within the last seconds may change again within one timestamp tick: not cached
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > 2_000_000_000:
        _HASHED[key] = digest_
    return digest_


def forget_hashes() -> None:
    """Start a command with no hash remembered (:func:`verified_sha256`)."""
    _HASHED.clear()


_HASHED: dict[tuple, str] = {}


def manifest_hash(info: dict) -> str:
    """sha256 of pool.json's canonical content without its ``manifest_sha256`` entry."""
    body = {k: v for k, v in info.items() if k != "manifest_sha256"}
    return digest(body)


def sealed(info: dict) -> dict:
    """``info`` with its ``manifest_sha256`` set (what pool.json holds)."""
    return {**info, "manifest_sha256": manifest_hash(info)}


# ---- the run-folder lock --------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder, released when the process ends (even by kill -9). Only
    writers take it: reading needs no lock, so a read-only run folder can be read."""

    def __init__(self, run_dir: str | Path, lock_file: Path | None = None,
                 what: str | None = None) -> None:
        self.path = lock_file or Layout(run_dir).lock
        self.what = what or f"run folder {Path(run_dir)}"
        self._file = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise PoolError(f"{self.what} cannot be written "
                                f"({os.strerror(exc.errno)}): this command writes into it; copy the "
                                "folder somewhere writable, or use a command that only reads "
                                "(pool show, results, report -o OUT)") from None
            raise
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise RunLockedError(f"{self.what} is in use by another prunelens process (pid {owner}); "
                                 "wait for it to finish or use another output folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---- the reader -----------------------------------------------------------------------------------
def _rebuild_fix(path: Path) -> str:
    return f"delete {path} and re-run `prunelens prune` on the same config to rebuild it"


@dataclass
class Level:
    """One level of a pool, its level.json verified against the manifest."""

    run: RunFolder
    path: Path
    info: dict

    @property
    def index(self) -> int:
        return int(self.info["index"])

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are pruned."""
        return float(self.info["sparsity"])

    @property
    def sparsity_all(self) -> float:
        """Fraction of all parameters (biases, norms, embeddings included) that are zero by
        pruning; NaN for levels written before it was recorded."""
        return float(self.info.get("sparsity_all", math.nan))

    @property
    def layer_sparsity(self) -> dict[str, float]:
        return dict(self.info["layer_sparsity"])

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.info["metrics"])

    @property
    def files(self) -> dict[str, str]:
        return dict(self.info["files"])

    @property
    def model_sha256(self) -> str:
        return self.files.get(Layout.MODEL, "")

    @property
    def parent_sha256(self) -> str | None:
        """sha256 of the model this level was pruned from (the previous level's), None for level 0
        and for levels written before it was recorded."""
        return self.info.get("parent_model_sha256")

    def _verified(self, name: str) -> Path:
        path = self.path / name
        if name not in self.info["files"]:
            raise PoolError(f"{self.path}/level.json records no file {name}")
        if not path.is_file():
            raise PoolError(f"{path} is missing: {_rebuild_fix(self.path)}")
        if verified_sha256(path) != self.info["files"][name]:
            raise PoolError(f"{path} does not match the sha256 recorded in level.json (corrupt or "
                            f"modified): {_rebuild_fix(self.path)}")
        return path

    def verify(self) -> None:
        """Check every file of the level against its recorded sha256."""
        for name in self.info["files"]:
            self._verified(name)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A safetensors file of the level (e.g. ``rewind.safetensors``), verified by its sha256."""
        return load_tensors(self._verified(name))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The level's weights; a PoolError if one is NaN or infinite (the writer never writes such
        a level, so the file was replaced and its hashes recomputed)."""
        state = self.tensors(Layout.MODEL)
        bad = [n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise PoolError(f"{self.path / Layout.MODEL} holds non-finite weights ({', '.join(bad[:3])}), "
                            f"which prunelens never writes: {_rebuild_fix(self.path)}")
        return state

    def load_masks(self) -> dict[str, torch.Tensor]:
        return self.tensors(Layout.MASKS)

    def load_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The level's model (plain architecture, ``strict=True``), in eval mode on ``device``."""
        from prunelens.models import create_model, load_state_dict_strict

        cfg = self.run.config.model
        model = create_model(cfg.name, self.run.num_classes, **cfg.options)
        load_state_dict_strict(model, self.state_dict(), f"{self.path / Layout.MODEL}")
        return model.to(device).eval()


class RunFolder:
    """A run folder, read and verified: ``RunFolder(path).levels`` → :class:`Level` objects.

    Opening checks pool.json (format, its own sha256, the names in it) and every level.json
    (against the sha256 pool.json records); a level's model and masks are checked when loaded.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.layout = Layout(run_dir)
        self.run_dir = self.layout.root
        if not self.run_dir.is_dir():
            raise PoolError(f"run folder {self.run_dir} does not exist; create it with "
                            "`prunelens prune CONFIG` (or check the path)")
        self.layout.check_no_links()
        self.info = verified_manifest(self.run_dir)
        self.name = check_name(self.info["name"], "run name")

    # -- the manifest --
    @property
    def complete(self) -> bool:
        return bool(self.info["complete"])

    @property
    def stop_reason(self) -> str | None:
        return self.info.get("stop_reason")

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.info.get("versions") or {})

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @property
    def class_names(self) -> list[str] | None:
        """The class names of the data the pool was trained on (None for pools that predate them)."""
        names = self.info.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else None

    @cached_property
    def config(self) -> RunConfig:
        """The run's config as this version reads it (see :func:`prunelens.config.config_from_stored`)."""
        try:
            config, dropped = config_from_stored(self.info["config"], f"{self.layout.pool_json} config")
        except ConfigError as exc:
            raise PoolError(str(exc)) from None
        if dropped:
            warnings.warn(f"{self.run_dir}: pool.json records option(s) this version of prunelens no "
                          f"longer has, left out: {', '.join(dropped)}", PoolNote, stacklevel=2)
        return config

    @property
    def identity_hash(self) -> str:
        return self.config.identity_hash()

    @property
    def experiment_hash(self) -> str:
        return self.config.experiment_hash()

    # -- levels --
    @cached_property
    def levels(self) -> list[Level]:
        """The levels pool.json lists, each verified by :meth:`read_level` (its level.json, its
        index and its place in the chain)."""
        out: list[Level] = []
        for entry in self.info["levels"]:
            out.append(self.read_level(entry["index"], out[-1] if out else None,
                                       entry["level_json_sha256"]))
        return out

    def read_level(self, index: int, previous: Level | None, listed_sha256: str | None = None,
                   files: bool = False) -> Level:
        """Level ``index`` after every check of one level: its level.json matches the sha256
        pool.json lists (when listed), holds every key with a value of the right type, says it is
        level ``index`` (a copied or renamed folder does not), and was pruned from ``previous``'s
        model (the chain). ``files`` also checks its files against their sha256 now (else they are
        checked when loaded). A PoolError names what is wrong."""
        path = self.layout.level(index)
        json_path = self.layout.level_json(index)
        info = read_json(json_path, _rebuild_fix(path))
        if listed_sha256 is not None and verified_sha256(json_path) != listed_sha256:
            raise PoolError(f"{json_path} does not match the sha256 recorded in pool.json "
                            f"(edited or damaged): restore it, or {_rebuild_fix(path)}")
        check_level_info(info, json_path, index)
        expected = None if previous is None else previous.model_sha256
        if index > 0 and previous is None:
            raise PoolError(f"{path} follows no level {index - 1}: {_rebuild_fix(path)}")
        if info.get("parent_model_sha256", expected) != expected:
            raise PoolError(f"{path} was not pruned from {previous.path.name} as it is now: the "
                            f"model it records as its parent is not {previous.path.name}/{Layout.MODEL} "
                            f"(a copied, moved, renumbered or replaced level): {_rebuild_fix(path)}")
        level = Level(self, path, info)
        if files:
            level.verify()
            if Layout.MODEL in level.files:
                level.state_dict()  # refuses non-finite weights
        return level

    def level(self, index: int) -> Level:
        for lv in self.levels:
            if lv.index == index:
                return lv
        raise PoolError(f"{self.run_dir} has no level {index} "
                        f"(levels: {', '.join(str(lv.index) for lv in self.levels) or 'none'})")

    def table(self) -> list[dict]:
        """The pool table: one row per level (sparsity of the prunable weights and of all
        parameters, accuracies and losses, epochs, steps, wall time, file hashes)."""
        rows = []
        for lv in self.levels:
            metrics = lv.metrics
            rows.append({"level": lv.index, "sparsity": lv.sparsity, "sparsity_all": lv.sparsity_all,
                         **{k: metrics.get(k, math.nan) for k in
                            ("train_acc", "val_acc", "test_acc", "test_loss")},
                         "min_validation_error": lv.info.get("periodic_validation", {}).get(
                             "min_error", math.nan),
                         "epochs": lv.info.get("epochs"), "steps": lv.info.get("steps"),
                         "wall_time_s": lv.info.get("wall_time_s"),
                         "model_sha256": lv.model_sha256,
                         "masks_sha256": lv.files.get("masks.safetensors", "")})
        return rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_fraction(value) -> bool:
    return _is_number(value) and 0 <= value <= 1


_SHA256 = re.compile(r"[0-9a-f]{64}")
#: level.json keys (required ones in LEVEL_KEYS) → the check of their value and what it should be
_LEVEL_VALUES = {
    "index": (_is_count, "a level index"),
    "sparsity": (_is_fraction, "a fraction between 0 and 1"),
    "sparsity_all": (_is_fraction, "a fraction between 0 and 1"),
    "layer_sparsity": (lambda v: isinstance(v, dict) and all(_is_fraction(x) for x in v.values()),
                       "a mapping of layer names to fractions"),
    "metrics": (lambda v: isinstance(v, dict) and all(x is None or _is_number(x) for x in v.values()),
                "a mapping of metric names to numbers"),
    "epochs": (lambda v: v is None or _is_count(v), "a number of epochs"),
    "steps": (lambda v: v is None or _is_count(v), "a number of steps"),
    "wall_time_s": (lambda v: v is None or _is_number(v), "seconds"),
    "train_time_s": (lambda v: v is None or _is_number(v), "seconds"),
    "files": (lambda v: isinstance(v, dict) and all(isinstance(x, str) and _SHA256.fullmatch(x)
                                                    for x in v.values()),
              "a mapping of level file names to sha256 digests"),
    "parent_model_sha256": (lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)),
                            "a sha256 digest"),
    "periodic_validation": (lambda v: _is_validation_record(v),
                            "the periodic validation record (split, n_images, every_steps, steps, "
                            "errors, min_error, min_error_step)"),
}


def _is_validation_record(v) -> bool:
    """An optional level.json key (``train.validate_every``): the error curve and its minimum."""
    return (isinstance(v, dict) and v.get("split") in ("val", "test") and _is_count(v.get("n_images"))
            and _is_count(v.get("every_steps")) and v["every_steps"] >= 1
            and isinstance(v.get("steps"), list)
            and isinstance(v.get("errors"), list) and len(v["steps"]) == len(v["errors"]) > 0
            and all(_is_count(s) for s in v["steps"]) and v["steps"] == sorted(set(v["steps"]))
            and all(_is_fraction(e) for e in v["errors"])
            and _is_fraction(v.get("min_error")) and v["min_error"] == min(v["errors"])
            and v.get("min_error_step") == v["steps"][v["errors"].index(v["min_error"])])


def check_level_info(info: dict, path: Path, index: int) -> None:
    """A PoolError unless ``info`` (read from ``path``) is the level.json of level ``index``: every
    required key, each value of its type, the index of its folder."""
    fix = _rebuild_fix(path.parent)
    missing = [k for k in LEVEL_KEYS if k not in info]
    if missing:
        raise PoolError(f"{path} lacks {', '.join(missing)}: {fix}")
    for name in info["files"] if isinstance(info["files"], dict) else ():
        if not _LEVEL_FILE.fullmatch(name):
            raise PoolError(f"{path} names a file {name!r} that is not a level file: the folder was "
                            "edited or damaged")
    for key, (valid, what) in _LEVEL_VALUES.items():
        if key in info and not valid(info[key]):
            raise PoolError(f"{path} records {key} {_short(info[key])}, which is not {what} "
                            f"(edited or damaged): {fix}")
    if info["index"] != index:
        raise PoolError(f"{path} is the level.json of level {info['index']}, not of level {index} "
                        f"(a copied or renamed level folder): {fix}")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def distinct_runs(run_dirs) -> list[RunFolder]:
    """The run folders of ``run_dirs``, read; a PoolError if one is given twice (its records would
    count twice, and its intervals would be too narrow) or two share a name."""
    runs = [RunFolder(d) for d in run_dirs]
    seen: dict[Path, Path] = {}
    for run in runs:
        real = run.run_dir.resolve()
        if real in seen:
            raise PoolError(f"run folder {run.run_dir} is given twice (also as {seen[real]}): give each "
                            "run once")
        seen[real] = run.run_dir
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise PoolError(f"runs must have different names, got {names}; rename one (the `name` key of "
                        "its config) or read them separately")
    return runs


def verified_manifest(run_dir: Path) -> dict:
    """pool.json of ``run_dir`` after every check a reader needs (format, hash, names, levels)."""
    layout = Layout(run_dir)
    path = layout.pool_json
    fix = ("this is not a prunelens run folder, or its pool.json was damaged; re-run "
           "`prunelens prune` on its config")
    info = read_json(path, fix)
    version = info.get("format", 1)
    if version == 1:
        raise PoolError(f"{path} was written by an earlier prunelens (pool format 1, whose manifests "
                        f"carry no hashes): run `prunelens pool upgrade {run_dir}` once to verify its "
                        "levels and record their hashes")
    if version != FORMAT:
        raise PoolError(f"{path} has pool format {version!r}, which this prunelens (format {FORMAT}) "
                        "cannot read: upgrade prunelens")
    missing = [k for k in POOL_KEYS if k not in info]
    if missing:
        raise PoolError(f"{path} lacks {', '.join(missing)}: {fix}")
    if info["manifest_sha256"] != manifest_hash(info):
        raise PoolError(f"{path} does not match its recorded sha256 (edited or damaged): restore it "
                        "from a copy, or re-run `prunelens prune` with --force to start the run over")
    _check_entries(info, path)
    return info


def _check_entries(info: dict, path: Path) -> None:
    levels = info["levels"]
    if not isinstance(levels, list) or not isinstance(info["config"], dict):
        raise PoolError(f"{path} has a malformed levels list or config")
    for position, entry in enumerate(levels):
        if not (isinstance(entry, dict) and {"index", "dir", "level_json_sha256"} <= set(entry)
                and _is_count(entry["index"]) and entry["dir"] == level_dir_name(entry["index"])):
            raise PoolError(f"{path} has a malformed level entry {str(entry)[:80]}: the folder was "
                            "edited or damaged")
        if entry["index"] != position:
            raise PoolError(f"{path} lists level {entry['index']} where level {position} belongs "
                            "(levels must be listed once each, in order from 0): the folder was "
                            "edited or damaged")
    if not isinstance(info["num_classes"], int):
        raise PoolError(f"{path} records no number of classes")


def level_entry(info: dict, level_json: Path) -> dict:
    """A level's entry in pool.json: index, folder, sparsity and the sha256 of its level.json."""
    return {"index": info["index"], "dir": level_dir_name(info["index"]),
            "sparsity": info["sparsity"], "level_json_sha256": sha256_file(level_json)}
