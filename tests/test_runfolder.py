"""Run folders that survive upgrades and tampering: identity, verified manifests, one-line errors
for every fault a user or the machine causes, sanity checks, and what is repaired.

Most faults are one row of :data:`FAULTS` (damage a copy of a small pool, run a command, expect
exit code 2 and one line naming the problem, and nothing already written lost). Faults of the
machine (a full disk, a read-only folder) run for real in a private mount namespace where the
machine allows it, and are injected otherwise.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config_dict
from prunelens.cli import main
from prunelens.config import resolve_runs
from prunelens.errors import DataError
from prunelens.results import load_results
from prunelens.runfolder import FORMAT, RunFolder, sealed

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "pool_v1" / "legacy-v1"


# ---- a small evaluated pool, copied for every test --------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    raw = tiny_config_dict(root, prune={"rounds": 2}, train={"epochs": 1},
                           evaluate={"suites": ["accuracy"]})
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config)]) == 0
    return root, raw


@pytest.fixture
def run(built, tmp_path):
    """(run folder, config path) of a copy of the built pool."""
    root, raw = built
    raw = dict(raw, output_dir=str(tmp_path / "runs"))
    shutil.copytree(root / "runs", tmp_path / "runs")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    return tmp_path / "runs" / "tiny", config


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, err


def _one_line_error(code: int, err: str, *phrases: str) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("prunelens: note:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("prunelens: error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.suffix != ".lock" and p.name != ".lock"}


def _edit_json(path: Path, change, reseal: bool = False) -> None:
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(sealed(info) if reseal else info, indent=1))


# ---- the fault table --------------------------------------------------------------------------------
def _set(keys: str, value):
    def change(info):
        node = info
        *parents, last = keys.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _edit_yaml(path: Path, key: str, value) -> None:
    raw = yaml.safe_load(path.read_text())
    _set(key, value)(raw)
    path.write_text(yaml.safe_dump(raw))


FAULTS = {
    # manifests: an edit anywhere is found before a value is used
    "level.json sparsity edited": (
        lambda d, c: _edit_json(d / "level_01" / "level.json", _set("sparsity", 0.01)),
        ["pool", "show", "{run}"], ["level_01/level.json does not match the sha256 recorded in pool.json"]),
    "level.json test_acc edited (results)": (
        lambda d, c: _edit_json(d / "level_02" / "level.json", _set("metrics.test_acc", 1.0)),
        ["results", "{run}"], ["level_02/level.json does not match"]),
    "level.json test_acc edited (report)": (
        lambda d, c: _edit_json(d / "level_02" / "level.json", _set("metrics.test_acc", 1.0)),
        ["report", "{run}", "-o", "{tmp}/out"], ["level_02/level.json does not match"]),
    "pool.json config edited": (
        lambda d, c: _edit_json(d / "pool.json", _set("config.data.n_test", 8)),
        ["evaluate", "{run}", "--force"], ["pool.json does not match its recorded sha256"]),
    "pool.json name is a path (report)": (
        lambda d, c: _edit_json(d / "pool.json", _set("name", "../../escape"), reseal=True),
        ["report", "{run}", "-o", "{tmp}/out"], ["run name '../../escape'", "not a plain name"]),
    "pool.json level dir is a path": (
        lambda d, c: _edit_json(d / "pool.json", lambda i: i["levels"][1].update(dir="../level_01"),
                                reseal=True),
        ["pool", "show", "{run}"], ["malformed level entry"]),
    "level.json names a file outside": (
        lambda d, c: (_edit_json(d / "level_01" / "level.json",
                                 lambda i: i["files"].update({"../../x.safetensors": "0"})),
                      _edit_json(d / "pool.json", lambda i: i["levels"][1].update(
                          level_json_sha256=_sha(d / "level_01" / "level.json")), reseal=True)),
        ["pool", "show", "{run}"], ["names a file '../../x.safetensors'"]),
    "results CSV edited": (
        lambda d, c: (d / "results/accuracy/level_01.csv").write_text(
            (d / "results/accuracy/level_01.csv").read_text().replace(",1.0", ",0.0")),
        ["results", "{run}"], ["does not match its recorded sha256"]),
    "pool.json nested 5000 deep": (
        lambda d, c: (d / "pool.json").write_text("[" * 5000 + "]" * 5000),
        ["pool", "show", "{run}"], ["pool.json is not readable JSON (nested too deeply)"]),
    "a results sidecar nested 5000 deep": (
        lambda d, c: (d / "results/accuracy/level_01.json").write_text("[" * 5000 + "]" * 5000),
        ["results", "{run}"], ["level_01.csv has no readable sidecar"]),
    "a symbolic link in the run folder": (
        lambda d, c: (d / "results" / "accuracy" / "leak.png").symlink_to("/etc/hostname"),
        ["report", "{run}", "-o", "{tmp}/out"], ["holds symbolic links", "leak.png -> /etc/hostname"]),
    "pool.json of a newer format": (
        lambda d, c: _edit_json(d / "pool.json", _set("format", FORMAT + 1), reseal=True),
        ["results", "{run}"], [f"pool format {FORMAT + 1}", "upgrade prunelens"]),
    # configs
    "YAML nested 500 deep": (
        lambda d, c: c.write_text("a: " + "[" * 500 + "]" * 500),
        ["prune", "{config}"], ["nested too deeply"]),
    "empty config file": (lambda d, c: c.write_text("# nothing\n"), ["run", "{config}"], ["is empty"]),
    "epochs: true": (
        lambda d, c: _edit_yaml(c, "train.epochs", True),
        ["prune", "{config}"], ["train.epochs: must be a whole number, not True"]),
    "a float count of rounds": (
        lambda d, c: _edit_yaml(c, "prune.rounds", 2.0),
        ["prune", "{config}"], ["prune.rounds: must be a whole number, not 2.0"]),
    "an infinite learning rate": (
        lambda d, c: c.write_text(c.read_text().replace("lr: 0.05", "lr: .inf")),
        ["prune", "{config}"], ["train.lr: Input should be a finite number"]),
    "a bool model option": (
        lambda d, c: _edit_yaml(c, "model.blocks", True),
        ["prune", "{config}"], ["option 'blocks' of model 'small_resnet' must be a whole number"]),
    # command-line options
    "report --n-boot 0": (None, ["report", "{run}", "--n-boot", "0"], ["--n-boot", "at least 100"]),
    "report --n-boot -5": (None, ["report", "{run}", "--n-boot", "-5"], ["--n-boot", "at least 100"]),
    "report --confidence 2": (None, ["report", "{run}", "--confidence", "2"], ["between 0 and 1"]),
    "evaluate --levels x": (None, ["evaluate", "{run}", "--levels", "1,x"], ["comma-separated"]),
    "an unknown command": (None, ["prunee"], ["invalid choice: 'prunee'"]),
}


def _sha(path: Path) -> str:
    from prunelens.io import sha256_file
    return sha256_file(path)


@pytest.mark.parametrize("case", list(FAULTS))
def test_fault_is_one_line_exit_2_and_nothing_is_lost(case, run, tmp_path, capsys):
    run_dir, config = run
    damage, argv, phrases = FAULTS[case]
    if damage is not None:
        damage(run_dir, config)
    before = _files(run_dir)
    code, err = _cli(capsys, *[a.format(run=run_dir, config=config, tmp=tmp_path) for a in argv])
    _one_line_error(code, err, *phrases)
    assert _files(run_dir) == before  # nothing written, nothing lost
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


# ---- identity ---------------------------------------------------------------------------------------
def test_identity_is_the_effective_config(tmp_path):
    cfg = resolve_runs(tiny_config_dict(tmp_path))[0]
    identity = cfg.identity()
    # model and dataset options with their defaults resolved; location and runtime settings out
    assert identity["model"]["stem_stride"] == 2 and identity["model"]["blocks"] == 1
    assert identity["data"]["n_test"] == 64 and "root" not in identity["data"]
    assert "device" not in identity["train"] and "evaluate" not in identity
    moved = resolve_runs(tiny_config_dict(tmp_path / "x", train={"device": "cpu", "num_workers": 2},
                                          evaluate={"batch_size": 3}))[0]
    assert moved.identity_hash() == cfg.identity_hash()
    other_seed = resolve_runs(tiny_config_dict(tmp_path, seed=1))[0]
    assert other_seed.identity_hash() != cfg.identity_hash()
    assert other_seed.experiment_hash() == cfg.experiment_hash()
    other_model = dict(tiny_config_dict(tmp_path), model={"name": "small_vit"})
    assert resolve_runs(other_model)[0].experiment_hash() != cfg.experiment_hash()


def test_an_option_added_with_its_default_keeps_the_identity(run, capsys):
    """A run folder written before an option existed lacks its key: today's default stands in."""
    run_dir, config = run
    before = _files(run_dir)
    _edit_json(run_dir / "pool.json", lambda i: (i["config"]["train"].pop("nesterov"),
                                                 i["config"]["model"].pop("stem_stride")), reseal=True)
    assert _cli(capsys, "prune", config)[0] == 0
    assert _files(run_dir).keys() == before.keys()
    assert {k: v for k, v in _files(run_dir).items() if k.startswith("level_")} == \
        {k: v for k, v in before.items() if k.startswith("level_")}  # nothing retrained


