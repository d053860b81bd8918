"""The pool: a run folder of pruning levels.

::

    RUN_DIR/pool.json                  config, config hash, levels, versions, stop reason
    RUN_DIR/level_XX/model.safetensors the level's state dict (loads strict into the plain model)
    RUN_DIR/level_XX/masks.safetensors keep-masks (bool) of the pruned parameters
    RUN_DIR/level_XX/level.json        sparsity (overall, per layer), accuracies, epochs, wall
                                       time, sha256 of its files

Level 0 is the trained dense model. Files are written atomically (a level folder is written under
a temporary name and renamed) and verified against their sha256 when read.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from prunelens.errors import PoolError, RunLockedError
from prunelens.io import atomic_save_tensors, atomic_write_json, load_tensors, sha256_file

POOL_FILE = "pool.json"
LOCK_FILE = ".lock"
LEVEL_FILES = ("model.safetensors", "masks.safetensors")


def level_dir_name(index: int) -> str:
    return f"level_{index:02d}"


def partial_dir(run_dir: str | Path, index: int) -> Path:
    """Where a level being trained keeps its epoch checkpoint (read by every rank under torchrun)."""
    return Path(run_dir) / f"{level_dir_name(index)}.partial"


def versions() -> dict[str, str]:
    import prunelens
    from prunelens._compat import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision().__version__, "prunelens": prunelens.__version__}


POOL_KEYS = ("name", "config", "levels")
LEVEL_KEYS = ("index", "sparsity", "layer_sparsity", "metrics", "epochs", "wall_time_s", "files")


def _checked(info, keys: tuple[str, ...], path: Path, fix: str) -> dict:
    """``info`` if it is a mapping with ``keys``, else a PoolError naming the file."""
    if not isinstance(info, dict):
        raise PoolError(f"{path} does not hold a JSON object: {fix}")
    missing = [k for k in keys if k not in info]
    if missing:
        raise PoolError(f"{path} lacks {', '.join(missing)}: {fix}")
    return info


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PoolError(f"{path} is missing: {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PoolError(f"{path} is corrupt ({exc}): {what}") from None


@dataclass
class Level:
    """One level of a pool (read side)."""

    pool: Pool
    path: Path
    info: dict

    @property
    def index(self) -> int:
        return int(self.info["index"])

    @property
    def sparsity(self) -> float:
        return float(self.info["sparsity"])

    @property
    def layer_sparsity(self) -> dict[str, float]:
        return dict(self.info["layer_sparsity"])

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.info["metrics"])

    def _verified(self, name: str) -> Path:
        path = self.path / name
        fix = (f"delete {self.path} and re-run `prunelens prune` on the same config to rebuild it")
        if not path.is_file():
            raise PoolError(f"{path} is missing: {fix}")
        if sha256_file(path) != self.info["files"].get(name):
            raise PoolError(f"{path} does not match the sha256 recorded in level.json (corrupt or "
                            f"modified): {fix}")
        return path

    def verify(self) -> None:
        for name in self.info["files"]:
            self._verified(name)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A safetensors file of the level (e.g. ``rewind.safetensors``), verified by its sha256."""
        return load_tensors(self._verified(name))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors("model.safetensors")

    def load_masks(self) -> dict[str, torch.Tensor]:
        return load_tensors(self._verified("masks.safetensors"))

    def load_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The level's model (plain architecture, ``strict=True``), in eval mode on ``device``."""
        from prunelens.models import create_model, load_state_dict_strict

        cfg = self.pool.config.model
        model = create_model(cfg.name, self.pool.num_classes, **cfg.options)
        load_state_dict_strict(model, self.state_dict(), f"{self.path}/model.safetensors")
        return model.to(device).eval()


