"""Gradual vs one-shot as a curve (prunelens.analysis.schedules): a one-shot pool at every sparsity
the gradual pool reaches, with the retraining epochs the gradual pool spent to reach it; the table
is checked against means recomputed from the results store."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prunelens.analysis.schedules import compare_schedules, retrain_epochs, side_by_side
from prunelens.errors import ConfigError
from prunelens.results import load_results
from prunelens.runfolder import RunFolder as Pool

SMALL_SUITES = {"psp": {"n_images": 64},
                "sharpness": {"n_images": 16, "hessian_images": 8, "hessian_iters": 3,
                              "sigmas": [0.05], "n_draws": 2},
                "transfer": {"n_train": 80, "n_test": 40, "c_grid": [0.1, 1.0], "folds": 2,
                             "shots": [2], "n_draws": 2}}


def _quiet(*_args):
    pass


def test_one_shot_pools_at_every_gradual_sparsity_and_the_table_matches_the_results(tiny_config, tmp_path):
    cfg = tiny_config(train={"epochs": 1, "max_steps_per_epoch": 2},
                      prune={"rate": 0.5, "max_sparsity": 0.75, "epochs": 1},
                      evaluate=SMALL_SUITES)
    lines: list[str] = []
    table = compare_schedules(cfg, out_dir=tmp_path / "cmp", n_boot=200, log=lines.append)
    gradual = Pool(tmp_path / "runs" / "tiny-gradual")
    # one dense model is trained, the gradual pool's; each one-shot pool copies it
    assert sum("level  0  sparsity" in line for line in lines) == 1
    assert sum("level  0  copied from" in line for line in lines) == 2
    assert [lv.index for lv in gradual.levels] == [0, 1, 2]
    for k in (1, 2):  # one one-shot pool per gradual sparsity, at the same budget
        one_shot = Pool(tmp_path / "runs" / f"tiny-one-shot-{k:02d}")
        assert [lv.index for lv in one_shot.levels] == [0, 1]
        assert one_shot.config.prune.schedule == "one_shot"
        assert one_shot.levels[1].sparsity == pytest.approx(gradual.levels[k].sparsity, abs=1e-3)
        assert retrain_epochs(one_shot) == retrain_epochs(gradual, k) == k
        # same dense start: level 0 of both pools is the same model, copied, not trained again
        assert gradual.levels[0].info["files"] == one_shot.levels[0].info["files"]
        assert one_shot.levels[0].info["dense_source"]["model_sha256"] == gradual.levels[0].model_sha256
        assert one_shot.levels[0].info["train_time_s"] == 0.0
        assert one_shot.config.prune.dense_source == "tiny-gradual"
    # both schedules at each sparsity, for every compared suite
    assert sorted(set(table["gradual_level"])) == [1, 2]
    assert list(table.columns[:4]) == ["gradual_level", "sparsity_gradual", "sparsity_one_shot",
                                       "retrain_epochs"]
    assert set(table["suite"]) == {"accuracy", "psp", "sharpness", "transfer"}
    for k, part in table.groupby("gradual_level"):
        assert part["mean_gradual"].notna().all() and part["mean_one_shot"].notna().all()
        assert (part["retrain_epochs"] == k).all()
        assert part["sparsity_gradual"].iloc[0] == pytest.approx(gradual.levels[k].sparsity)

    saved = pd.read_csv(tmp_path / "cmp" / "comparison.csv", keep_default_na=False,
                        na_values={"value": ["nan"]})
    assert len(saved) == len(table)
    meta = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert meta["gradual"]["final_level"] == 2 and sorted(meta["one_shot"]) == ["1", "2"]
    assert meta["one_shot"]["2"]["retrain_epochs"] == 2
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"

    runs = [gradual.run_dir] + [tmp_path / "runs" / f"tiny-one-shot-{k:02d}" for k in (1, 2)]
    frame = load_results(runs)
    for suite, metric, method in (("accuracy", "accuracy", ""), ("psp", "psp_entropy", "conv1"),
                                  ("sharpness", "loss_increase", "sigma=0.05"),
                                  ("transfer", "probe_accuracy", "linear")):
        for k in (1, 2):
            row = table[(table.suite == suite) & (table.metric == metric) & (table.method == method)
                        & (table.gradual_level == k)]
            assert len(row) == 1, (suite, metric, method, k)
            for schedule, run, level in (("gradual", "tiny-gradual", k),
                                         ("one_shot", f"tiny-one-shot-{k:02d}", 1)):
                values = frame[(frame.run == run) & (frame.level == level) & (frame.suite == suite)
                               & (frame.metric == metric) & (frame.method == method)]["value"]
                assert row[f"mean_{schedule}"].item() == pytest.approx(values.mean())
                assert row[f"ci_low_{schedule}"].item() <= values.mean() <= row[f"ci_high_{schedule}"].item()
            assert row["paired"].item()  # same images / neurons / draws on both sides
            gap = row["mean_gradual"].item() - row["mean_one_shot"].item()
            assert row["delta"].item() == pytest.approx(gap)
    whole = table[(table.metric == "psp_entropy") & (table.method == "(all layers)") & (table.gradual_level == 2)]
    neurons = frame[(frame.run == "tiny-gradual") & (frame.level == 2) & (frame.metric == "psp_entropy")]
    assert whole["mean_gradual"].item() == pytest.approx(neurons["value"].mean())
    assert whole["n_gradual"].item() == len(neurons)

    # re-running resumes: nothing is rebuilt, the same table comes back
    again = side_by_side(gradual.run_dir, tmp_path / "runs" / "tiny-one-shot-02", n_boot=200)
    final = table[table.gradual_level == 2].reset_index(drop=True)
    np.testing.assert_allclose(again["mean_gradual"], final["mean_gradual"])
    np.testing.assert_allclose(again["mean_one_shot"], final["mean_one_shot"])


def test_levels_pick_the_matched_sparsities_and_a_missing_level_is_named(tiny_config, tmp_path):
    cfg = tiny_config(train={"epochs": 1, "max_steps_per_epoch": 1},
                      prune={"rate": 0.5, "max_sparsity": 0.75, "epochs": 1},
                      evaluate={"suites": ["accuracy"]})
    table = compare_schedules(cfg, out_dir=tmp_path / "cmp", suites=["accuracy"], levels=[2],
                              n_boot=200, log=_quiet)
    assert set(table["gradual_level"]) == {2}
    assert not (tmp_path / "runs" / "tiny-one-shot-01").exists()
    with pytest.raises(ConfigError, match="levels 1 … 2, not 5, 7$"):
        compare_schedules(cfg, out_dir=tmp_path / "cmp", suites=["accuracy"], levels=[1, 5, 7],
                          log=_quiet)
    assert not (tmp_path / "runs" / "tiny-one-shot-01").exists()  # nothing built for level 1 either


def test_unequal_budgets_are_refused_before_the_one_shot_pool_trains(tiny_config, tmp_path, monkeypatch):
    from prunelens.pruning import runner

    cfg = tiny_config(train={"epochs": 1, "max_steps_per_epoch": 1},
                      prune={"rate": 0.5, "max_sparsity": 0.75, "epochs": 1},
                      evaluate={"suites": ["accuracy"]})
    planned = runner.level_epochs
    monkeypatch.setattr(runner, "level_epochs", lambda c, level: planned(c, level) + (
        c.prune.schedule == "one_shot"))  # as a rounding of the target sparsity could make it
    with pytest.raises(ConfigError, match="tiny-one-shot-01 would retrain 2 epochs, the gradual pool 1"):
        compare_schedules(cfg, out_dir=tmp_path / "cmp", suites=["accuracy"], log=_quiet)
    assert (tmp_path / "runs" / "tiny-gradual").exists()
    assert not list((tmp_path / "runs").glob("tiny-one-shot-*"))


def test_a_placeholder_transfer_root_is_refused_before_any_pool_trains(tmp_path, capsys):
    import yaml

    from prunelens.cli import main
    from conftest import tiny_config_dict

    raw = tiny_config_dict(tmp_path, evaluate={"transfer": {"dataset": "fashion_mnist",
                                                            "root": "/path/to/fashion-mnist"}})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["compare-schedules", str(path), "-o", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "evaluate.transfer.root: folder '/path/to/fashion-mnist' does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cmp").exists()


def test_compare_schedules_command_on_digits_with_fashion_mnist_transfer(tmp_path, capsys):
    """The entropy configs' setting on MNIST-like data: LeNet5 on the 8 × 8 digits resized to 28,
    PSP-entropy counting every output element, the probe on a Fashion-MNIST folder."""
    import yaml
    from test_transfer import write_fashion_mnist

    from prunelens.cli import main

    write_fashion_mnist(tmp_path / "fashion", n_train=40, n_test=20)
    config = {
        "name": "digits", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "model": {"name": "lenet5", "in_channels": 1, "input_size": 28},
        "data": {"name": "digits", "image_size": 28},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "device": "cpu", "max_steps_per_epoch": 2},
        "prune": {"rate": 0.5, "max_sparsity": 0.75, "epochs": 1, "retrain": "finetune",
                  "finetune_lr": 0.01, "min_alive_units": 0.0},
        "evaluate": {"psp": {"n_images": 40, "conv_neurons": "element"},
                     "sharpness": SMALL_SUITES["sharpness"],
                     "transfer": {"dataset": "fashion_mnist", "root": str(tmp_path / "fashion"),
                                  "dataset_options": {"n_val": 4}, "n_train": 30, "n_test": 20,
                                  "c_grid": [1.0], "folds": 2, "shots": [1], "n_draws": 2}}}
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["compare-schedules", str(path), "-o", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv", keep_default_na=False)
    assert sorted(set(table["gradual_level"])) == [1, 2]
    probe = table[(table.metric == "probe_accuracy")]
    assert set(probe["dataset"]) == {"fashion_mnist"} and len(probe) == 2
    frame = load_results(tmp_path / "runs" / "digits-one-shot-02", suite="psp")
    conv1 = frame[(frame.metric == "psp_entropy") & (frame.method == "features.conv1")]
    assert conv1["item"].nunique() == 6 * 28 * 28  # every output element of conv1 is a neuron
    # the report of the two pools at the final sparsity names the PSP neuron count
    report = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs" / "digits-gradual"),
                 str(tmp_path / "runs" / "digits-one-shot-02"), "-o", str(report), "--n-boot", "100"]) == 0
    html = (report / "index.html").read_text()
    assert "evaluate.psp.conv_neurons: element" in html and "every output element" in html


def test_pools_built_before_are_evaluated_with_the_evaluate_section_given(tiny_config, tmp_path):
    """The evaluate section is no part of a pool's identity: a second comparison of the same pools
    with other suite options measures with them, not with those pool.json recorded."""
    transfer = {**SMALL_SUITES["transfer"], "n_test": 20}
    setup = dict(train={"epochs": 1, "max_steps_per_epoch": 1},
                 prune={"rate": 0.5, "max_sparsity": 0.5, "epochs": 1})
    compare_schedules(tiny_config(**setup, evaluate={"transfer": transfer}), out_dir=tmp_path / "a",
                      suites=["transfer"], n_boot=50, log=_quiet)
    table = compare_schedules(tiny_config(**setup, evaluate={"transfer": {**transfer, "n_test": 40}}),
                              out_dir=tmp_path / "b", suites=["transfer"], n_boot=50, log=_quiet)
    probe = table[table.metric == "probe_accuracy"]
    assert probe["n_gradual"].item() == probe["n_one_shot"].item() == 40
