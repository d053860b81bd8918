"""One-shot vs gradual (prunelens.analysis.schedules): both pools at the same final sparsity with
the same retraining budget, compared side by side; the table is checked against means recomputed
from the results store."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prunelens.analysis.schedules import compare_schedules, retrain_epochs, side_by_side
from prunelens.runfolder import RunFolder as Pool
from prunelens.results import load_results

SMALL_SUITES = {"psp": {"n_images": 64, "figures": False},
                "sharpness": {"n_images": 16, "hessian_images": 8, "hessian_iters": 3,
                              "sigmas": [0.05], "n_draws": 2, "figures": False}}


def test_one_shot_matches_the_gradual_pool_and_the_table_matches_the_results(tiny_config, tmp_path):
    cfg = tiny_config(train={"epochs": 1, "max_steps_per_epoch": 2},
                      prune={"rate": 0.5, "max_sparsity": 0.75, "epochs": 1},
                      evaluate=SMALL_SUITES)
    table = compare_schedules(cfg, out_dir=tmp_path / "cmp", n_boot=200, log=lambda *_: None)
    gradual = Pool(tmp_path / "runs" / "tiny-gradual")
    one_shot = Pool(tmp_path / "runs" / "tiny-one-shot")
    assert [lv.index for lv in gradual.levels] == [0, 1, 2]
    assert [lv.index for lv in one_shot.levels] == [0, 1]
    assert one_shot.levels[1].sparsity == pytest.approx(gradual.levels[2].sparsity, abs=1e-3)
    assert retrain_epochs(one_shot) == retrain_epochs(gradual) == 2
    assert one_shot.config.prune.schedule == "one_shot"
    # same dense start: level 0 of both pools is the same model
    assert gradual.levels[0].info["files"] == one_shot.levels[0].info["files"]

    saved = pd.read_csv(tmp_path / "cmp" / "comparison.csv", keep_default_na=False,
                        na_values={"value": ["nan"]})
    assert len(saved) == len(table)
    meta = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert meta["gradual"]["final_level"] == 2 and meta["one_shot"]["final_level"] == 1
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"

    frame = load_results([gradual.run_dir, one_shot.run_dir])
    for suite, metric, method in (("accuracy", "accuracy", ""), ("psp", "psp_entropy", "conv1"),
                                  ("sharpness", "loss_increase", "sigma=0.05")):
        row = table[(table.suite == suite) & (table.metric == metric) & (table.method == method)]
        assert len(row) == 1, (suite, metric, method)
        for schedule, run, level in (("gradual", "tiny-gradual", 2), ("one_shot", "tiny-one-shot", 1)):
            values = frame[(frame.run == run) & (frame.level == level) & (frame.suite == suite)
                           & (frame.metric == metric) & (frame.method == method)]["value"]
            assert row[f"mean_{schedule}"].item() == pytest.approx(values.mean())
            assert row[f"ci_low_{schedule}"].item() <= values.mean() <= row[f"ci_high_{schedule}"].item()
        assert row["paired"].item()  # same images / neurons / draws on both sides
        gap = row["mean_gradual"].item() - row["mean_one_shot"].item()
        assert row["delta"].item() == pytest.approx(gap)
    whole = table[(table.metric == "psp_entropy") & (table.method == "(all layers)")]
    neurons = frame[(frame.run == "tiny-gradual") & (frame.level == 2) & (frame.metric == "psp_entropy")]
    assert whole["mean_gradual"].item() == pytest.approx(neurons["value"].mean())
    assert whole["n_gradual"].item() == len(neurons)

    # re-running resumes: nothing is rebuilt, the same table comes back
    again = side_by_side(gradual.run_dir, one_shot.run_dir, n_boot=200)
    np.testing.assert_allclose(again["mean_gradual"], table["mean_gradual"])
