"""`prunelens run` on a pool that already exists evaluates with the config it was given (its
evaluate section and the data-folder flags), not with the one pool.json recorded when the pool was
built: the evaluate section is no part of a run's identity (RunConfig.identity)."""
from __future__ import annotations

import pandas as pd
import yaml

from prunelens.cli import main
from prunelens.results import load_results

from conftest import tiny_config_dict
from test_voc_annotations import make_voc


def _config(tmp_path, name: str, discovery: dict) -> str:
    raw = tiny_config_dict(tmp_path, name=name, train={"epochs": 1, "max_steps_per_epoch": 2},
                           prune={"rounds": 1, "epochs": 1},
                           evaluate={"suites": ["accuracy", "discovery"],
                                     "discovery": {"n_images": 4, "figure_images": 0, **discovery}})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _discovery_datasets(run_dir) -> set[str]:
    frame = load_results(run_dir, suite="discovery")
    return set(frame["dataset"]) if not frame.empty else set()


def test_run_on_a_built_pool_evaluates_with_the_given_voc_root(tmp_path):
    """Built without a VOC folder, discovery would take the synthetic boxes: the flag given to
    `run` afterwards is what the evaluation reads."""
    voc = make_voc(tmp_path / "voc", "2007").parents[1]
    config = _config(tmp_path, "novoc", {})
    assert main(["prune", config]) == 0
    assert main(["run", config, "--voc-root", str(voc)]) == 0
    assert _discovery_datasets(tmp_path / "runs" / "novoc") == {"voc07"}


def test_run_flag_replaces_the_placeholder_the_pool_was_built_with(tmp_path, capsys):
    """Built from a paper config's placeholder '/path/to/VOC': `run --voc-root DIR` passes the
    data check and evaluates DIR, not the placeholder ("give the folder with --voc-root DIR")."""
    voc = make_voc(tmp_path / "voc", "2007").parents[1]
    config = _config(tmp_path, "placeholder", {"voc_root": "/path/to/VOC"})
    assert main(["prune", config]) == 0
    capsys.readouterr()
    assert main(["run", config, "--voc-root", str(voc)]) == 0, capsys.readouterr().err
    assert _discovery_datasets(tmp_path / "runs" / "placeholder") == {"voc07"}
    summary = pd.read_csv(tmp_path / "runs" / "placeholder" / "results" / "summary.csv")
    assert "discovery" in set(summary["suite"])