def test_an_option_this_version_lacks_is_left_out_with_a_note(run, capsys):
    run_dir, _ = run
    _edit_json(run_dir / "pool.json", _set("config.train.ancient_option", 3), reseal=True)
    code, err = _cli(capsys, "pool", "show", run_dir)
    assert code == 0 and "note: " in err and "train.ancient_option" in err
    assert _cli(capsys, "evaluate", run_dir, "--suite", "accuracy")[0] == 0
    assert _cli(capsys, "report", run_dir)[0] == 0


def test_a_changed_default_is_a_different_identity_and_the_recorded_value_is_used(run, capsys,
                                                                                    monkeypatch):
    """The run folder records resolved values: a later default does not rebuild another model."""
    from prunelens.models.builtins import SmallResNet

    run_dir, config = run
    widths, blocks, _ = SmallResNet.__init__.__defaults__
    monkeypatch.setattr(SmallResNet.__init__, "__defaults__", (widths, blocks, 1))  # stem_stride 2 → 1
    code, err = _cli(capsys, "prune", config)
    _one_line_error(code, err, "model.stem_stride: 2 in the run folder vs 1 now")
    model = RunFolder(run_dir).level(1).load_model()
    assert model.conv1.stride == (2, 2)  # the recorded architecture, not today's default


