"""The suite contract: a suite added in one place is seen by evaluate, results, the report, the
sweet spots and the CLI help; every confidence interval comes from one statistics module."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import tiny_config_dict
from prunelens import suite as contract
from prunelens.cli import main
from prunelens.errors import ConfigError
from prunelens.evaluate import evaluate_run
from prunelens.report import build_report
from prunelens.report.sweet_spots import compare_to_dense
from prunelens.results import load_results
from prunelens.stats import summarize


@pytest.fixture
def toy(monkeypatch):
    """The toy suite registered for one test: its one line in SUITE_MODULES, nothing else (the
    registration and the module are forgotten afterwards)."""
    import sys

    monkeypatch.setitem(contract.SUITE_MODULES, "toy", "toy_suite")
    sys.modules.pop("toy_suite", None)
    yield contract.get_suite("toy")
    contract._REGISTRY.pop("toy", None)
    sys.modules.pop("toy_suite", None)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    raw = tiny_config_dict(root, prune={"rounds": 2}, train={"epochs": 1})
    (root / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["prune", str(root / "c.yaml")]) == 0
    return root / "runs" / "tiny"


def test_a_registered_suite_is_seen_everywhere(toy, pool, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(pool, run_dir)
    evaluate_run(run_dir, suites=["accuracy", "toy"], overrides=["evaluate.toy.gain=0.2"],
                 log=lambda *_: None)
    # evaluate and results
    frame = load_results(run_dir, suite="toy")
    assert sorted(frame["level"].unique()) == [0, 1, 2] and len(frame) == 3 * 40
    assert main(["results", str(run_dir), "--suite", "toy"]) == 0
    assert "score" in capsys.readouterr().out
    # sweet spots: its declared direction makes it a criterion
    comparisons = compare_to_dense(load_results(run_dir), n_boot=200)
    toy_rows = comparisons[comparisons["suite"] == "toy"]
    assert list(toy_rows["better"]) == ["higher", "higher"] and (toy_rows["delta"] > 0).all()
    # report: its section, its figure, its direction, its comparison with the dense level
    index = build_report([run_dir], tmp_path / "out", n_boot=200)
    html = index.read_text()
    versus_dense = pd.read_csv(index.parent / "level_vs_dense.csv")
    assert (versus_dense[versus_dense["suite"] == "toy"]["ci_low"] > 0).all()  # +0.2·sparsity, tiny noise
    assert '<section id="toy"><h2>Toy question</h2>' in html
    assert (index.parent / "figures" / "toy.png").is_file() and 'id="fig-toy"' in html
    assert "a higher toy score is better" in html
    assert "tiny (toy): toy gain 0.2" in html  # the settings its results were computed with
    # CLI help lists it with what it measures
    assert main(["evaluate", "--help"]) == 0
    assert "a toy score that rises with sparsity" in capsys.readouterr().out


def test_suite_options_are_checked_when_a_config_is_loaded(toy, tmp_path):
    raw = tiny_config_dict(tmp_path, evaluate={"toy": {"gain": 0.3}})
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(raw))
    (cfg,) = contract.load_configs(tmp_path / "ok.yaml")
    assert contract.suite_options(cfg, "toy").gain == 0.3
    raw["evaluate"]["toy"] = {"gian": 0.3}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"unknown key 'evaluate.toy.gian' \(did you mean 'gain'\?\)"):
        contract.load_configs(tmp_path / "bad.yaml")


def test_every_suite_declares_its_metrics_and_figures():
    for suite in contract.all_suites():
        assert suite.title and suite.section.title and suite.metrics, suite.name
        figures = {f.name for f in suite.figures}
        for metric in suite.metrics:
            assert metric.direction in ("higher", "lower", "none"), (suite.name, metric.name)
            assert set(metric.figures) <= figures, (suite.name, metric.name)


def test_both_summary_files_are_identical(pool, tmp_path):
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(pool, run_dir)
    evaluate_run(run_dir, suites=["accuracy"], log=lambda *_: None)
    index = build_report([run_dir], tmp_path / "out")
    assert (index.parent / "summary.csv").read_bytes() == (run_dir / "results" / "summary.csv").read_bytes()


def test_intervals_do_not_depend_on_what_else_is_summarised():
    """Seeded by (group, suite, metric, …, level): adding another run or metric changes nothing."""
    rng = np.random.default_rng(0)
    rows = lambda run, metric: pd.DataFrame({  # noqa: E731
        "run": run, "level": 0, "sparsity": 0.0, "suite": "s", "metric": metric, "method": "",
        "dataset": "", "condition": "", "item": [str(i) for i in range(30)], "value": rng.random(30)})
    alone = rows("a", "m")
    together = pd.concat([rows("0-first", "m"), alone, rows("a", "aa-first")])
    one = summarize(alone, n_boot=300)
    both = summarize(together, n_boot=300)
    both = both[(both["group"] == "a") & (both["metric"] == "m")].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, both)
