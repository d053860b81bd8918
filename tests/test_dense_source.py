"""prune.dense_source: a pool that starts from another pool's verified level 0 (copied, not
retrained), as compare-schedules' one-shot pools start from the gradual pool's. A source whose
level 0 changed is never mixed with levels pruned from the old one."""
from __future__ import annotations

import json

import pytest
import torch

from prunelens.config import resolve_runs
from prunelens.errors import ConfigError
from prunelens.pruning import prune_run
from prunelens.pruning.store import PoolWriter
from prunelens.runfolder import Layout, RunFolder

from conftest import tiny_config_dict


def _configs(tmp_path, **prune):
    base = tiny_config_dict(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 2},
                            prune={"rate": 0.5, "max_sparsity": 0.75, "epochs": 1})
    source = resolve_runs({**base, "name": "source"})[0]
    copy = resolve_runs({**base, "name": "copy",
                         "prune": {**base["prune"], "schedule": "one_shot", "rounds": 2,
                                   "dense_source": "source", **prune}})[0]
    return source, copy


def test_level_0_is_the_source_s_files_and_no_dense_training(tmp_path):
    source_cfg, copy_cfg = _configs(tmp_path)
    source = prune_run(source_cfg, log=lambda *a: None)
    lines: list[str] = []
    copy = prune_run(copy_cfg, log=lines.append)
    dense, mine = source.level(0), copy.level(0)
    assert mine.files == dense.files  # model, masks: byte for byte
    for name in dense.files:
        assert (mine.path / name).read_bytes() == (dense.path / name).read_bytes()
        assert not (mine.path / name).samefile(dense.path / name)  # a copy, not a link
    assert mine.metrics == dense.metrics and mine.info["epochs"] == dense.info["epochs"]
    assert mine.info["train_time_s"] == 0.0  # this pool trained no dense model
    assert mine.info["dense_source"]["model_sha256"] == dense.model_sha256
    assert not any("level  0  sparsity" in line for line in lines)  # the line a trained level logs
    assert any("level  0  copied from" in line for line in lines)
    # the chain goes on from the copy, and pool.json says where level 0 came from
    assert copy.level(1).parent_sha256 == dense.model_sha256
    manifest = json.loads((copy.run_dir / Layout.POOL_JSON).read_text())
    assert manifest["config"]["prune"]["dense_source"] == "source"
    assert manifest["dense_source"]["model_sha256"] == dense.model_sha256
    # the identity is that of the same run built without a source: only where level 0 came from differs
    assert copy.identity_hash == copy_cfg.model_copy(
        update={"prune": copy_cfg.prune.model_copy(update={"dense_source": None})}).identity_hash()


def test_a_rebuilt_source_sets_the_copy_aside_and_rebuilds_it(tmp_path):
    source_cfg, copy_cfg = _configs(tmp_path)
    source = prune_run(source_cfg, log=lambda *a: None)
    old = prune_run(copy_cfg, log=lambda *a: None)
    old_level1 = old.level(1).model_sha256
    # the source is rebuilt with other dense weights (as retraining on a GPU gives)
    import shutil
    level0 = source.level(0)
    model = level0.load_model()
    for later in source.levels[1:]:
        shutil.rmtree(later.path)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    with PoolWriter(source.run_dir, source_cfg, source.num_classes, source.class_names,
                    log=lambda *a: None).open() as writer:
        writer.completed_levels()
        writer.write_level(0, model, level0.load_masks(), dict(level0.info))
    rebuilt = RunFolder(source.run_dir).level(0).model_sha256
    lines: list[str] = []
    copy = prune_run(copy_cfg, log=lines.append)
    assert copy.level(0).model_sha256 == rebuilt != old.level(0).model_sha256
    assert copy.level(1).parent_sha256 == rebuilt and copy.level(1).model_sha256 != old_level1
    assert any("level_00 failed its check" in line and "the source was rebuilt" in line for line in lines)
    assert list(Layout(copy.run_dir).stale.iterdir())  # the old levels kept aside, not mixed


def test_a_source_trained_otherwise_is_refused(tmp_path):
    source_cfg, copy_cfg = _configs(tmp_path)
    prune_run(source_cfg, log=lambda *a: None)
    other = copy_cfg.model_copy(update={"train": copy_cfg.train.model_copy(update={"lr": 0.01})})
    with pytest.raises(ConfigError, match=r"prune.dense_source: .*train.lr"):
        prune_run(other, log=lambda *a: None)
    assert not other.run_dir.exists()
    missing = copy_cfg.model_copy(update={"prune": copy_cfg.prune.model_copy(update={"dense_source": "nowhere"})})
    with pytest.raises(Exception, match="nowhere"):
        prune_run(missing, log=lambda *a: None)
