from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_config_dict(tmp_path, **sections) -> dict:
    """A run that trains in about a second: 32 px synthetic images, a 2-stage small ResNet."""
    raw = {
        "name": "tiny", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "model": {"name": "small_resnet", "widths": [8, 16]},
        "data": {"name": "synthetic", "image_size": 32, "num_classes": 4, "n_train": 256,
                 "n_val": 64, "n_test": 64, "texture_correlation": 0.8},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine", "device": "cpu"},
        "prune": {"rate": 0.5, "max_sparsity": 0.9, "epochs": 1, "min_alive_units": 0.0},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture
def tiny_config(tmp_path):
    from prunelens.config import resolve_runs

    def make(**sections):
        return resolve_runs(tiny_config_dict(tmp_path, **sections))[0]
    return make


def write_manifest(run_dir, name: str, config: dict, level_dirs, complete: bool = True,
                   num_classes: int = 2, **extra) -> None:
    """A format-2 pool.json for hand-made levels (each folder holding its level.json)."""
    from prunelens.io import atomic_write_json
    from prunelens.runfolder import FORMAT, level_entry, read_json, sealed

    entries = [level_entry(read_json(d / "level.json", ""), d / "level.json") for d in level_dirs]
    atomic_write_json(run_dir / "pool.json", sealed({
        "format": FORMAT, "name": name, "config": config, "num_classes": num_classes,
        "levels": entries, "complete": complete, "stop_reason": None,
        "versions": {"python": "3.11", "torch": torch.__version__, "prunelens": "0.1.0"}, **extra}))


def hand_made_pool(run_dir, sparsities, name: str = "hand-made"):
    """A verified run folder whose levels hold only a level.json (for suites' figures across levels)."""
    from prunelens.io import atomic_write_json
    from prunelens.runfolder import RunFolder

    dirs = []
    for index, sparsity in enumerate(sparsities):
        level_dir = run_dir / f"level_{index:02d}"
        atomic_write_json(level_dir / "level.json", {
            "index": index, "sparsity": sparsity, "layer_sparsity": {}, "metrics": {},
            "epochs": 1, "wall_time_s": 0.0, "files": {}})
        dirs.append(level_dir)
    write_manifest(run_dir, name, {"name": name, "model": {"name": "small_resnet"}}, dirs)
    return RunFolder(run_dir)