def test_a_dataset_default_that_changed_since_is_a_difference(run, capsys):
    """pool.json records every dataset option, defaults included: a run folder written when a
    default was different (simulated: its recorded value differs from today's default, and the
    config does not set the option) is not taken for today's config."""
    run_dir, config = run
    raw = yaml.safe_load(config.read_text())
    raw["data"].pop("n_val")                                 # the config leaves it to the default
    config.write_text(yaml.safe_dump(raw))
    default = resolve_runs(raw)[0].data.options.n_val
    _edit_json(run_dir / "pool.json", _set("config.data.n_val", default + 7), reseal=True)
    code, err = _cli(capsys, "prune", config)
    _one_line_error(code, err, f"data.n_val: {default + 7} in the run folder vs {default} now")
    assert RunFolder(run_dir).config.data.options.n_val == default + 7  # readers use the recorded value


def test_a_different_config_names_every_difference(run, capsys):
    run_dir, config = run
    config.write_text(config.read_text().replace("lr: 0.05", "lr: 0.01").replace("rate: 0.5", "rate: 0.4"))
    code, err = _cli(capsys, "prune", config)
    _one_line_error(code, err, "prune.rate: 0.5 in the run folder vs 0.4 now",
                    "train.lr: 0.05 in the run folder vs 0.01 now", "--force")


