"""A run on an ImageNet-layout folder (splits train/val, no test): every suite either runs on the
evaluation split or says why not; the pool stays readable when the dataset moves."""
from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

from prunelens.cli import main
from prunelens.results import load_results


def _tree(root, n=12):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 90, (40, 40, 3), dtype=np.uint8) + np.uint8(120 * c)
                Image.fromarray(arr).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")


def test_imagefolder_run_evaluates_on_val_and_survives_a_moved_dataset(tmp_path, capsys):
    data = tmp_path / "imagenet"
    _tree(data)
    config = {
        "name": "folder", "output_dir": str(tmp_path / "runs"),
        "model": {"name": "small_resnet", "widths": [8, 16]},
        "data": {"name": "imagenet", "root": str(data), "train_crop_size": 32, "val_resize_size": 36,
                 "val_crop_size": 32},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "prune": {"rounds": 1, "epochs": 1, "min_alive_units": 0.0},
        "evaluate": {"psp": {"n_images": 8}, "sharpness": {"n_images": 8, "hessian_images": 8},
                     "alignment": {"n_images": 8}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "folder"
    frame = load_results(run_dir)
    assert set(frame[frame.suite == "accuracy"]["dataset"]) == {"val"}
    assert {"accuracy", "alignment", "psp", "sharpness", "connectivity"} <= set(frame["suite"])
    for suite in ("interpretability", "discovery"):  # no masks or boxes: skipped with a reason
        reason = json.loads((run_dir / "results" / suite / "skipped.json").read_text())["reason"]
        assert "voc_root" in reason or "VOC" in reason
    capsys.readouterr()
    # the dataset moves: the pool stays readable, evaluation follows data.root, prune still resumes
    moved = tmp_path / "elsewhere"
    data.rename(moved)
    assert main(["pool", "show", str(run_dir)]) == 0
    assert main(["results", str(run_dir), "--suite", "accuracy"]) == 0
    assert main(["evaluate", str(run_dir), "--suite", "accuracy", "--force",
                 "--set", f"data.root={moved}"]) == 0
    config["data"]["root"] = str(moved)
    path.write_text(yaml.safe_dump(config))
    assert main(["prune", str(path)]) == 0  # same pool: no "different config" refusal
