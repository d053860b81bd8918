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

import pandas as pd
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
    "level.json edited after its report was built (report into the same folder)": (
        lambda d, c: (main(["report", str(d)]),
                      _edit_json(d / "level_02" / "level.json", _set("metrics.test_acc", 1.0))),
        ["report", "{run}"], ["level_02/level.json does not match"]),
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
    "a hash-valid level.json whose test_acc is text": (
        lambda d, c: _edit_level_json(d, 1, _set("metrics.test_acc", "high")),
        ["report", "{run}", "-o", "{tmp}/out"], ["level_01/level.json records metrics",
                                                 "not a mapping of metric names to numbers"]),
    "a hash-valid level.json whose sparsity is a list": (
        lambda d, c: _edit_level_json(d, 2, _set("sparsity", [0.5])),
        ["results", "{run}"], ["level_02/level.json records sparsity [0.5]"]),
    "a hash-valid copied level: level.json of another index": (
        lambda d, c: _edit_level_json(d, 2, _set("index", 1)),
        ["pool", "show", "{run}"], ["is the level.json of level 1, not of level 2", "copied"]),
    "a hash-valid level whose parent is another model": (
        lambda d, c: _edit_level_json(d, 2, _set("parent_model_sha256", "0" * 64)),
        ["pool", "show", "{run}"], ["level_02 was not pruned from level_01"]),
    "pool.json lists a level twice (resealed)": (
        lambda d, c: _edit_json(d / "pool.json", lambda i: i["levels"].append(dict(i["levels"][2])),
                                reseal=True),
        ["results", "{run}"], ["lists level 2 where level 3 belongs"]),
    "a 5000-digit integer in level.json": (
        lambda d, c: (d / "level_01" / "level.json").write_text('{"index": ' + "9" * 5000 + "}"),
        ["pool", "show", "{run}"], ["level_01/level.json is not readable JSON", "4300 digits"]),
    "a 5000-digit integer in pool.json": (
        lambda d, c: (d / "pool.json").write_text('{"format": ' + "9" * 5000 + "}"),
        ["evaluate", "{run}"], ["pool.json is not readable JSON", "4300 digits"]),
    "NaN weights with their hashes recomputed": (
        lambda d, c: _nan_weights(d, 2), ["explain", "{run}", "--images", "test-00000", "--levels", "2"],
        ["level_02/model.safetensors holds non-finite weights"]),
    "NaN weights in a middle level (the chain breaks)": (
        lambda d, c: _nan_weights(d, 1), ["results", "{run}"], ["level_02 was not pruned from level_01"]),
    "the same run twice (results)": (None, ["results", "{run}", "{run}"], ["is given twice"]),
    "the same run twice (report)": (None, ["report", "{run}", "{run}", "-o", "{tmp}/out"],
                                    ["is given twice"]),
    "a damaged skipped.json": (
        lambda d, c: (d / "results" / "accuracy" / "skipped.json").write_text('{"reason": [1]}'),
        ["report", "{run}", "-o", "{tmp}/out"], ["accuracy/skipped.json records no reason"]),
    "a damaged not_applicable.json": (
        lambda d, c: (d / "results" / "accuracy" / "not_applicable.json").write_text("{"),
        ["report", "{run}", "-o", "{tmp}/out"], ["accuracy/not_applicable.json is not readable JSON"]),
    "an empty pool.json (prune)": (
        lambda d, c: (d / "pool.json").write_text(""),
        ["prune", "{config}"], ["pool.json is not readable JSON", "use --force to move it aside"]),
    "options a later version wrote (prune)": (
        lambda d, c: _edit_json(d / "pool.json", lambda i: (i["config"]["train"].update(
            ema_of_the_future=True), i["versions"].update(prunelens="0.3.0"), i.update(complete=False)),
                                reseal=True),
        ["prune", "{config}"], ["records option(s) this prunelens", "train.ema_of_the_future",
                                "written by prunelens 0.3.0", "--ignore-unknown-options"]),
    "a random-bytes .pth as weights": (
        lambda d, c: (d.parent / "w.pth").write_bytes(bytes(range(256)) * 8),
        ["prune", "{config}", "--set", "model.weights={run}/../w.pth"],
        ["it is not a safetensors or torch file, or it is damaged"]),
    # configs: every number is strict
    "lr: true": (lambda d, c: _edit_yaml(c, "train.lr", True),
                 ["prune", "{config}"], ["train.lr: must be a number, not True"]),
    "--set prune.rate=true": (None, ["prune", "{config}", "--set", "prune.rate=true"],
                              ["prune.rate: must be a number, not True"]),
    "--set seed beyond 64 bits": (None, ["prune", "{config}", "--set", "seed=18446744073709551616"],
                                  ["seed: must be between 0 and 2147483647 (got 18446744073709551616)"]),
    "a YAML integer of 5000 digits": (
        lambda d, c: c.write_text(c.read_text().replace("seed: 0", "seed: " + "9" * 5000)),
        ["prune", "{config}"], ["holds a value prunelens cannot read", "4300 digits"]),
    "a boolean in a list of numbers": (None, ["prune", "{config}", "--set", "train.milestones=[true, 2]"],
                                       ["train.milestones: each item must be a whole number, not True"]),
    "a bool float model option": (None, ["config", "{config}", "--set", "model={{name: small_vit, dropout: true}}"],
                                  ["option 'dropout' of model 'small_vit' must be a number, not True"]),
    # command-line options
    "report --n-boot 100000000": (None, ["report", "{run}", "--n-boot", "100000000"], ["at most 100000"]),
    "explain --device bogus": (None, ["explain", "{run}", "--images", "test-00000", "--device", "bogus"],
                               ["'bogus' is not a device"]),
    "explain --methods foo": (None, ["explain", "{run}", "--images", "test-00000", "--methods", "foo"],
                              ["unknown attribution method(s) foo", "gradcam"]),
    "report --n-boot 0": (None, ["report", "{run}", "--n-boot", "0"], ["--n-boot", "at least 100"]),
    "report --n-boot -5": (None, ["report", "{run}", "--n-boot", "-5"], ["--n-boot", "at least 100"]),
    "report --confidence 2": (None, ["report", "{run}", "--confidence", "2"], ["between 0 and 1"]),
    "evaluate --levels x": (None, ["evaluate", "{run}", "--levels", "1,x"], ["comma-separated"]),
    "an unknown command": (None, ["prunee"], ["invalid choice: 'prunee'"]),
}