def test_pool_json_records_its_format_and_hashes(run):
    run_dir, _ = run
    info = json.loads((run_dir / "pool.json").read_text())
    assert info["format"] == FORMAT
    folder = RunFolder(run_dir)
    assert {e["dir"]: e["level_json_sha256"] for e in info["levels"]} == \
        {lv.path.name: _sha(lv.path / "level.json") for lv in folder.levels}


def test_the_identity_hash_survives_an_added_option(run):
    """The hash covers values beyond the defaults: a key an older version did not write (its
    option added since, at its default) leaves it unchanged; a value set away from it does not."""
    run_dir, _ = run
    before = RunFolder(run_dir).identity_hash
    _edit_json(run_dir / "pool.json", lambda i: i["config"]["train"].pop("nesterov"), reseal=True)
    assert RunFolder(run_dir).identity_hash == before
    _edit_json(run_dir / "pool.json", _set("config.train.nesterov", True), reseal=True)
    assert RunFolder(run_dir).identity_hash != before


def test_a_format_1_run_folder_is_upgraded_and_then_read(tmp_path, capsys):
    run_dir = tmp_path / "legacy-v1"
    shutil.copytree(FIXTURE_V1, run_dir)
    code, err = _cli(capsys, "pool", "show", run_dir)
    _one_line_error(code, err, "pool format 1", f"prunelens pool upgrade {run_dir}")
    assert _cli(capsys, "pool", "upgrade", run_dir)[0] == 0
    folder = RunFolder(run_dir)
    assert [lv.index for lv in folder.levels] == [0, 1, 2] and folder.complete
    assert folder.config.train.lr == 0.1 and folder.config.model.options["widths"] == [8]
    frame = load_results(run_dir)  # results computed before the upgrade still belong to their levels
    assert sorted(frame["level"].unique()) == [0, 1, 2]
    assert _cli(capsys, "report", run_dir)[0] == 0
    upgraded = (run_dir / "pool.json").read_bytes()
    assert _cli(capsys, "pool", "upgrade", run_dir)[0] == 0   # already upgraded: nothing to do
    assert (run_dir / "pool.json").read_bytes() == upgraded