class Pool:
    """``Pool(run_dir).levels`` → :class:`Level` objects with ``.index``, ``.sparsity``,
    ``.metrics``, ``.load_model()``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise PoolError(f"run folder {self.run_dir} does not exist; create it with "
                            "`prunelens prune CONFIG` (or check the path)")
        fix = ("this is not a prunelens run folder, or its pool.json was damaged; re-run "
               "`prunelens prune` on its config")
        self.info = _checked(_read_json(self.run_dir / POOL_FILE, fix), POOL_KEYS,
                             self.run_dir / POOL_FILE, fix)
        if not all(isinstance(e, dict) and {"index", "dir"} <= set(e) for e in self.info["levels"]):
            raise PoolError(f"{self.run_dir / POOL_FILE} has malformed level entries: {fix}")

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def config_hash(self) -> str | None:
        return self.info.get("config_hash")

    @property
    def num_classes(self) -> int:
        if not isinstance(self.info.get("num_classes"), int):
            raise PoolError(f"{self.run_dir / POOL_FILE} does not record num_classes: re-run "
                            "`prunelens prune` on its config")
        return self.info["num_classes"]

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))

    @cached_property
    def config(self):
        from prunelens.config import RunConfig, validate_section
        from prunelens.data.registry import folders_unchecked
        with folders_unchecked():
            return validate_section(RunConfig, self.info["config"], f"{self.run_dir}/pool.json config")

    @cached_property
    def levels(self) -> list[Level]:
        out = []
        for entry in self.info["levels"]:
            path = self.run_dir / entry["dir"]
            fix = f"delete {path} and re-run `prunelens prune` to rebuild the level"
            out.append(Level(self, path, _checked(_read_json(path / "level.json", fix), LEVEL_KEYS,
                                                  path / "level.json", fix)))
        return out

    def level(self, index: int) -> Level:
        for lv in self.levels:
            if lv.index == index:
                return lv
        raise PoolError(f"{self.run_dir} has no level {index} "
                        f"(levels: {', '.join(str(lv.index) for lv in self.levels)})")


# ---- write side ---------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder, released when the process ends (even by kill -9)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise RunLockedError(f"run folder {self.path.parent} is in use by another prunelens "
                                 f"process (pid {owner}); wait for it to finish or use another "
                                 "output folder") from None
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


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_difference(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class PoolWriter:
    """Creates or resumes a run folder for one config; the only writer of its pool (under
    torchrun: on rank 0 only)."""

    def __init__(self, run_dir: Path, config, num_classes: int) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.num_classes = num_classes
        self.lock = RunLock(self.run_dir)

    def open(self, force: bool = False) -> PoolWriter:
        from prunelens import distributed
        if not distributed.is_main():
            raise RuntimeError(f"{distributed.where()}: only rank 0 writes the pool")
        existing = self.run_dir.exists() and any(p.name != LOCK_FILE for p in self.run_dir.iterdir())
        if existing and not (self.run_dir / POOL_FILE).is_file():
            raise PoolError(f"output folder {self.run_dir} exists and is not a prunelens run folder; "
                            "choose another name/output_dir or move that folder away")
        self.lock.acquire()
        if existing:
            info = _read_json(self.run_dir / POOL_FILE, "move the folder away or use --force")
            if info.get("config_hash") != self.config.pool_hash():
                if not force:
                    self.lock.release()
                    diff = config_difference(info.get("pool_config", {}), self.config.pool_dict())
                    shown = "; ".join(diff[:5]) + (f"; … ({len(diff) - 5} more)" if len(diff) > 5 else "")
                    raise PoolError(
                        f"run folder {self.run_dir} was made by a different config ({shown}). "
                        "Use another run name/output_dir, or --force to move the old run aside "
                        "and start over")
                self._move_aside()
        if not (self.run_dir / POOL_FILE).is_file():
            self._write_pool_json(levels=[], complete=False)
        return self

    def _move_aside(self) -> None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.run_dir.with_name(f"{self.run_dir.name}.replaced-{stamp}")
        self.lock.release()
        self.run_dir.rename(target)
        print(f"--force: moved the previous run to {target}")
        self.lock = RunLock(self.run_dir)
        self.lock.acquire()

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- levels --
    def _pool_json(self) -> dict:
        return json.loads((self.run_dir / POOL_FILE).read_text())

    def _write_pool_json(self, levels: list[dict], complete: bool, stop_reason: str | None = None) -> None:
        atomic_write_json(self.run_dir / POOL_FILE, {
            "name": self.config.name, "config": self.config.model_dump(mode="json"),
            "pool_config": self.config.pool_dict(), "config_hash": self.config.pool_hash(),
            "num_classes": self.num_classes, "levels": levels, "complete": complete,
            "stop_reason": stop_reason, "versions": versions()})

    def completed_levels(self) -> list[Level]:
        """Levels 0..k that are present and verify; later leftovers are moved to ``stale/``."""
        good: list[Level] = []
        pool = Pool(self.run_dir)
        index = 0
        while True:
            path = self.run_dir / level_dir_name(index)
            if not path.is_dir():
                break
            try:
                level = Level(pool, path, _checked(_read_json(path / "level.json", ""), LEVEL_KEYS,
                                                   path / "level.json", ""))
                level.verify()
            except PoolError:  # missing, corrupt or malformed: rebuilt from here on
                break
            good.append(level)
            index += 1
        # what follows the first bad level was built on it: keep it aside, including a partially
        # trained level after it; only the partial state of the next level to build is resumed
        keep = {lv.path for lv in good} | {self.partial_dir(len(good))}
        for leftover in sorted(self.run_dir.glob("level_*")):
            if leftover in keep:
                continue
            stale = self.run_dir / "stale"
            stale.mkdir(exist_ok=True)
            leftover.rename(stale / f"{leftover.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
        self._write_pool_json([self._entry(lv.info) for lv in good], complete=False)
        return good

    @staticmethod
    def _entry(info: dict) -> dict:
        return {"index": info["index"], "sparsity": info["sparsity"], "dir": level_dir_name(info["index"])}

    def partial_dir(self, index: int) -> Path:
        return partial_dir(self.run_dir, index)

    def write_level(self, index: int, model: nn.Module, masks: dict[str, torch.Tensor], info: dict,
                    extra_files: dict[str, Path] | None = None) -> Level:
        final = self.run_dir / level_dir_name(index)
        tmp = self.run_dir / f".{level_dir_name(index)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        atomic_save_tensors(tmp / "model.safetensors", model.state_dict())
        atomic_save_tensors(tmp / "masks.safetensors", {n: m.bool() for n, m in masks.items()})
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.suffix == ".safetensors"}
        info = dict(info, index=index, files=files)
        atomic_write_json(tmp / "level.json", info)
        if final.exists():  # a level that failed verification is rebuilt
            shutil.rmtree(final)
        os.replace(tmp, final)
        shutil.rmtree(self.partial_dir(index), ignore_errors=True)
        levels = [e for e in self._pool_json()["levels"] if e["index"] != index] + [self._entry(info)]
        self._write_pool_json(sorted(levels, key=lambda e: e["index"]), complete=False)
        return Pool(self.run_dir).level(index)

    def finish(self, stop_reason: str) -> None:
        self._write_pool_json(self._pool_json()["levels"], complete=True, stop_reason=stop_reason)
