"""The suites read images through the run's loaders: the run's workers, one loader per split kept
across the levels of one evaluate, the same records as without workers."""
from __future__ import annotations

import shutil

import torch
import yaml

from conftest import tiny_config_dict
from prunelens.cli import main
from prunelens.config import DataConfig
from prunelens.data.provider import RunData


def test_a_split_keeps_one_loader_with_the_runs_workers():
    data = RunData(DataConfig(name="synthetic", num_classes=4, n_train=8, n_val=8, n_test=8,
                              image_size=16), seed=0, num_workers=2)
    split = data.split("test")
    first = data.loader(split, 4)
    assert first is data.loader(split, 4)  # kept: its workers persist across levels
    assert first.num_workers == 2 and first.persistent_workers
    sample = data.sample("test", 3)
    assert sample is data.sample("test", 3) and data.loader(sample, 4) is data.loader(sample, 4)
    other = torch.utils.data.TensorDataset(torch.zeros(4, 3, 16, 16), torch.zeros(4))
    own = data.loader(other, 4)  # not the run's: a loader of its own, whose workers end with it
    assert own is not data.loader(other, 4) and not own.persistent_workers
    labels = torch.cat([y for _, y in first])
    assert labels.tolist() == split.labels.tolist()  # in order


def test_evaluate_with_workers_gives_the_same_records(tmp_path, capsys):
    raw = tiny_config_dict(tmp_path, prune={"rounds": 1}, train={"epochs": 1},
                           evaluate={"suites": ["accuracy", "psp"]})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "c.yaml")]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in (run_dir / "results").glob("*/level_*.csv")}
    shutil.rmtree(run_dir / "results")
    assert main(["evaluate", str(run_dir), "--set", "evaluate.num_workers=2"]) == 0
    after = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in (run_dir / "results").glob("*/level_*.csv")}
    assert after == before and len(before) == 4