def _edit_level_json(run_dir: Path, index: int, change) -> None:
    """Edit level_XX/level.json and record its new sha256 in a resealed pool.json (as someone who
    knows the format would)."""
    path = run_dir / f"level_{index:02d}" / "level.json"
    _edit_json(path, change)
    _edit_json(run_dir / "pool.json", lambda i: i["levels"][index].update(level_json_sha256=_sha(path)),
               reseal=True)


def _nan_weights(run_dir: Path, index: int) -> None:
    from prunelens.io import atomic_save_tensors, load_tensors
    model = run_dir / f"level_{index:02d}" / "model.safetensors"
    state = load_tensors(model)
    state["fc.weight"][0, 0] = float("nan")
    atomic_save_tensors(model, state)
    _edit_level_json(run_dir, index, lambda i: i["files"].update({"model.safetensors": _sha(model)}))


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


# ---- faults a command repairs or refuses, with what it must then hold --------------------------------
def _levels_listed(run_dir: Path) -> list[int]:
    return [e["index"] for e in json.loads((run_dir / "pool.json").read_text())["levels"]]


def _make_incomplete(run_dir: Path, keep: int) -> None:
    """The pool as it was before level ``keep`` was written (pool.json sealed, incomplete)."""
    for index in range(keep, 3):
        shutil.rmtree(run_dir / f"level_{index:02d}")
    _edit_json(run_dir / "pool.json", lambda i: i.update(levels=i["levels"][:keep], complete=False,
                                                         stop_reason=None), reseal=True)


def _copy_level(run_dir: Path, source: int, target: int, reindex: bool = False) -> None:
    shutil.copytree(run_dir / f"level_{source:02d}", run_dir / f"level_{target:02d}")
    if reindex:  # someone who knows the format renames the copy, files untouched
        _edit_json(run_dir / f"level_{target:02d}" / "level.json", _set("index", target))


def _model_sha(run_dir: Path, index: int) -> str:
    return json.loads((run_dir / f"level_{index:02d}" / "level.json").read_text())["files"]["model.safetensors"]


def _parent(run_dir: Path, index: int) -> str | None:
    return json.loads((run_dir / f"level_{index:02d}" / "level.json").read_text()).get("parent_model_sha256")


def _check_rebuilt_from_chain(run_dir: Path) -> None:
    assert _levels_listed(run_dir) == [0, 1, 2] and RunFolder(run_dir).complete
    for index in (1, 2):
        assert _parent(run_dir, index) == _model_sha(run_dir, index - 1)
    assert any(p.name.startswith("level_02-") for p in (run_dir / "stale").iterdir())