def test_a_format_1_level_that_fails_its_hash_is_not_upgraded(tmp_path, capsys):
    run_dir = tmp_path / "legacy-v1"
    shutil.copytree(FIXTURE_V1, run_dir)
    with open(run_dir / "level_01" / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    code, err = _cli(capsys, "pool", "upgrade", run_dir)
    _one_line_error(code, err, "level_01/model.safetensors does not match")
    assert "format" not in json.loads((run_dir / "pool.json").read_text())


# ---- machine faults ------------------------------------------------------------------------------------
def _private_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mounts = pytest.mark.skipif(not _private_mounts(), reason="this machine cannot make private "
                                  "mounts (unshare -m): the injected variants of these faults run instead")


def _cli_in_mount_namespace(setup: str, *argv) -> subprocess.CompletedProcess:
    command = " ".join([sys.executable, "-m", "prunelens", *[f"'{a}'" for a in argv]])
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run(["unshare", "-m", "sh", "-c", f"{setup} && {command}"], capture_output=True,
                          text=True, env=env, timeout=300)


@needs_mounts
def test_a_full_disk_is_one_line_and_keeps_the_levels_written(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    raw = tiny_config_dict(disk, prune={"rounds": 3}, train={"epochs": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    # room for pool.json and about two levels of this model (each ~40 kB, its checkpoint more)
    result = _cli_in_mount_namespace(f"mount -t tmpfs -o size=100k tmpfs {disk}", "prune", tmp_path / "c.yaml")
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and "No space left on device" in err[0] and "re-run the same command" in err[0]


def test_an_injected_full_disk_is_one_line(run, capsys, monkeypatch):

    run_dir, config = run
    def full(*args, **kwargs):
        from safetensors import SafetensorError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr("prunelens.io.save_file", full)
    shutil.rmtree(run_dir / "level_02")  # to be rebuilt, on a disk that is full
    before = _files(run_dir)
    code, err = _cli(capsys, "prune", config)
    _one_line_error(code, err, "No space left on device", "re-run the same command")
    after = _files(run_dir)
    assert all(after.get(k) == v for k, v in before.items() if k.startswith("level_0"))
    assert not (run_dir / "level_02").exists()
    assert not any(name.endswith(".tmp") for name in after)


@needs_mounts
def test_a_read_only_run_folder_can_be_read(run, tmp_path):
    run_dir, _ = run
    read_only = f"mount --bind {run_dir} {run_dir} && mount -o remount,bind,ro {run_dir}"
    for argv in (["pool", "show", run_dir], ["results", run_dir],
                 ["evaluate", run_dir, "--suite", "accuracy"],  # everything up to date: reads only
                 ["report", run_dir, "-o", tmp_path / "elsewhere"]):
        result = _cli_in_mount_namespace(read_only, *argv)
        assert result.returncode == 0, (argv, result.stderr)
    result = _cli_in_mount_namespace(read_only, "evaluate", run_dir, "--suite", "accuracy", "--force")
    assert result.returncode == 2 and "cannot be written (Read-only file system)" in result.stderr
    assert result.stderr.count("\n") == 1
    result = _cli_in_mount_namespace(read_only, "report", run_dir)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "Read-only file system" in result.stderr and "-o" in result.stderr


def test_a_folder_one_may_not_write_is_one_line(run, capsys, monkeypatch):
    """Permission denied (as root, permissions do not apply: injected)."""
    run_dir, _ = run
    real = os.replace

    def denied(src, dst, *args, **kwargs):
        if "report" in str(dst):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", denied)
    code, err = _cli(capsys, "report", run_dir)
    _one_line_error(code, err, "Permission denied", "permissions")


def test_reading_takes_no_lock(run, capsys):
    """A reader never waits for or blocks a writer."""
    from prunelens.runfolder import RunLock

    run_dir, _ = run
    with RunLock(run_dir):
        assert _cli(capsys, "pool", "show", run_dir)[0] == 0
        assert _cli(capsys, "results", run_dir)[0] == 0
        assert _cli(capsys, "evaluate", run_dir, "--suite", "accuracy")[0] == 0  # up to date


# ---- data and training sanity -------------------------------------------------------------------------
def _image_folder(root: Path, classes: dict[str, list[str]]) -> None:
    from PIL import Image
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 12), (40 * i, 90, 10)).save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("val,phrase", [(["a", "c"], "missing b; extra c"), (["a"], "missing b")])
def test_train_and_val_classes_must_agree(tmp_path, capsys, val, phrase):
    _image_folder(tmp_path / "data", {"train": ["a", "b"], "val": val})
    raw = tiny_config_dict(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "data"),
                                           "train_crop_size": 8, "val_resize_size": 8,
                                           "val_crop_size": 8})
    for key in ("num_classes", "n_train", "n_val", "n_test", "texture_correlation", "image_size"):
        raw["data"].pop(key)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, err = _cli(capsys, "prune", tmp_path / "c.yaml")
    _one_line_error(code, err, "val split's classes differ from the train split's", phrase)
    assert not (tmp_path / "runs").exists()


def test_evaluation_data_with_other_classes_than_the_pool_is_refused(tmp_path, capsys):
    _image_folder(tmp_path / "data", {"train": ["a", "b"], "val": ["a", "b"]})
    _image_folder(tmp_path / "other", {"val": ["a", "c"]})
    raw = tiny_config_dict(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "data"),
                                           "train_crop_size": 8, "val_resize_size": 8,
                                           "val_crop_size": 8},
                           prune={"rounds": 1}, train={"epochs": 1, "batch_size": 2})
    for key in ("num_classes", "n_train", "n_val", "n_test", "texture_correlation", "image_size"):
        raw["data"].pop(key)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert _cli(capsys, "prune", tmp_path / "c.yaml")[0] == 0
    code, err = _cli(capsys, "evaluate", tmp_path / "runs" / "tiny", "--suite", "accuracy",
                     "--set", f"data.root={tmp_path / 'other'}")
    _one_line_error(code, err, "does not have the classes run tiny was trained on", "missing b; extra c")


