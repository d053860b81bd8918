"""Configs and the CLI: every mistake a user can make is one clear line and exit code 2."""
from __future__ import annotations

import pytest
import yaml

from prunelens.cli import main
from prunelens.config import resolve_runs
from prunelens.suite import load_configs


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _write(tmp_path, raw, name="c.yaml"):
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_embedded_default_has_a_cnn_a_vit_and_an_fcn():
    runs = load_configs()
    assert [r.model.name for r in runs] == ["small_resnet", "small_vit", "fcn"]
    assert all(r.data.name == "synthetic" for r in runs)
    assert runs[1].train.optimizer == "adamw" and runs[0].train.optimizer == "sgd"
    assert len({r.identity_hash() for r in runs}) == 3
    # the FCN: Pellegrini & Biroli's figures in the report, its own suites only
    fcn = runs[2]
    assert fcn.prune.scope == "layerwise" and fcn.evaluate.suites == ["accuracy", "connectivity"]
    assert runs[0].evaluate.suites is None  # the CNN and the ViT: every suite


def test_overrides_apply_to_every_run_and_parse_yaml_values():
    runs = load_configs(None, ["prune.rate=0.3", "train.milestones=[1, 2]"])
    assert all(r.prune.rate == 0.3 and r.train.milestones == [1, 2] for r in runs)


def test_identity_ignores_evaluation_and_runtime_settings():
    base = resolve_runs({"name": "a"})[0]
    same = resolve_runs({"name": "b", "output_dir": "elsewhere", "train": {"device": "cpu"},
                         "evaluate": {"batch_size": 8}})[0]
    other = resolve_runs({"name": "a", "prune": {"rate": 0.3}})[0]
    assert base.identity_hash() == same.identity_hash() != other.identity_hash()