def _check_summary(run_dir: Path) -> None:
    summary = run_dir / "results" / "summary.csv"
    assert summary.is_file()
    text = summary.read_text()
    assert "accuracy" in text and ",2," in text  # every level summarised


def _rewrite_result_without_summary(run_dir: Path) -> None:
    """What kill -9 of evaluate right after a level's sidecar leaves: a result evaluate takes as up
    to date (same options, inputs and level), and a summary that does not cover it."""
    from prunelens.results import Record, write_level
    side = json.loads((run_dir / "results" / "accuracy" / "level_01.json").read_text())
    meta = {k: side[k] for k in ("options", "inputs", "level_sha256", "wall_time_s")}
    write_level(run_dir, "accuracy", 1, [Record("accuracy", "accuracy", 0.0, dataset="test", item="x")],
                meta)


def _check_summary_covers_the_new_result(run_dir: Path) -> None:
    covers = json.loads((run_dir / "results" / "summary.json").read_text())["covers"]
    assert covers["accuracy/level_01.csv"] == _sha(run_dir / "results" / "accuracy" / "level_01.csv")
    summary = pd.read_csv(run_dir / "results" / "summary.csv")
    level_1 = summary[(summary["level"] == 1) & (summary["metric"] == "accuracy")]
    assert level_1["n"].tolist() == [1] and level_1["mean"].tolist() == [0.0]


def _check_unknown_options_recorded(run_dir: Path) -> None:
    info = json.loads((run_dir / "pool.json").read_text())
    assert info["unknown_options"] == {"train.ema_of_the_future": True}
    assert {"prunelens": "0.3.0"}.items() <= info["versions_before"][0].items()
    assert RunFolder(run_dir).complete


def _later_version_options(d: Path, c: Path) -> None:
    _make_incomplete(d, 2)
    _edit_json(d / "pool.json", lambda i: (i["config"]["train"].update(ema_of_the_future=True),
                                           i["versions"].update(prunelens="0.3.0")), reseal=True)


REPAIRS = {
    # case: (damage, argv, phrases the output holds, what the run folder holds afterwards)
    "a copied level folder in a complete pool": (
        lambda d, c: _copy_level(d, 2, 3), ["prune", "{config}"],
        ["level_03 failed its check", "level.json of level 2, not of level 3", "set aside",
         "nothing to do"],
        lambda d: (_levels_listed(d) == [0, 1, 2]) or pytest.fail("pool.json changed")),
    "a copied level folder in an incomplete pool": (
        lambda d, c: (_make_incomplete(d, 2), _copy_level(d, 1, 2)), ["prune", "{config}"],
        ["level_02 failed its check", "level.json of level 1, not of level 2"],
        _check_rebuilt_from_chain),
    "a copied level folder renumbered by hand": (
        lambda d, c: (_make_incomplete(d, 2), _copy_level(d, 1, 2, reindex=True)), ["prune", "{config}"],
        ["level_02 failed its check", "was not pruned from level_01"], _check_rebuilt_from_chain),
    "an unlisted level after the last": (
        lambda d, c: _copy_level(d, 2, 7), ["prune", "{config}"],
        ["level_07 does not continue the levels before it; set aside"],
        lambda d: (_levels_listed(d) == [0, 1, 2]) or pytest.fail("pool.json changed")),
    "summary.csv deleted": (
        lambda d, c: (d / "results" / "summary.csv").unlink(), ["evaluate", "{run}"], [],
        _check_summary),
    "evaluate killed after a sidecar": (
        lambda d, c: _rewrite_result_without_summary(d), ["evaluate", "{run}"], [],
        _check_summary_covers_the_new_result),
    "options a later version wrote, with the flag": (
        _later_version_options, ["prune", "{config}", "--ignore-unknown-options"],
        ["continuing without option(s) train.ema_of_the_future"], _check_unknown_options_recorded),
    "options a later version wrote, in a complete pool": (
        lambda d, c: _edit_json(d / "pool.json", lambda i: i["config"]["train"].update(
            ema_of_the_future=True), reseal=True), ["prune", "{config}"],
        ["nothing to do", "no longer has, left out: train.ema_of_the_future"],
        lambda d: "ema_of_the_future" in (d / "pool.json").read_text() or pytest.fail("record lost")),
    "NaN weights with their hashes recomputed, on resume": (
        lambda d, c: _nan_weights(d, 2), ["prune", "{config}"],
        ["level_02 failed its check", "holds non-finite weights", "set aside"],
        lambda d: (_levels_listed(d) == [0, 1, 2] and RunFolder(d).level(2).state_dict() is not None)
        or pytest.fail()),
    "a seed beyond 32 bits that an earlier version allowed": (
        lambda d, c: _edit_json(d / "pool.json", _set("config.seed", 2**40), reseal=True),
        ["pool", "show", "{run}"], [], lambda d: RunFolder(d).config.seed == 2**40 or pytest.fail()),
    "an empty pool.json with --force": (
        lambda d, c: (d / "pool.json").write_text(""), ["prune", "{config}", "--force"],
        ["--force: moved the previous run to"],
        lambda d: RunFolder(d).complete and list(d.parent.glob("tiny.replaced-*")) or pytest.fail()),
}


