"""What the report reads of a run folder besides its results: the pool manifest and level files.

``RUN_DIR/pool.json`` and ``RUN_DIR/level_XX/level.json`` (layout in DESIGN.md / the contract) give
the config, provenance and the pool table; ``RUN_DIR/results/<suite>/*.png`` are figures a suite drew
itself (e.g. the qualitative attribution grid) and ``RUN_DIR/results/<suite>/skipped.json``
(``{"reason": …}``) says why a suite did not run.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from prunelens.errors import PoolError

# settings that do not change what a run measures: runs differing only in these (and the seed)
# are replicates of one experiment
_RUNTIME_KEYS = {"name": None, "output_dir": None, "seed": None,
                 "train": ("device", "num_workers", "eval_batch_size", "compile"),
                 "evaluate": ("device", "batch_size")}


@dataclass(frozen=True)
class RunInfo:
    """A run's manifest (``pool.json``) and its levels' ``level.json`` (each plus its ``dir``)."""

    run_dir: Path
    name: str
    config: dict
    config_hash: str
    complete: bool
    versions: dict
    levels: tuple[dict, ...]

    @property
    def model(self) -> str:
        return str(self.config.get("model", {}).get("name", "?"))

    @property
    def dataset(self) -> str:
        return str(self.config.get("data", {}).get("name", "?"))

    @property
    def seed(self):
        return self.config.get("seed")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PoolError(f"{path} not found: {what}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PoolError(f"{path} is not readable JSON ({exc}); it is written by `prunelens prune`: "
                        "re-run it on this run folder to repair the pool") from None
    if not isinstance(data, dict):
        raise PoolError(f"{path} must hold a JSON object; re-run `prunelens prune` to repair the pool")
    return data


def read_run(run_dir: str | Path) -> RunInfo:
    """Read ``pool.json`` and every listed ``level.json`` of ``run_dir``."""
    run_dir = Path(run_dir)
    manifest = _read_json(run_dir / "pool.json",
                          f"{run_dir} is not a prunelens run folder (make one with `prunelens prune`)")
    try:
        entries = sorted(manifest["levels"], key=lambda e: int(e["index"]))
        levels = []
        for entry in entries:
            level_dir = run_dir / entry["dir"]
            level = _read_json(level_dir / "level.json", f"level {entry['index']} of {run_dir} is "
                               "listed in pool.json but missing; re-run `prunelens prune` to redo it")
            levels.append({**level, "dir": str(entry["dir"])})
        return RunInfo(run_dir=run_dir, name=str(manifest["name"]), config=dict(manifest["config"]),
                       config_hash=str(manifest.get("config_hash", "")),
                       complete=bool(manifest.get("complete", False)),
                       versions=dict(manifest.get("versions", {})), levels=tuple(levels))
    except (KeyError, TypeError, ValueError) as exc:
        raise PoolError(f"{run_dir / 'pool.json'} lacks a valid field {exc}; it was not written by "
                        "this version of prunelens (re-run `prunelens prune`)") from None


def _experiment(config: dict) -> str:
    """The config with runtime-only keys and the seed removed, as a canonical string."""
    out = {}
    for key, value in config.items():
        drop = _RUNTIME_KEYS.get(key, ())
        if drop is None:
            continue
        if isinstance(value, dict) and drop:
            value = {k: v for k, v in value.items() if k not in drop}
        out[key] = value
    return json.dumps(out, sort_keys=True, default=str)


def seed_groups(runs: Sequence[RunInfo]) -> dict[str, str]:
    """Run name → group label; runs whose configs differ only by ``seed`` share a label.

    A group of one keeps the run's name; a larger group is named after its first run plus its seeds,
    e.g. ``demo-cnn-s0 (seeds 0, 1, 2)``.
    """
    by_experiment: dict[str, list[RunInfo]] = {}
    for run in runs:
        by_experiment.setdefault(_experiment(run.config), []).append(run)
    labels = {}
    for members in by_experiment.values():
        seeds = [r.seed for r in members]
        if len(members) > 1 and len(set(map(str, seeds))) == len(members):
            label = f"{members[0].name} (seeds {', '.join(map(str, seeds))})"
        else:
            label = None  # identical seeds: not replicates, keep them apart
        for run in members:
            labels[run.name] = label or run.name
    return labels


def pool_table(run: RunInfo) -> pd.DataFrame:
    """One row per level: sparsity, accuracies and losses, epochs, steps, wall time, file hashes."""
    rows = []
    for level in run.levels:
        metrics = level.get("metrics", {}) or {}
        files = level.get("files", {}) or {}
        rows.append({"level": int(level["index"]), "sparsity": float(level["sparsity"]),
                     **{k: metrics.get(k) for k in ("train_acc", "val_acc", "test_acc", "test_loss")},
                     "epochs": level.get("epochs"), "steps": level.get("steps"),
                     "wall_time_s": level.get("wall_time_s"),
                     "model_sha256": files.get("model.safetensors", ""),
                     "masks_sha256": files.get("masks.safetensors", "")})
    return pd.DataFrame(rows)


def pool_accuracy_rows(run: RunInfo) -> pd.DataFrame:
    """``level.json`` test accuracy as aggregate accuracy records (stand-in when the accuracy suite
    has no results: one value per level, hence no CI)."""
    rows = [{"run": run.name, "model": run.model, "level": int(lv["index"]),
             "sparsity": float(lv["sparsity"]), "suite": "accuracy", "metric": "accuracy",
             "method": "", "dataset": "test", "condition": "", "item": "",
             "value": float((lv.get("metrics") or {}).get("test_acc", float("nan")))}
            for lv in run.levels]
    return pd.DataFrame(rows)


def suite_pngs(run: RunInfo) -> dict[str, list[Path]]:
    """Figures the suites drew themselves into ``results/<suite>/`` (not per-level artifacts)."""
    found: dict[str, list[Path]] = {}
    for path in sorted((run.run_dir / "results").glob("*/*.png")):
        found.setdefault(path.parent.name, []).append(path)
    return found


def skip_reasons(run: RunInfo) -> dict[str, str]:
    """Suite → why it was skipped, from ``results/<suite>/skipped.json`` where the driver wrote one."""
    reasons = {}
    for path in sorted((run.run_dir / "results").glob("*/skipped.json")):
        try:
            reasons[path.parent.name] = str(json.loads(path.read_text())["reason"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
    return reasons
