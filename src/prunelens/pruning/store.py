"""The write side of a run folder (layout and reader: :mod:`prunelens.runfolder`).

:class:`PoolWriter` is the only writer of a pool (under torchrun: rank 0 only). It creates or
resumes a run folder for one config, refuses one made by a different config (naming every key
that differs), says what it repairs, and cleans what interrupted runs left behind once the pool is
complete. :func:`upgrade_pool` turns a format-1 run folder into the current format.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunelens.config import RunConfig, config_from_stored, flatten_keys
from prunelens.data.provider import class_difference
from prunelens.errors import ConfigError, DivergedError, PoolError, PrunelensError
from prunelens.io import atomic_save_tensors, atomic_write_json, naming, sha256_file
from prunelens.pruning.train import DIVERGED_FIX
from prunelens.runfolder import (FORMAT, Layout, Level, RunFolder, RunLock, check_level_info,
                                 check_name, level_dir_name, level_entry, level_index, manifest_hash,
                                 read_json, sealed)


def versions() -> dict[str, str]:
    import prunelens
    from prunelens._compat import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision().__version__, "prunelens": prunelens.__version__}


# ---- comparing configs ---------------------------------------------------------------------------
def identity_difference(stored: dict, new: dict) -> list[str]:
    """``key: <run folder> vs <this config>`` for every identity key whose values differ."""
    a, b = flatten_keys(stored), flatten_keys(new)
    return [f"{k}: {a.get(k, '<unset>')!r} in the run folder vs {b.get(k, '<unset>')!r} now"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def stored_config(info: dict, where: Path) -> tuple[RunConfig, list[str]]:
    """The config pool.json records, as this version reads it, and the keys it does not know."""
    try:
        return config_from_stored(info.get("config"), f"{where} config")
    except ConfigError as exc:
        raise PoolError(str(exc)) from None


# ---- the writer ----------------------------------------------------------------------------------
class PoolWriter:
    """Creates or resumes the run folder of one config."""

    def __init__(self, run_dir: Path, config: RunConfig, num_classes: int,
                 class_names: list[str] | None = None, log: Callable[[str], None] = print,
                 ignore_unknown_options: bool = False, dense: Level | None = None) -> None:
        self.layout = Layout(run_dir)
        self.run_dir = self.layout.root
        self.config = config
        self.num_classes = num_classes
        self.class_names = class_names
        self.log = log
        self.ignore_unknown_options = ignore_unknown_options
        self.lock = RunLock(self.run_dir)
        self.entries: list[dict] = []
        self._models: dict[int, str] = {}  # level → sha256 of its model (the next level's parent)
        #: what pool.json carries over from earlier writers (options this version does not know,
        #: the versions that wrote it before)
        self._record: dict = {}
        #: the pool was complete when opened and every level verified: nothing to do
        self.complete = False
        self._dropped_now = False  # options this version does not know were dropped on this open
        #: another pool's verified level 0 that this pool's level 0 is a copy of (prune.dense_source)
        self.dense = dense

    def open(self, force: bool = False) -> PoolWriter:
        from prunelens import distributed
        if not distributed.is_main():
            raise RuntimeError(f"{distributed.where()}: only rank 0 writes the pool")
        pool_json = self.layout.pool_json
        existing = self.run_dir.exists() and any(p.name != self.layout.lock.name for p in self.run_dir.iterdir())
        if existing and not pool_json.is_file():
            raise PoolError(f"output folder {self.run_dir} exists and is not a prunelens run folder; "
                            "choose another name/output_dir or move that folder away")
        self.lock.acquire()
        try:
            self.layout.check_no_links()
            if existing:
                self._check_existing(force)
            if self.dense is not None:
                self._record["dense_source"] = _dense_record(self.dense)
            if not pool_json.is_file():
                self._write_manifest(complete=False)
        except BaseException:
            self.lock.release()
            raise
        return self

    def _check_existing(self, force: bool) -> None:
        try:
            info = read_json(self.layout.pool_json, "move the folder away, or use --force to move it "
                             "aside and start over")
        except PoolError:
            if not force:
                raise
            self._move_aside()
            return
        old_format = info.get("format", 1) == 1
        if not old_format and info.get("manifest_sha256") != manifest_hash(info):
            if not force:
                raise PoolError(f"{self.layout.pool_json} does not match its recorded sha256 (edited "
                                "or damaged): restore it, or use --force to move the run aside and "
                                "start over")
            self._move_aside()
            return
        stored, unknown = stored_config(info, self.layout.pool_json)
        if unknown and not info.get("complete"):  # a complete pool trains nothing more
            self._check_unknown_options(info, unknown)
        difference = identity_difference(stored.identity(), self.config.identity())
        stored_classes = info.get("class_names")
        if stored_classes is not None and self.class_names is not None and stored_classes != self.class_names:
            difference.append(f"the dataset's classes ({class_difference(stored_classes, self.class_names)})")
        if not difference:
            if old_format:  # the same run: now it is worth upgrading
                upgrade_manifest(self.run_dir, info, self.log, self.class_names)
            else:
                self._carry_record(info)
            return
        if not force:
            raise PoolError(f"run folder {self.run_dir} was made by a different config "
                            f"({'; '.join(difference)}). Use another run name/output_dir, or --force "
                            "to move the old run aside and start over")
        self._move_aside()

    def _check_unknown_options(self, info: dict, unknown: list[str]) -> None:
        """Options pool.json records that this version does not know: refused (the next level
        would be trained without them), or with ``ignore_unknown_options`` kept as a record."""
        values = _values_of(info["config"], unknown)
        writer = (info.get("versions") or {}).get("prunelens", "an unknown version")
        if not self.ignore_unknown_options:
            raise PoolError(f"{self.layout.pool_json} records option(s) this prunelens "
                            f"({versions()['prunelens']}) does not know: {', '.join(sorted(values))} "
                            f"(written by prunelens {writer}). Its next levels would be trained "
                            "without them: resume it with that version, or pass "
                            "--ignore-unknown-options to continue without them (pool.json keeps "
                            "their record)")
        self.log(f"{self.config.name}: continuing without option(s) {', '.join(sorted(values))} "
                 "(--ignore-unknown-options); pool.json keeps their record")
        self._record["unknown_options"] = {**(info.get("unknown_options") or {}), **values}
        self._dropped_now = True

    def _carry_record(self, info: dict) -> None:
        """Keep what earlier writers recorded: options this version does not know, the pool level 0
        was copied from, and the versions that wrote the pool before this one."""
        if isinstance(info.get("unknown_options"), dict):
            self._record.setdefault("unknown_options", info["unknown_options"])
        if isinstance(info.get("dense_source"), dict):  # level 0 is still that copy
            self._record.setdefault("dense_source", info["dense_source"])
        before = [v for v in info.get("versions_before") or [] if isinstance(v, dict)]
        old = info.get("versions")
        if isinstance(old, dict) and old.get("prunelens") != versions()["prunelens"] and old not in before:
            before.append(old)
        if before:
            self._record["versions_before"] = before

    def _move_aside(self) -> None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.run_dir.with_name(f"{self.run_dir.name}.replaced-{stamp}")
        self.lock.release()
        self.run_dir.rename(target)
        self.log(f"--force: moved the previous run to {target}")
        self.lock = RunLock(self.run_dir)
        self.lock.acquire()

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the manifest --
    def _write_manifest(self, complete: bool, stop_reason: str | None = None) -> None:
        atomic_write_json(self.layout.pool_json, sealed({
            "format": FORMAT, "name": self.config.name, "config": self.config.resolved(),
            "num_classes": self.num_classes, "class_names": self.class_names,
            "levels": self.entries, "complete": complete, "stop_reason": stop_reason,
            "versions": versions(), **self._record}))

    # -- levels --
    def completed_levels(self) -> list[Level]:
        """Levels 0..k that are present and verify (:meth:`RunFolder.read_level`, files included);
        the first that does not, and every level and partial level after it, is set aside in
        ``stale/`` with a line saying so, and rebuilt."""
        run = RunFolder(self.run_dir)
        listed = {e["index"]: e["level_json_sha256"] for e in run.info["levels"]}
        good: list[Level] = []
        present = self.layout.level_dirs()
        failed = None
        index = 0
        while index in present:
            try:
                level = run.read_level(index, good[-1] if good else None, listed.get(index), files=True)
                if index == 0 and self.dense is not None:
                    self._check_dense_copy(level)
                good.append(level)
            except PoolError as exc:
                failed = present[index].name
                self.log(f"{self.config.name}: {failed} failed its check ({exc}); it is set aside in "
                         f"{self.layout.stale} and rebuilt, with every level after it")
                break
            index += 1
        # what follows the first bad level was built on it: keep it aside, including a partially
        # trained level after it; only the partial state of the next level to build is resumed
        keep = {lv.path for lv in good} | {self.layout.partial(len(good))}
        for leftover in sorted(self.run_dir.glob("level_*")):
            if leftover not in keep:
                self.layout.stale.mkdir(exist_ok=True)
                target = self.layout.stale / f"{leftover.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
                leftover.rename(target)
                if level_index(leftover.name) is not None and leftover.name != failed:
                    self.log(f"{self.config.name}: {leftover.name} does not continue the levels "
                             f"before it; set aside in {target}")
        self.entries = [level_entry(lv.info, lv.path / Layout.LEVEL_JSON) for lv in good]
        self._models = {lv.index: lv.model_sha256 for lv in good}
        unchanged = self.entries == run.info["levels"] and not self._dropped_now
        self.complete = run.complete and unchanged
        if not self.complete:
            self._write_manifest(complete=False)
        return good

    def write_level(self, index: int, model: nn.Module, masks: dict[str, torch.Tensor], info: dict,
                    extra_files: dict[str, Path] | None = None) -> Level:
        """Write level ``index`` (assembled aside, renamed into place) and list it in pool.json.
        A model with a NaN or infinite weight is refused: such a level is never complete."""
        state = model.state_dict()
        bad = [n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise DivergedError(f"level {index} of {self.config.name} has non-finite weights "
                                 f"({', '.join(bad[:3])}): training diverged. {DIVERGED_FIX}")
        tmp = self._fresh_tmp(index)
        atomic_save_tensors(tmp / Layout.MODEL, state)
        atomic_save_tensors(tmp / Layout.MASKS, {n: m.bool() for n, m in masks.items()})
        for name, src in (extra_files or {}).items():
            with naming(tmp / name):
                shutil.copyfile(src, tmp / name)
        files = _level_files(tmp)
        info = dict(info, index=index, files=files, sparsity_all=_sparsity_all(model, masks))
        if index > 0:
            info["parent_model_sha256"] = self._models[index - 1]
        return self._place(index, tmp, info)

    def copy_dense(self, source: Level) -> Level:
        """Level 0 as a copy of ``source``, another pool's verified level 0 (``prune.dense_source``):
        its files, and its level.json with what this pool spent on it (no training: 0 s) and where
        it came from (``dense_source``)."""
        tmp = self._fresh_tmp(0)
        for name in source.files:
            with naming(tmp / name):
                shutil.copyfile(source.path / name, tmp / name)
        files = _level_files(tmp)
        if files != source.files:
            raise PoolError(f"{source.path} changed while it was copied as level 0 of "
                            f"{self.config.name} (its files no longer match its level.json): "
                            "finish or repair that pool, then run again")
        info = {k: v for k, v in source.info.items() if k != "parent_model_sha256"}
        info.update(index=0, files=files, train_time_s=0.0, wall_time_s=0.0,
                    dense_source=_dense_record(source))
        return self._place(0, tmp, info)

    def _check_dense_copy(self, level: Level) -> None:
        """A PoolError unless this pool's level 0 is the dense source's level 0 as it is now (the
        source rebuilt: every level here was pruned from another dense model)."""
        if level.model_sha256 != self.dense.model_sha256:
            raise PoolError(f"its model (sha256 {level.model_sha256[:12]}…) is not level 0 of the "
                            f"dense source {self.dense.run.run_dir} as it is now (sha256 "
                            f"{self.dense.model_sha256[:12]}…): the source was rebuilt")

    def _fresh_tmp(self, index: int) -> Path:
        tmp = self.layout.level_tmp(index)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def _place(self, index: int, tmp: Path, info: dict) -> Level:
        """Write the level.json of the level assembled in ``tmp``, rename it into place and list it."""
        final = self.layout.level(index)
        atomic_write_json(tmp / Layout.LEVEL_JSON, info)
        if final.exists():  # a level that failed verification is rebuilt
            shutil.rmtree(final)
        os.replace(tmp, final)
        shutil.rmtree(self.layout.partial(index), ignore_errors=True)
        self.entries = [e for e in self.entries if e["index"] != index]
        self.entries.append(level_entry(info, final / Layout.LEVEL_JSON))
        self.entries.sort(key=lambda e: e["index"])
        self._models[index] = info["files"][Layout.MODEL]
        self._write_manifest(complete=False)
        return RunFolder(self.run_dir).level(index)

    def finish(self, stop_reason: str) -> None:
        """Mark the pool complete and remove what interrupted runs left behind."""
        self._write_manifest(complete=True, stop_reason=stop_reason)
        self.clean()

    def clean(self) -> None:
        """Remove what interrupted runs left behind (in a complete pool)."""
        removed = remove_leftovers(self.layout)
        if removed:
            self.log(f"{self.config.name}: removed {removed} leftover(s) of interrupted runs")


def _level_files(folder: Path) -> dict[str, str]:
    """sha256 of each level file (``*.safetensors``) in ``folder``."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"}