def test_a_diverging_run_stops_with_a_clear_error_and_no_nan_level(tmp_path, capsys):
    raw = tiny_config_dict(tmp_path, train={"epochs": 1, "lr": 1e30, "momentum": 0.0})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, err = _cli(capsys, "prune", tmp_path / "c.yaml")
    _one_line_error(code, err, "training loss became", "lower train.lr", "another run name", "--force")
    info = json.loads((tmp_path / "runs" / "tiny" / "pool.json").read_text())
    assert info["levels"] == [] and not info["complete"]


def test_non_finite_weights_are_never_a_complete_level(tiny_config):
    from prunelens.errors import DivergedError
    from prunelens.models import create_model
    from prunelens.pruning.store import PoolWriter

    cfg = tiny_config()
    model = create_model("small_resnet", 4, widths=[8, 16])
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with PoolWriter(cfg.run_dir, cfg, 4).open() as writer:
        with pytest.raises(DivergedError, match="non-finite weights"):
            writer.write_level(0, model, {}, {"sparsity": 0.0})
    assert not (cfg.run_dir / "level_00").exists()


def test_a_worker_error_keeps_only_its_message():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DataError("cannot read image file /data/x.JPEG (truncated); replace or remove it")

    with pytest.raises(DataError) as caught:
        list(torch.utils.data.DataLoader(Broken(), num_workers=1))
    assert str(caught.value) == ("cannot read image file /data/x.JPEG (truncated); replace or remove "
                                 "it (in DataLoader worker process 0)")


# ---- what is repaired, and said --------------------------------------------------------------------
def test_a_level_that_fails_its_hash_is_rebuilt_with_a_line_saying_so(run, capsys):
    run_dir, config = run
    before = _files(run_dir)
    with open(run_dir / "level_01" / "masks.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x00")
    code = main(["prune", str(config)])
    out = capsys.readouterr().out
    assert code == 0
    assert "level_01 failed its check" in out and "set aside" in out and "rebuilt" in out
    after = _files(run_dir)
    assert after["level_01/masks.safetensors"] == before["level_01/masks.safetensors"]  # CPU: identical
    assert any(name.startswith("stale/level_02") for name in after)


def test_leftovers_are_cleaned_by_the_next_successful_run(run, capsys):
    run_dir, config = run
    (run_dir / ".level_07.tmp").mkdir()
    (run_dir / "stale" / "level_03.partial-20260101-000000").mkdir(parents=True)
    (run_dir / ".pool.json.x.tmp").write_text("half")
    report_parent = run_dir
    (report_parent / ".report.build-abc").mkdir()
    (report_parent / ".report.old-abc").mkdir()
    assert main(["run", str(config)]) == 0
    left = [p.name for p in run_dir.rglob("*") if ".tmp" in p.name or ".partial-" in p.name
            or (".report." in p.name and p.suffix != ".lock")]
    assert left == []


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_honour_the_umask(tmp_path, capsys, umask, file_mode, dir_mode):
    raw = tiny_config_dict(tmp_path, prune={"rounds": 1}, train={"epochs": 1},
                           evaluate={"suites": ["accuracy"]})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    old = os.umask(umask)
    try:
        assert main(["run", str(tmp_path / "c.yaml")]) == 0
    finally:
        os.umask(old)
    run_dir = tmp_path / "runs" / "tiny"
    for path in [run_dir / "pool.json", run_dir / "level_01" / "model.safetensors",
                 run_dir / "results" / "accuracy" / "level_01.csv", run_dir / "report" / "index.html"]:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    for path in (run_dir / "level_01", run_dir / "report", run_dir / "report" / "figures"):
        assert stat.S_IMODE(path.stat().st_mode) == dir_mode, path
