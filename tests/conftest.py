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
