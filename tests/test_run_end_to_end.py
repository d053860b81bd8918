"""`prunelens run` end to end on a tiny two-run config: prune → every suite → one report."""
from __future__ import annotations

import json

import yaml

from prunelens.cli import main
from prunelens.results import load_results


def _two_run_config(tmp_path) -> dict:
    return {
        "seed": 0, "output_dir": str(tmp_path / "runs"),
        "data": {"name": "synthetic", "image_size": 32, "num_classes": 4, "n_train": 256,
                 "n_val": 32, "n_test": 48, "texture_correlation": 0.5},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "device": "cpu"},
        "prune": {"rate": 0.6, "rounds": 2, "epochs": 1, "min_alive_units": 0.0},
        "evaluate": {
            "interpretability": {"n_images": 8},
            "discovery": {"n_images": 8},
            "alignment": {"n_images": 16},
            "transfer": {"n_train": 64, "n_test": 32, "c_grid": [0.1, 1.0], "shots": [1], "n_draws": 2},
        },
        "runs": [
            {"name": "cnn", "model": {"name": "small_resnet", "widths": [8, 16]}},
            {"name": "vit", "model": {"name": "small_vit", "image_size": 32, "patch_size": 8,
                                      "num_layers": 2, "hidden_dim": 32, "mlp_dim": 64},
             "train": {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05}},
        ],
    }


def test_run_prunes_evaluates_and_reports(tmp_path, capsys):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(_two_run_config(tmp_path)))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    report = tmp_path / "runs" / "report" / "index.html"
    assert f"report: {report}" in out
    frame = load_results([tmp_path / "runs" / "cnn", tmp_path / "runs" / "vit"])
    suites = {run: set(g["suite"]) for run, g in frame.groupby("run")}
    expected = {"accuracy", "interpretability", "discovery", "alignment", "connectivity", "psp", "sharpness",
                "transfer"}
    assert suites["cnn"] == expected and suites["vit"] == expected
    assert sorted(frame["level"].unique()) == [0, 1, 2]
    vit_methods = set(frame[(frame.run == "vit") & (frame.suite == "interpretability")]["method"])
    assert {"attention", "rollout", "gradcam"} <= vit_methods
    html = report.read_text()
    for section in ("RQ1", "RQ2", "RQ3", "PSP-entropy", "Connectivity"):
        assert section in html
    # every image the report links exists
    import re
    for src in re.findall(r'src="([^"]+)"', html):
        assert (report.parent / src).is_file(), src
    # resumable as a whole: a second run recomputes nothing
    sidecars = sorted((tmp_path / "runs").glob("*/results/*/level_*.json"))
    before = {p: json.loads(p.read_text())["sha256"] for p in sidecars}
    mtimes = {p: p.stat().st_mtime_ns for p in sidecars}
    assert main(["run", str(path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in sidecars} == mtimes
    assert {p: json.loads(p.read_text())["sha256"] for p in sidecars} == before
