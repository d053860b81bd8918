"""The pool end to end: levels, strict loading, retraining modes, resume after kill -9, locks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from prunelens._compat import torchvision
from prunelens.runfolder import RunFolder as Pool
from prunelens.pruning import prune_run, sparsity


def _hashes(run_dir: Path) -> dict[str, dict]:
    return {lv.index: lv.info["files"] for lv in Pool(run_dir).levels}


def test_pool_levels_sparsity_and_api(tiny_config):
    cfg = tiny_config()
    pool = prune_run(cfg, log=lambda *_: None)
    assert pool.complete
    assert [lv.index for lv in pool.levels] == [0, 1, 2, 3, 4]
    # rate 0.5 per round, capped at max_sparsity 0.9 on the last round
    expected = [0.0, 0.5, 0.75, 0.875, 0.9]
    assert [lv.sparsity for lv in pool.levels] == pytest.approx(expected, abs=2e-3)
    assert "max_sparsity" in pool.info["stop_reason"]
    for lv in pool.levels:
        model = lv.load_model()
        assert not model.training
        masks = lv.load_masks()
        state = model.state_dict()
        for name, mask in masks.items():
            assert torch.all(state[name][~mask] == 0), (lv.index, name)
        assert sparsity(model) == pytest.approx(lv.sparsity, abs=1e-3)
        assert set(lv.metrics) >= {"train_acc", "val_acc", "test_acc", "test_loss"}
        assert lv.info["files"].keys() == {"model.safetensors", "masks.safetensors"}


def test_resnet18_level_loads_strict_into_plain_torchvision_model(tiny_config):
    cfg = tiny_config(model={"name": "resnet18", "widths": None},
                      train={"epochs": 1, "max_steps_per_epoch": 1},
                      prune={"rounds": 1, "max_sparsity": 0.5})
    cfg.model = cfg.model.__class__(name="resnet18")
    pool = prune_run(cfg, log=lambda *_: None)
    plain = torchvision().models.resnet18(num_classes=4)
    state = pool.level(1).state_dict()
    assert not any("orig" in k or "mask" in k for k in state)
    plain.load_state_dict(state, strict=True)
    assert sparsity(plain) == pytest.approx(pool.level(1).sparsity, abs=1e-6)


def test_rewind_resets_to_the_dense_training_step(tiny_config):
    cfg = tiny_config(prune={"retrain": "rewind", "rewind_step": 0, "rounds": 1})
    pool = prune_run(cfg, log=lambda *_: None)
    from prunelens.io import load_tensors
    from prunelens.models import create_model
    from prunelens.pruning.train import derived_seed
    rewind = load_tensors(pool.level(0).path / "rewind.safetensors")
    torch.manual_seed(derived_seed(cfg.seed, "init"))
    init = create_model("small_resnet", 4, widths=[8, 16]).state_dict()
    assert all(torch.equal(rewind[k], init[k]) for k in init)  # step 0 = the initialisation
    assert pool.level(0).info["files"].keys() >= {"rewind.safetensors"}
    assert pool.level(1).info["epochs"] == cfg.train.epochs


def test_one_shot_prunes_to_target_with_the_gradual_budget(tiny_config):
    cfg = tiny_config(prune={"schedule": "one_shot", "rate": 0.5, "max_sparsity": 0.9, "epochs": 1})
    pool = prune_run(cfg, log=lambda *_: None)
    assert [lv.index for lv in pool.levels] == [0, 1]
    assert pool.level(1).sparsity == pytest.approx(0.9, abs=1e-3)
    assert pool.level(1).info["epochs"] == 4  # 4 gradual rounds × 1 epoch


def test_finetune_and_layerwise_and_stop_rule(tiny_config):
    cfg = tiny_config(prune={"retrain": "finetune", "scope": "layerwise", "rate": 0.5,
                             "max_sparsity": 0.99, "min_alive_units": 0.9})
    pool = prune_run(cfg, log=lambda *_: None)
    for lv in pool.levels[1:]:
        assert all(s == pytest.approx(lv.sparsity, abs=0.02) for s in lv.layer_sparsity.values())
    assert "min_alive_units" in pool.info["stop_reason"]
    from prunelens.pruning.masks import alive_unit_fraction
    assert min(alive_unit_fraction(pool.levels[-1].load_masks()).values()) >= 0.9


def test_rerun_of_a_complete_pool_changes_nothing(tiny_config):
    cfg = tiny_config(prune={"rounds": 1})
    prune_run(cfg, log=lambda *_: None)
    before = _hashes(cfg.run_dir)
    mtime = (cfg.run_dir / "level_01" / "model.safetensors").stat().st_mtime_ns
    prune_run(cfg, log=lambda *_: None)
    assert _hashes(cfg.run_dir) == before
    assert (cfg.run_dir / "level_01" / "model.safetensors").stat().st_mtime_ns == mtime


def _write_config(tmp_path: Path, name: str, **extra) -> Path:
    from conftest import tiny_config_dict
    raw = tiny_config_dict(tmp_path, name=name, **extra)
    raw["train"]["epochs"] = 4
    raw["prune"]["epochs"] = 4
    raw["prune"]["rounds"] = 2
    raw["data"]["n_train"] = 2048
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _as_in_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a job that a non-interactive shell started in the background
    (as CI harnesses do) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    handler, so the test's SIGINT would be lost. A terminal's foreground command has the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "prunelens", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_in_a_terminal, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_kill_9_and_resume_gives_identical_hashes(tmp_path):
    reference = _write_config(tmp_path, "reference")
    assert _cli("prune", str(reference)).wait() == 0
    interrupted = _write_config(tmp_path, "interrupted")
    run_dir = tmp_path / "runs" / "interrupted"
    # kill -9 in the middle of level 0, then again in the middle of level 1 …
    for level in (0, 1):
        proc = _cli("prune", str(interrupted))
        _wait_for(run_dir / f"level_0{level}.partial" / "train_state.json", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run_dir / f"level_0{level}").exists()
    assert (run_dir / "level_00").is_dir()
    # … and resume
    resumed = _cli("prune", str(interrupted))
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert "resuming after level 0" in out
    assert _hashes(run_dir) == _hashes(tmp_path / "runs" / "reference")
    assert not list(run_dir.glob("*.partial"))


def test_ctrl_c_exits_cleanly_and_resumes(tmp_path):
    config = _write_config(tmp_path, "ctrlc")
    run_dir = tmp_path / "runs" / "ctrlc"
    proc = _cli("prune", str(config))
    _wait_for(run_dir / "level_00.partial" / "train_state.json", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    assert proc.returncode == 130
    assert "re-run the same command to resume" in err and "Traceback" not in err
    done = _cli("prune", str(config))
    assert done.wait() == 0
    assert Pool(run_dir).complete


def test_second_process_on_a_run_folder_is_refused(tmp_path):
    from prunelens.runfolder import RunLock
    config = _write_config(tmp_path, "locked")
    run_dir = tmp_path / "runs" / "locked"
    with RunLock(run_dir):  # another prunelens process holds the run folder
        second = _cli("prune", str(config))
        out, err = second.communicate()
        evaluate = _cli("evaluate", str(run_dir))
        _, err_evaluate = evaluate.communicate()
    assert second.returncode == 2
    assert f"in use by another prunelens process (pid {os.getpid()})" in err and "Traceback" not in err
    assert not (run_dir / "pool.json").exists()
    assert evaluate.returncode == 2  # no pool yet: refused before the lock matters
    assert _cli("prune", str(config)).wait() == 0  # released: the run goes ahead


def test_run_folder_of_another_config_is_refused_unless_force(tiny_config, capsys):
    from prunelens.errors import PoolError
    cfg = tiny_config(prune={"rounds": 1})
    prune_run(cfg, log=lambda *_: None)
    before = _hashes(cfg.run_dir)
    other = tiny_config(prune={"rounds": 1, "rate": 0.3})
    with pytest.raises(PoolError, match=r"different config \(prune.rate: 0.5 in the run folder vs 0.3 now\)"):
        prune_run(other, log=lambda *_: None)
    assert _hashes(cfg.run_dir) == before  # nothing lost
    prune_run(other, force=True, log=lambda *_: None)
    moved = list(cfg.run_dir.parent.glob("tiny.replaced-*"))
    assert len(moved) == 1 and _hashes(moved[0]) == before
    assert Pool(cfg.run_dir).level(1).sparsity == pytest.approx(0.3, abs=1e-3)


def test_corrupt_level_is_detected_and_rebuilt(tiny_config):
    from prunelens.errors import PoolError
    cfg = tiny_config(prune={"rounds": 2})
    prune_run(cfg, log=lambda *_: None)
    before = _hashes(cfg.run_dir)
    model_file = cfg.run_dir / "level_01" / "model.safetensors"
    blob = bytearray(model_file.read_bytes())
    blob[-10] ^= 0xFF
    model_file.write_bytes(bytes(blob))
    with pytest.raises(PoolError, match="does not match the sha256"):
        Pool(cfg.run_dir).level(1).load_model()
    prune_run(cfg, log=lambda *_: None)  # rebuilds level 1 and what follows it
    assert _hashes(cfg.run_dir) == before
    assert list((cfg.run_dir / "stale").iterdir())  # the later level was kept aside, not deleted


def test_a_mismatched_epoch_checkpoint_is_ignored_and_the_level_retrained(tiny_config, capsys):
    """A kill between the checkpoint's two renames leaves new tensors with an old JSON."""
    from prunelens.pruning.train import Checkpoint
    cfg = tiny_config(prune={"rounds": 1})
    prune_run(cfg, log=lambda *_: None)
    reference = _hashes(cfg.run_dir)
    # rebuild level 1 from a damaged partial state: its JSON no longer matches the tensors
    import shutil
    partial = cfg.run_dir / "level_01.partial"
    shutil.rmtree(cfg.run_dir / "level_01")
    partial.mkdir()
    (partial / "train_state.safetensors").write_bytes(b"garbage")
    (partial / "train_state.json").write_text('{"epochs_done": 1, "tensors_sha256": "0"}')
    assert Checkpoint.in_folder(partial).load() is None
    messages = []
    prune_run(cfg, log=messages.append)
    assert any("ignored" in m and "the level restarts" in m for m in messages)
    assert _hashes(cfg.run_dir) == reference


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "pool.json").write_text("[]"), "does not hold a JSON object"),
    (lambda d: (d / "pool.json").write_text('{"format": 2, "levels": []}'), "lacks name"),
    (lambda d: (d / "pool.json").write_text('{"levels": []}'), "run `prunelens pool upgrade"),
    (lambda d: (d / "level_00" / "level.json").write_text('{"index": 0}'),
     "level_00/level.json does not match the sha256 recorded in pool.json"),
])
def test_malformed_pool_files_are_clear_errors(tiny_config, capsys, damage, message):
    from prunelens.cli import main
    cfg = tiny_config(prune={"rounds": 1}, train={"epochs": 1})
    prune_run(cfg, log=lambda *_: None)
    damage(cfg.run_dir)
    assert main(["pool", "show", str(cfg.run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_evaluating_a_pool_without_levels_is_a_clear_error(tiny_config, capsys):
    from prunelens.cli import main
    from prunelens.pruning.store import PoolWriter
    cfg = tiny_config()
    PoolWriter(cfg.run_dir, cfg, 4).open().close()  # a run interrupted during level 0
    assert main(["evaluate", str(cfg.run_dir)]) == 2
    assert "no complete level to evaluate yet" in capsys.readouterr().err