def _dense_record(source: Level) -> dict:
    """Where a copied level 0 comes from: the source pool and its level 0's model."""
    return {"run_dir": str(source.run.run_dir), "name": source.run.name,
            "model_sha256": source.model_sha256}


def _values_of(config: dict, keys: list[str]) -> dict:
    """The flattened values of ``config`` under each of ``keys`` (a key or a whole section)."""
    return {k: v for k, v in flatten_keys(config).items()
            if k in keys or any(k.startswith(f"{u}.") for u in keys)}


def _sparsity_all(model: nn.Module, masks: dict[str, torch.Tensor]) -> float:
    """Pruned weights over all parameters (biases, norms, embeddings included): the count the
    papers' sparsity levels use when they are not powers of (1 − rate)."""
    total = sum(p.numel() for p in model.parameters())
    pruned = sum(int((~m.bool()).sum()) for m in masks.values())
    return pruned / total if total else math.nan


def paper_sparsity(pool: RunFolder) -> dict[int, float]:
    """Level -> the sparsity Cassano et al.'s code reports, pruned weights over every Conv2d and
    Linear weight (:func:`prunelens.pruning.masks.conv_linear_sparsity`), computed from each
    level's ``layer_sparsity`` and the architecture's shapes (built on the meta device: nothing
    allocated). Empty, with a warning saying why, when the architecture cannot be built there.
    ``prunelens pool show`` and the report's pool table both print this count."""
    from prunelens.models import create_model
    from prunelens.pruning.masks import conv_linear_sparsity

    cfg = pool.config
    try:
        with torch.device("meta"):
            model = create_model(cfg.model.name, pool.num_classes, **cfg.model.options)
    except (PrunelensError, RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        warnings.warn(f"{pool.name}: the paper's sparsity count is left out ('-'): model "
                      f"'{cfg.model.name}' cannot be built without weights to count its layers ({exc})",
                      stacklevel=2)
        return {}
    return {lv.index: conv_linear_sparsity(model, lv.layer_sparsity) for lv in pool.levels}


def remove_leftovers(layout: Layout) -> int:
    """Delete what interrupted runs left in a run folder (:meth:`Layout.leftovers`)."""
    found = layout.leftovers()
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(found)


# ---- format 1 -> 2 -------------------------------------------------------------------------------
def upgrade_pool(run_dir: str | Path, log: Callable[[str], None] = print) -> None:
    """``prunelens pool upgrade``: verify a format-1 run folder's levels and write its pool.json in
    the current format (config resolved, level.json hashes, its own hash)."""
    layout = Layout(run_dir)
    if not layout.root.is_dir():
        raise PoolError(f"run folder {layout.root} does not exist")
    layout.check_no_links()
    with RunLock(layout.root):
        info = read_json(layout.pool_json, "this is not a prunelens run folder")
        if info.get("format", 1) != 1:
            log(f"{layout.pool_json} is already in format {info.get('format')}: nothing to do")
            return
        upgrade_manifest(layout.root, info, log)


def upgrade_manifest(run_dir: Path, info: dict, log: Callable[[str], None],
                     class_names: list[str] | None = None) -> None:
    """Rewrite a format-1 ``info`` (pool.json of ``run_dir``) in the current format, after checking
    each listed level's files against its level.json. Values that format 1 did not record (the
    defaults of model and dataset options then) are taken as this version's defaults."""
    layout = Layout(run_dir)
    layout.check_no_links()
    config, unknown = stored_config(info, layout.pool_json)
    name = check_name(info.get("name", config.name), "run name")
    num_classes = info.get("num_classes")
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1):
        raise PoolError(f"{layout.pool_json} records no number of classes (num_classes), which "
                        "format 2 needs: add \"num_classes\": N (the classes of the dataset it was "
                        f"trained on) to it, then run `prunelens pool upgrade {run_dir}` again")
    entries = [_upgraded_level(layout, index) for index in _format1_indices(info, layout.pool_json)]
    atomic_write_json(layout.pool_json, sealed({
        "format": FORMAT, "name": name, "config": config.resolved(),
        "num_classes": num_classes, "class_names": class_names, "levels": entries,
        "complete": bool(info.get("complete")), "stop_reason": info.get("stop_reason"),
        "versions": {**(info.get("versions") or {}), "upgraded_by": versions()["prunelens"]},
        **({"unknown_options": _values_of(info["config"], unknown)} if unknown else {})}))
    if unknown:
        log(f"{run_dir}: pool.json records option(s) this version does not know, kept under "
            f"unknown_options: {', '.join(sorted(_values_of(info['config'], unknown)))}")
    log(f"{run_dir}: pool.json upgraded from format 1 to {FORMAT} ({len(entries)} level(s) verified; "
        "option defaults it did not record are taken as this version's)")