BAD_CONFIGS = [
    ({"prune": {"rat": 0.3}}, "unknown key 'prune.rat' (did you mean 'rate'?)"),
    ({"prune": {"rate": 1.5}}, "prune.rate: Input should be less than 1"),
    ({"prune": {"rate": "fast"}}, "prune.rate: Input should be a valid number"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"prune": {"scope": "local"}}, "prune.scope: Input should be 'global' or 'layerwise'"),
    ({"model": {"name": "resnet7"}}, "unknown model 'resnet7'; available: fcn, lenet5, resnet18"),
    ({"model": {"name": "fcn", "depth": 3}}, "model 'fcn' has no option 'depth'"),
    ({"data": {"name": "mnist2"}}, "unknown dataset 'mnist2' (data.name); available:"),
    ({"data": {"name": "synthetic", "image_size": 8}}, "data.image_size: Input should be greater than or equal to 16"),
    ({"data": {"name": "synthetic", "colour": True}}, "unknown key 'data.colour'"),
    ({"data": {"name": "imagenet", "root": "/no/such/folder"}}, "data.root: dataset folder '/no/such/folder' does not exist"),
    ({"evaluate": {"suites": ["lost"]}}, "unknown suite(s) ['lost']"),
    ({"evaluate": {"accuracy": {"splitt": "val"}}}, "unknown key 'evaluate.accuracy.splitt'"),
    ({"name": "../escape"}, "name: String should match pattern"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "run names must differ"),
    ({"runs": "a"}, "runs: expected a non-empty list"),
    ({"prune": {"schedule": "one_shot", "retrain": "rewind"}}, "rewinding (a replay from rewind_step) cannot match"),
    ({"train": {"device": "gpu"}}, "train.device: 'gpu' is not a device: use auto, cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("raw,message", BAD_CONFIGS)
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, raw, message):
    code, out, err = _run_cli(capsys, "prune", str(_write(tmp_path, raw)))
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,message", [
    (["prune", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
    (["config", "--set", "prune.rate"], "--set expects KEY=VALUE"),
    (["config", "--set", "prune.rate.x=1"], "'rate' is not a section"),
    (["pool", "show", "/no/such/run"], "run folder /no/such/run does not exist"),
    (["results", "/no/such/run"], "run folder /no/such/run does not exist"),
    (["evaluate", "/no/such/run"], "run folder /no/such/run does not exist"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = _run_cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_clear_error(tmp_path, capsys):
    from conftest import tiny_config_dict
    raw = tiny_config_dict(tmp_path)
    raw["train"]["device"] = "cuda"
    code, _, err = _run_cli(capsys, "prune", str(_write(tmp_path, raw)))
    assert code == 2 and "device 'cuda' is not available on this machine" in err
    assert not (tmp_path / "runs").exists()


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    path = _write(tmp_path, "train:\n  epochs: [1,\nprune: {}\n")
    code, _, err = _run_cli(capsys, "prune", str(path))
    assert code == 2 and "is not valid YAML" in err and "line" in err


def test_non_utf8_config_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    code, _, err = _run_cli(capsys, "prune", str(path))
    assert code == 2 and "is not UTF-8 text" in err


def test_yaml_is_loaded_safely(tmp_path, capsys):
    path = _write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    code, _, err = _run_cli(capsys, "prune", str(path))
    assert code == 2 and "not valid YAML" in err


def test_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    from conftest import tiny_config_dict
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "notes.txt").write_text("mine")
    code, _, err = _run_cli(capsys, "prune", str(_write(tmp_path, tiny_config_dict(tmp_path))))
    assert code == 2 and "is not a prunelens run folder" in err
    assert (tmp_path / "runs" / "tiny" / "notes.txt").read_text() == "mine"


def test_prune_pool_show_results_and_evaluate_through_the_cli(tmp_path, capsys):
    from conftest import tiny_config_dict
    raw = tiny_config_dict(tmp_path, prune={"rounds": 1})
    code, out, _ = _run_cli(capsys, "prune", str(_write(tmp_path, raw)))
    assert code == 0 and "level" in out and "50.0%" in out
    run_dir = str(tmp_path / "runs" / "tiny")
    code, out, _ = _run_cli(capsys, "pool", "show", run_dir, "--layers")
    assert code == 0 and "layer1.0.conv1.weight" in out
    # the paper's count (Conv2d + Linear weights, train.py compute_sparsity_global) next to ours
    from torch import nn

    from prunelens.runfolder import RunFolder
    header, level1 = out.splitlines()[1].split(), out.splitlines()[3].split()
    assert header[:5] == ["level", "sparsity", "of", "all", "paper"] and level1[0] == "1"
    layers = [m for m in RunFolder(run_dir).levels[1].load_model().modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    paper = sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
    assert level1[3] == f"{paper:.1%}"
    code, out, _ = _run_cli(capsys, "evaluate", run_dir, "--suite", "accuracy")
    assert code == 0
    code, out, _ = _run_cli(capsys, "results", run_dir, "--csv")
    lines = out.strip().splitlines()
    assert lines[0].startswith("group,suite,metric,method,dataset,condition,level") and len(lines) == 3
    assert out == (tmp_path / "runs" / "tiny" / "results" / "summary.csv").read_text()  # one summary
    code, _, err = _run_cli(capsys, "evaluate", run_dir, "--set", "prune.rate=0.1")
    assert code == 2 and "only evaluate.*, data.root and data.decode overrides" in err
    figure = tmp_path / "fig2.png"
    code, out, _ = _run_cli(capsys, "explain", run_dir, "--images", "test-00000", "test-00003",
                            "--methods", "gradcam", "-o", str(figure))
    assert code == 0 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = _run_cli(capsys, "explain", run_dir, "--images", "test-99999")
    assert code == 2 and "unknown image id" in err


def test_config_prints_every_suites_resolved_options(tmp_path, capsys):
    """`prunelens config` shows each registered suite's options as it will run them: the file's
    values, the defaults, and the choices of the interpretability preset it leaves unset."""
    from pathlib import Path

    from prunelens.suite import available_suites

    paper = Path(__file__).resolve().parents[1] / "src/prunelens/configs/paper/resnet18_imagenet.yaml"
    code, out, _ = _run_cli(capsys, "config", str(paper), "--set", f"data.root={tmp_path}",
                            "--set", "evaluate.interpretability.rra_ties=index")
    assert code == 0
    evaluate = yaml.safe_load(out.split("\n# run folder")[0])["evaluate"]
    assert set(available_suites()) <= set(evaluate)
    rq1 = evaluate["interpretability"]
    assert (rq1["preset"], rq1["n_images"], rq1["ig_noise_samples"], rq1["ig_noise_std"]) == ("paper", 101, 2, 1.0)
    assert (rq1["normalize_maps"], rq1["blank_maps"], rq1["rra_ties"]) == ("minmax", "score", "index")
    assert rq1["ig_steps"] == 50 and evaluate["discovery"]["k_patches"] == 100  # defaults filled in
    # the default preset resolves to its own choices
    code, out, _ = _run_cli(capsys, "config", "--set", "evaluate.interpretability.n_images=7")
    rq1 = yaml.safe_load(out.split("\n# run folder")[0])["evaluate"]["interpretability"]
    assert (rq1["n_images"], rq1["ig_noise_samples"], rq1["rra_ties"], rq1["blank_maps"]) == (7, 0, "expected", "nan")
