"""The Cassano et al. configs (configs/paper/) run RQ1-RQ3 given the data roots: a missing or
placeholder VOC / model-vs-human folder is one message before any training, and a run on fixtures in
the real datasets' on-disk layout evaluates every question."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from prunelens.alignment import read_human_trials
from prunelens.cli import main

from _voc_fixture import make_vocdevkit
from test_voc_annotations import make_voc

PAPER = Path(__file__).resolve().parents[1] / "src/prunelens/configs/paper"
CONFIGS = sorted(PAPER.glob("*.yaml"))


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _voc(root: Path) -> Path:
    """VOCdevkit/VOC2012 with segmentation masks (RQ1) and detection boxes (RQ2)."""
    make_vocdevkit(root)
    segmentation = root / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    (segmentation / "trainval.txt").write_text("2007_000001\n2007_000002\n2008_000003\n")
    make_voc(root, "2012")
    return root


def _mvh(root: Path) -> Path:
    """The model-vs-human ``edge`` dataset (one observer's images), as the toolbox lays it out."""
    rng = np.random.default_rng(0)
    humans = read_human_trials("edge")
    for _, row in humans[humans["subj"] == humans["subj"].iloc[0]].iterrows():
        path = root / "edge" / row["category"] / row["image_id"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return root


def _imagenet(root: Path, n_classes: int = 1000) -> Path:
    """train/<wnid>/ and val/<wnid>/ with one tiny image each: 1000 classes in ImageNet's order."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for k in range(n_classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "a.JPEG")
    return root


# ---- the data roots: named in each config, checked before training ------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_each_paper_config_names_its_data_roots(config, tmp_path, capsys):
    """`prunelens config` shows where VOC and model-vs-human live, the flags set them, and
    discovery evaluates both VOC image sets of run_lost_pruning_iterations.sh."""
    code, out, _ = _cli(capsys, "config", config, "--set", f"data.root={tmp_path}")
    assert code == 0
    evaluate = yaml.safe_load(out.split("\n# run folder")[0])["evaluate"]
    assert {"interpretability", "discovery", "alignment"} <= set(evaluate["suites"])
    assert evaluate["interpretability"]["voc_root"] == evaluate["discovery"]["voc_root"] == "/path/to/VOC"
    assert evaluate["alignment"]["mvh_root"] == "/path/to/model-vs-human/datasets"
    assert evaluate["discovery"]["image_set"] == ["trainval", "val"]
    assert evaluate["discovery"]["voc_year"] == 2012 and evaluate["discovery"]["k_patches"] == 100
    assert evaluate["interpretability"]["swin_attention"] == "paper_first_window"
    code, out, _ = _cli(capsys, "config", config, "--set", f"data.root={tmp_path}",
                        "--voc-root", tmp_path / "voc", "--mvh-root", tmp_path / "mvh")
    evaluate = yaml.safe_load(out.split("\n# run folder")[0])["evaluate"]
    assert evaluate["interpretability"]["voc_root"] == evaluate["discovery"]["voc_root"] == str(tmp_path / "voc")
    assert evaluate["alignment"]["mvh_root"] == str(tmp_path / "mvh")


def test_placeholder_roots_stop_the_run_before_training(tmp_path, capsys):
    """Every missing folder in one message that names its option and flag; exit 2, no traceback,
    nothing written."""
    config = PAPER / "resnet18_imagenet.yaml"
    out_dir = tmp_path / "runs"
    code, _, err = _cli(capsys, "run", config, "--set", f"data.root={tmp_path}", "--set", f"output_dir={out_dir}")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ("evaluate.interpretability.voc_root, evaluate.discovery.voc_root: folder '/path/to/VOC' "
            "does not exist (give it with --voc-root DIR)") in err
    assert ("evaluate.alignment.mvh_root: folder '/path/to/model-vs-human/datasets' does not exist "
            "(give it with --mvh-root DIR)") in err
    assert not out_dir.exists()
    # a VOC folder in the wrong layout, and a model-vs-human folder without any of its datasets
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, "run", config, "--set", f"data.root={tmp_path}", "--set", f"output_dir={out_dir}",
                        "--voc-root", _voc(tmp_path / "voc"), "--mvh-root", tmp_path / "empty")
    assert code == 2 and "evaluate.alignment.mvh_root: none of the model-vs-human datasets" in err
    assert "--mvh-root DIR" in err and "voc_root" not in err
    assert not out_dir.exists()
    # one suite's root alone: the message names it and the --set form
    code, _, err = _cli(capsys, "run", config, "--set", f"data.root={tmp_path}", "--set", f"output_dir={out_dir}",
                        "--set", f"evaluate.discovery.voc_root={tmp_path / 'nowhere'}", "--set",
                        "evaluate.suites=[discovery]")
    assert code == 2 and err.startswith("prunelens: error: evaluate.discovery.voc_root: folder ")
    assert "--set evaluate.discovery.voc_root=DIR" in err


def test_a_missing_image_set_is_named(tmp_path, capsys):
    voc = _voc(tmp_path / "voc")
    code, _, err = _cli(capsys, "run", PAPER / "resnet18_imagenet.yaml", "--set", f"data.root={tmp_path}",
                        "--set", f"output_dir={tmp_path / 'runs'}", "--voc-root", voc,
                        "--set", "evaluate.suites=[discovery]", "--set", "evaluate.discovery.image_set=[train]")
    assert code == 2 and "evaluate.discovery.image_set: no list file for train" in err


def test_evaluate_checks_the_roots_of_the_suites_with_work(tmp_path, capsys):
    """`prunelens evaluate` names a missing folder before computing any level; a run whose results
    are up to date needs no data."""
    from prunelens.evaluate import evaluate_run
    from prunelens.errors import DataError
    from prunelens.pruning import prune_run
    from prunelens.suite import load_configs

    cfg = load_configs(None, [f"output_dir={tmp_path / 'runs'}", "prune.rounds=1", "train.epochs=1",
                              "prune.epochs=1", "evaluate.suites=[discovery]", "data.n_train=32",
                              "data.n_val=8", "data.n_test=8"])[0]
    pool = prune_run(cfg)
    with pytest.raises(DataError, match=r"^evaluate.discovery.voc_root: folder '.*nowhere' does not exist"):
        nowhere = json.dumps(str(tmp_path / "nowhere"))
        evaluate_run(pool.run_dir, overrides=[f"evaluate.discovery.voc_root={nowhere}"])
    assert not (pool.run_dir / "results" / "discovery").exists()
    evaluate_run(pool.run_dir, log=lambda *a: None)                   # synthetic boxes: no folder
    evaluate_run(pool.run_dir, log=lambda *a: None)                   # up to date


# ---- RQ1-RQ3 of a paper config, end to end on fixtures ---------------------------------------------------
def test_a_paper_config_evaluates_rq1_to_rq3_given_the_roots(tmp_path, capsys):
    """configs/paper/resnet18_imagenet.yaml as a researcher runs it (`--set data.root=… --voc-root …
    --mvh-root …`), made tiny with --set: RQ1 (RMA/RRA on VOC2012 masks), RQ2 (CorLoc on both VOC12
    image sets) and RQ3 (the model-vs-human edge dataset against its human trials) for every level."""
    from prunelens.results import load_results

    run = tmp_path / "runs" / "resnet18-imagenet"
    code, out, err = _cli(
        capsys, "run", PAPER / "resnet18_imagenet.yaml", "--set", f"data.root={_imagenet(tmp_path / 'imagenet')}",
        "--voc-root", _voc(tmp_path / "voc"), "--mvh-root", _mvh(tmp_path / "mvh"),
        "--set", f"output_dir={tmp_path / 'runs'}", "--set", "train.epochs=0", "--set", "prune.epochs=0",
        "--set", "prune.rounds=1", "--set", "train.num_workers=0", "--set", "train.batch_size=250",
        "--set", "data.train_crop_size=8", "--set", "data.val_resize_size=8", "--set", "data.val_crop_size=8",
        "--set", "evaluate.suites=[interpretability,discovery,alignment]", "--set", "evaluate.n_boot=100")
    assert code == 0, err
    frame = load_results(run)
    assert sorted(frame["level"].unique()) == [0, 1]
    for level in (0, 1):
        at = frame[frame["level"] == level]
        rq1 = at[at.suite == "interpretability"]
        assert set(rq1.metric) == {"rma", "rra"} and set(rq1.dataset) == {"voc12"}
        assert set(rq1["item"]) == {"2007_000001", "2007_000002", "2008_000003"}
        rq2 = at[(at.suite == "discovery") & (at.metric == "corloc")]
        assert rq2.groupby("condition")["item"].count().to_dict() == {"trainval": 4, "val": 1}
        rq3 = at[at.suite == "alignment"]
        assert set(rq3.dataset) == {"edge"}
        assert (rq3.metric == "accuracy").sum() == 160 and "error_consistency" in set(rq3.metric)
    assert (run / "report" / "index.html").is_file()
    assert pd.read_csv(run / "results" / "alignment" / "human_reference.csv")["dataset"].eq("edge").all()


def test_every_data_root_flag_sets_an_option_of_its_suites():
    """The flags come from one table (``options.DATA_ROOTS``): each names a real option of every
    suite it sets, and a folder error names that flag, or ``--set`` for an option without one."""
    from prunelens.options import DATA_ROOTS, data_root_flag
    from prunelens.suite import data_folder_error, get_suite

    for option, (suites, _) in DATA_ROOTS.items():
        for name in suites:
            suite = get_suite(name)
            assert option in suite.Options.model_fields, (name, option)
            assert data_root_flag(option) in str(data_folder_error(suite, option, "missing"))
    transfer = get_suite("transfer")
    message = str(data_folder_error(transfer, "root", "missing"))
    assert "--set evaluate.transfer.root=DIR" in message and "--root" not in message


@pytest.mark.parametrize("command", ["run", "config", "evaluate", "compare-schedules"])
def test_every_command_that_evaluates_takes_the_data_root_flags(command):
    from prunelens.cli import _data_root_overrides, build_parser

    args = build_parser().parse_args([command, "x.yaml", "--voc-root", "/v", "--mvh-root", "/m"])
    assert sorted(_data_root_overrides(args)) == [
        'evaluate.alignment.mvh_root="/m"', 'evaluate.discovery.voc_root="/v"',
        'evaluate.interpretability.voc_root="/v"']