def _format1_indices(info: dict, where: Path) -> list[int]:
    """The level indices a format-1 pool.json lists (0, 1, … in order), or a PoolError."""
    levels = info.get("levels") or []
    fix = ("the folder was edited or damaged: restore pool.json from a copy, or rebuild the pool "
           "with `prunelens prune`")
    if not isinstance(levels, list):
        raise PoolError(f"{where} lists its levels as {str(levels)[:40]}, not as a list: {fix}")
    indices = []
    for position, entry in enumerate(levels):
        index = entry.get("index") if isinstance(entry, dict) else None
        if not (isinstance(index, int) and not isinstance(index, bool)
                and entry.get("dir") == level_dir_name(index) and index == position):
            raise PoolError(f"{where} has a malformed level entry {str(entry)[:80]} (each is "
                            f"{{\"index\": i, \"dir\": \"level_0i\", …}}, in order from 0): {fix}")
        indices.append(index)
    return indices


def _upgraded_level(layout: Layout, index: int) -> dict:
    """Level ``index`` of a format-1 run folder, its level.json and files verified: its pool.json entry."""
    path = layout.level_json(index)
    level = read_json(path, f"level {index} is listed but missing")
    check_level_info(level, path, index)
    for name, recorded in level["files"].items():
        file = layout.level(index) / name
        if not file.is_file() or sha256_file(file) != recorded:
            raise PoolError(f"{file} does not match the sha256 in its level.json: the level is "
                            "damaged; delete it (and the levels after it) and re-run `prunelens "
                            "prune` to rebuild them")
    return level_entry(level, path)
