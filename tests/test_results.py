"""The results store: round trip, replacement (never duplicates), summaries, damage, staleness."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from prunelens.errors import PoolError
from prunelens.pruning import prune_run
from prunelens.results import Record, load_results, write_level
from prunelens.runfolder import Layout, sealed
from prunelens.stats import summarize


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    from conftest import tiny_config_dict

    from prunelens.config import resolve_runs
    tmp = tmp_path_factory.mktemp("results")
    cfg = resolve_runs(tiny_config_dict(tmp, prune={"rounds": 1}, train={"epochs": 1}))[0]
    return prune_run(cfg, log=lambda *_: None).run_dir


@pytest.fixture
def run_dir(pool_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pool_dir, copy, ignore=shutil.ignore_patterns("results"))
    return copy


RECORDS = [Record("toy", "score", 0.25, method="m", dataset="d", condition="c1", item="00012"),
           Record("toy", "score", math.nan, method="m", dataset="d", condition="c1", item="00013"),
           Record("toy", "score", 1.0, method="m", dataset="d", condition="c1", item="00014"),
           Record("toy", "aggregate", 3.5)]


def test_round_trip_keeps_values_nan_and_item_strings(run_dir):
    write_level(run_dir, "toy", 1, RECORDS, {"level_sha256": None})
    frame = load_results(run_dir)
    assert list(frame.columns) == ["run", "model", "level", "sparsity", "suite", "metric", "method",
                                   "dataset", "condition", "item", "value"]
    assert frame["item"].tolist() == ["00012", "00013", "00014", ""]  # strings, leading zeros kept
    assert np.isnan(frame["value"].iloc[1]) and frame["value"].iloc[0] == 0.25
    assert set(frame["run"]) == {"tiny"} and set(frame["model"]) == {"small_resnet"}
    assert frame["sparsity"].iloc[0] == pytest.approx(0.5, abs=1e-3)


def test_rewriting_a_level_replaces_its_rows(run_dir):
    write_level(run_dir, "toy", 1, RECORDS, {})
    write_level(run_dir, "toy", 1, RECORDS[:2], {})
    write_level(run_dir, "toy", 0, RECORDS[:1], {})
    frame = load_results(run_dir, suite="toy")
    assert len(frame[frame.level == 1]) == 2 and len(frame[frame.level == 0]) == 1


def test_summaries_count_nan_and_bound_the_mean(run_dir):
    write_level(run_dir, "toy", 1, RECORDS, {})
    summary = summarize(load_results(run_dir)).set_index("metric")
    row = summary.loc["score"]
    assert row["mean"] == pytest.approx(0.625) and row["n"] == 2 and row["n_nan"] == 1
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    agg = summary.loc["aggregate"]
    assert agg["mean"] == 3.5 and agg["n"] == 1 and math.isnan(agg["ci_low"])  # one value: no CI


def test_several_runs_load_together(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    info = json.loads((other / "pool.json").read_text())
    (other / "pool.json").write_text(json.dumps(sealed({**info, "name": "other"})))
    for d in (run_dir, other):
        write_level(d, "toy", 1, RECORDS, {})
    frame = load_results([run_dir, other])
    assert frame.groupby("run").size().to_dict() == {"other": 4, "tiny": 4}


def test_damaged_results_are_clear_errors(run_dir):
    path = write_level(run_dir, "toy", 1, RECORDS, {})
    path.write_text(path.read_text().replace("0.25", "0.75"))
    with pytest.raises(PoolError, match="does not match its recorded sha256"):
        load_results(run_dir)
    write_level(run_dir, "toy", 1, RECORDS, {})
    path.with_suffix(".json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(PoolError, match="no readable sidecar"):
        load_results(run_dir)
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(PoolError, match="no readable sidecar"):
        load_results(run_dir)


def test_results_of_a_rebuilt_level_are_left_out(run_dir):
    from prunelens.runfolder import RunFolder as Pool
    sha = Pool(run_dir).level(1).info["files"]["model.safetensors"]
    write_level(run_dir, "toy", 1, RECORDS, {"level_sha256": sha})
    write_level(run_dir, "toy", 0, RECORDS, {"level_sha256": "an-older-level-0"})
    with pytest.warns(UserWarning, match="earlier version of level 0"):
        frame = load_results(run_dir)
    assert set(frame["level"]) == {1}
    assert Layout(run_dir).result_csv("toy", 0).is_file()  # kept on disk, just not shown