@pytest.mark.parametrize("case", list(REPAIRS))
def test_a_repaired_fault_says_what_it_did(case, run, capsys):
    run_dir, config = run
    damage, argv, phrases, check = REPAIRS[case]
    damage(run_dir, config)
    code = main([a.format(run=run_dir, config=config) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in out + err, (phrase, out, err)
    check(run_dir)


def test_a_rerun_with_nothing_to_do_rewrites_nothing_and_says_so(run, capsys):
    run_dir, config = run
    assert main(["run", str(config)]) == 0  # the report of this copy, then nothing is left to do
    capsys.readouterr()
    def written():  # every file but the locks, which each writer takes anew
        return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    before = written()
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    assert "pool complete, every level verified: nothing to do" in out
    assert "every result is up to date" in out
    assert "is up to date (same runs, results and options): not rebuilt" in out
    assert written() == before


def test_a_seed_out_of_range_leaves_no_run_folder(tmp_path, capsys):
    raw = tiny_config_dict(tmp_path, seed=2**64)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, err = _cli(capsys, "prune", tmp_path / "c.yaml")
    _one_line_error(code, err, "seed: must be between 0 and 2147483647")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["tiny\n", "../x", ".hidden", "a/b", ""])
def test_a_name_read_from_a_run_folder_is_matched_whole(name):
    from prunelens.errors import PoolError
    from prunelens.runfolder import check_name
    with pytest.raises(PoolError, match="not a plain name"):
        check_name(name, "run name")


def _v1(change):
    def damage(run_dir: Path) -> None:
        change(run_dir)
    return damage


FORMAT_1_FAULTS = {
    "levels is a number": (lambda d: _edit_json(d / "pool.json", _set("levels", 5)),
                           ["lists its levels as 5, not as a list"]),
    "levels are names": (lambda d: _edit_json(d / "pool.json", _set("levels", ["level_00"])),
                         ["malformed level entry level_00"]),
    "level.json files is a list": (lambda d: _edit_json(d / "level_01" / "level.json", _set("files", [1, 2])),
                                   ["level_01/level.json records files [1, 2]"]),
    "a name that is a path": (lambda d: _edit_json(d / "pool.json", _set("name", "../../x")),
                              ["run name '../../x'", "not a plain name"]),
    "a symbolic link": (lambda d: (d / "level_00" / "x.safetensors").symlink_to("/etc/hostname"),
                        ["holds symbolic links"]),
    "no num_classes": (lambda d: _edit_json(d / "pool.json", lambda i: i.pop("num_classes", None)),
                       ["records no number of classes", "num_classes", "pool upgrade"]),
    "a 5000-digit level index": (
        lambda d: (d / "level_00" / "level.json").write_text('{"index": ' + "7" * 5000 + "}"),
        ["is not readable JSON"]),
}


def test_pool_upgrade_keeps_options_this_version_does_not_know(tmp_path, capsys):
    run_dir = tmp_path / "legacy-v1"
    shutil.copytree(FIXTURE_V1, run_dir)
    _edit_json(run_dir / "pool.json", lambda i: i["config"].setdefault("train", {}).update(ema_of_the_future=3))
    code = main(["pool", "upgrade", str(run_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "kept under unknown_options: train.ema_of_the_future" in out
    assert json.loads((run_dir / "pool.json").read_text())["unknown_options"] == {"train.ema_of_the_future": 3}


def test_a_report_removes_what_an_earlier_version_left_beside_its_folder(run, capsys):
    run_dir, _ = run
    for name in (".report.build-x", ".report.old-y"):
        (run_dir / name).mkdir()
    (run_dir / ".report.lock").write_text("1")
    (run_dir / "results" / "accuracy" / "level_00.csv").unlink()  # something to rebuild
    assert main(["evaluate", str(run_dir)]) == 0 and main(["report", str(run_dir)]) == 0
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".report")]


@pytest.mark.parametrize("case", list(FORMAT_1_FAULTS))
def test_pool_upgrade_refuses_a_damaged_format_1_folder(case, tmp_path, capsys):
    run_dir = tmp_path / "legacy-v1"
    shutil.copytree(FIXTURE_V1, run_dir)
    damage, phrases = FORMAT_1_FAULTS[case]
    damage(run_dir)
    before = _files(run_dir)
    code, err = _cli(capsys, "pool", "upgrade", run_dir)
    _one_line_error(code, err, *phrases)
    assert _files(run_dir) == before


def test_a_full_disk_during_evaluate_and_report_names_the_file(run, tmp_path, capsys, monkeypatch):
    """write() on a full disk raises ENOSPC without a file name; the message names the file."""
    run_dir, _ = run

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("prunelens.io.os.fsync", full)
    code, err = _cli(capsys, "evaluate", run_dir, "--force")
    _one_line_error(code, err, "No space left on device", f"{run_dir}/results/accuracy/level_00.csv")
    code, err = _cli(capsys, "report", run_dir, "-o", tmp_path / "rep")
    _one_line_error(code, err, "No space left on device", f"{tmp_path}/rep/")


def test_safetensors_bytes_depend_only_on_their_content(tmp_path):
    """The writer orders a metadata map differently on every call; written through prunelens.io the
    same content gives the same bytes (so the same sha256) and reads back the same."""
    from safetensors import safe_open

    from prunelens.io import atomic_save_tensors, load_tensors, sha256_file

    meta = {f"key{i}": json.dumps([i, "é", 'quote"d']) for i in range(12)}
    tensors = {"b": torch.arange(3.0), "a": torch.zeros(2, 2)}
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        atomic_save_tensors(path, tensors, metadata=meta)
    assert len({sha256_file(p) for p in paths}) == 1
    with safe_open(str(paths[0]), framework="pt") as f:
        assert f.metadata() == meta
    assert all(torch.equal(load_tensors(paths[0])[k], v) for k, v in tensors.items())


def test_an_image_too_large_to_decode_is_one_line(tmp_path, capsys):
    """A PNG whose header claims 20000 x 20000 pixels: Pillow refuses it as a decompression bomb."""
    import struct
    import zlib

    from PIL import Image
    _image_folder(tmp_path / "data", {"train": ["a", "b"], "val": ["a", "b"]})
    victim = tmp_path / "data" / "train" / "a" / "0.png"
    Image.new("L", (1, 1)).save(victim)
    raw = bytearray(victim.read_bytes())
    ihdr = raw[12:29]  # b"IHDR" + width, height, depth, colour, compression, filter, interlace
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    victim.write_bytes(bytes(raw))
    raw = tiny_config_dict(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "data"),
                                           "train_crop_size": 8, "val_resize_size": 8, "val_crop_size": 8},
                           train={"epochs": 1})
    for key in ("image_size", "num_classes", "n_train", "n_val", "n_test", "texture_correlation"):
        raw["data"].pop(key)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, err = _cli(capsys, "prune", tmp_path / "c.yaml")
    _one_line_error(code, err, f"image file {victim} is too large to decode safely", "downscale it")


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
    (run_dir / "report" / ".build-abc").mkdir()
    (run_dir / "report" / ".old-abc").mkdir()
    (run_dir / "results" / "accuracy" / "level_00.csv").unlink()  # the report has something to do
    assert main(["run", str(config)]) == 0
    left = [p.name for p in run_dir.rglob("*") if ".tmp" in p.name or ".partial-" in p.name
            or p.name.startswith((".build-", ".old-"))]
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


def test_a_periodic_validation_record_must_be_a_curve_and_its_minimum():
    from prunelens.runfolder import _is_validation_record

    good = {"split": "test", "n_images": 10, "every_steps": 2, "steps": [0, 2, 4],
            "errors": [0.9, 0.5, 0.6], "min_error": 0.5, "min_error_step": 2}
    assert _is_validation_record(good)
    for bad in ({"every_steps": 0}, {"steps": [0, 4, 2]}, {"steps": [0, 2, 2]},
                {"errors": [1.0, 1.0, 1.0], "min_error": True, "min_error_step": 0},
                {"min_error": 0.6}, {"min_error_step": 4}, {"split": "train"}):
        assert not _is_validation_record({**good, **bad}), bad
