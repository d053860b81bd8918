"""scikit-learn's real 8×8 digits as a prunelens dataset."""
from __future__ import annotations

import builtins

import pytest
import torch

from prunelens.data.registry import dataset_entry
from prunelens.errors import DataError

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def build(split, seed=0, **options):
    entry = dataset_entry("digits")
    return entry.build(entry.options(**options), split, seed)


def test_splits_partition_the_1797_digits():
    splits = {s: build(s) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 1797
    ids = [set(d.item_ids) for d in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(splits["test"]) == round(0.2 * 1797) and len(splits["val"]) == round(0.1 * 1797)


def test_images_are_the_scikit_learn_digits_scaled_to_unit_range():
    bunch = sklearn_datasets.load_digits()
    test = build("test")
    i = int(test.item_ids[3].split("-")[1])
    image, label = test[3]
    assert image.shape == (1, 8, 8) and label == bunch.target[i]
    torch.testing.assert_close(image[0], torch.tensor(bunch.images[i] / 16, dtype=torch.float32))


def test_options_colour_size_and_task_variants():
    big = build("train", channels=3, image_size=16)
    assert big[0][0].shape == (3, 16, 16) and 0 <= float(big[0][0].min()) <= float(big[0][0].max()) <= 1
    parity = build("train", superclasses={"modulo": 2}, data_ratio=0.5)
    assert parity.num_classes == 2 and len(parity) == round(0.5 * len(build("train")))
    assert set(parity.labels.tolist()) == {0, 1}


def test_missing_scikit_learn_is_a_clear_data_error(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        build("train")


@pytest.mark.slow
def test_sifting_demo_on_digits_makes_the_first_layer_local(tmp_path):
    """configs/sifting/fcn_digits.yaml end to end (shortened): pruning the FCN on real digits makes
    its first-layer connectivity more local than a random mask with the same counts."""
    from pathlib import Path

    from prunelens.suite import load_configs
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning import prune_run
    from prunelens.results import load_results

    config = Path(__file__).parent.parent / "configs" / "sifting" / "fcn_digits.yaml"
    (cfg,) = load_configs(config, [f"output_dir={tmp_path}", "train.epochs=15", "prune.max_sparsity=0.95"])
    pool = prune_run(cfg, log=lambda *_: None)
    evaluate_run(pool.run_dir, ["connectivity"], levels=[0, pool.levels[-1].index],
                 overrides=["evaluate.connectivity.figures=false"], log=lambda *_: None)
    frame = load_results(pool.run_dir, "connectivity")
    pooled = frame[(frame.metric == "locality_score_pooled") & (frame.method == "layers.fc1")]
    scores = pooled.set_index("level")["value"]
    assert scores[0] == pytest.approx(1.0)
    assert scores[pool.levels[-1].index] > 1.2


def test_digits_demo_config_is_valid():
    from pathlib import Path

    from prunelens.suite import load_configs, suite_options

    (cfg,) = load_configs(Path(__file__).parent.parent / "configs" / "sifting" / "fcn_digits.yaml")
    assert cfg.data.name == "digits" and cfg.model.options["input_shape"] == [1, 8, 8]
    assert suite_options(cfg, "connectivity").radius == 1.5
