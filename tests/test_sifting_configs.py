"""Shipped configs load and validate; the data-size sweeps share every setting but the ratio; the
offline sweep on digits really runs and its report overlays locality vs sparsity per ratio."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from prunelens.suite import load_configs, suite_options
from prunelens.data.registry import folders_unchecked

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(CONFIGS)) for p in SHIPPED])
def test_shipped_config_loads_and_validates(path):
    with folders_unchecked():  # the ImageNet/MNIST configs name a placeholder folder
        configs = load_configs(path)
        assert configs and all(c.name for c in configs)
        for c in configs:
            c.data.options  # noqa: B018 - the dataset's own options validate
            for suite in c.evaluate.suites or []:
                suite_options(c, suite)


def sweep_settings(configs):
    """Every setting but the run name and the data ratio, per run."""
    out = []
    for c in configs:
        d = c.model_dump(mode="json")
        d.pop("name")
        d["data"].pop("data_ratio")
        out.append(d)
    return out


@pytest.mark.parametrize("name", ["fcn_digits_data_sweep.yaml", "fcn_imagenet32_data_sweep.yaml"])
def test_data_sweeps_vary_only_the_ratio(name):
    with folders_unchecked():
        configs = load_configs(CONFIGS / "sifting" / name)
        assert [c.data.options.data_ratio for c in configs] == [1.0, 0.5, 0.25, 0.125]
    settings = sweep_settings(configs)
    assert all(s == settings[0] for s in settings)
    assert len({c.identity_hash() for c in configs}) == 4  # four different pools


def test_superclass_config_uses_the_shipped_map():
    with folders_unchecked():
        (config,) = load_configs(CONFIGS / "sifting" / "fcn_imagenet32_superclasses.yaml")
        assert config.data.options.superclasses.name == "imagenet_sifting10"   # 10cl_meaning.ini:8


@pytest.mark.parametrize("name, superclasses, data_ratio", [
    ("fcn_imagenet32_superclasses.yaml", {"modulo": None, "file": None, "name": "imagenet_sifting10"}, 1.0),
    ("fcn_imagenet32_modulo10.yaml", {"modulo": 10, "file": None, "name": None}, 1.0),   # 10cl_modulo.ini:8
    ("fcn_imagenet32_data03.yaml", None, 0.3)])                                         # 0.3data.ini:8
def test_task_variants_differ_from_the_base_config_only_in_their_data_option(name, superclasses, data_ratio):
    """The authors' 10cl_meaning/10cl_modulo/0.3data.ini equal basic.ini but for one data line (and
    val_size); the prunelens variants equal fcn_imagenet32.yaml but for the run name and that option
    (and, on 0.3 of the data, how the 100000 steps split into epochs)."""
    with folders_unchecked():
        (base,) = load_configs(CONFIGS / "sifting" / "fcn_imagenet32.yaml")
        (variant,) = load_configs(CONFIGS / "sifting" / name)
        options = variant.data.options
    assert (options.superclasses.model_dump() if options.superclasses else None) == superclasses
    assert options.data_ratio == data_ratio
    a, b = base.model_dump(mode="json"), variant.model_dump(mode="json")
    for d in (a, b):
        assert d["train"]["epochs"] * d["train"]["max_steps_per_epoch"] == 100_000   # basic.ini:11
        d.pop("name")
        d["data"].pop("superclasses", None)
        d["data"].pop("data_ratio", None)
        d["train"].pop("epochs")
        d["train"].pop("max_steps_per_epoch")
    # val_size: basic.ini:13 validates on 1000 images, 10cl_meaning/10cl_modulo/0.3data.ini:14 on 10000
    assert (a["train"].pop("validate_images"), b["train"].pop("validate_images")) == (1000, 10_000)
    assert a == b
    assert variant.identity_hash() != base.identity_hash()


def test_the_base_config_is_the_authors_recipe():
    """inputs/basic.ini and src/Network.py of phiandark/SiftingFeatures (configs/sifting/README.md)."""
    with folders_unchecked():
        (config,) = load_configs(CONFIGS / "sifting" / "fcn_imagenet32.yaml")
        (earlier,) = load_configs(CONFIGS / "sifting" / "fcn_imagenet32_prunelens_recipe.yaml")
    assert config.model.options == {"input_shape": [3, 32, 32], "widths": [1024, 1024, 1024],
                                    "input_norm": "batch", "init": "xavier_normal"}
    t, p = config.train, config.prune
    assert (t.optimizer, t.lr, t.momentum, t.nesterov, t.weight_decay, t.schedule, t.batch_size) == \
        ("sgd", 0.1, 0.0, False, 0.0, "constant", 1000)
    assert t.epochs * t.max_steps_per_epoch == 100_000
    assert (t.lr_warmup_epochs, t.label_smoothing, t.mixup_alpha, t.cutmix_alpha, t.clip_grad_norm) == \
        (0, 0.0, 0.0, 0.0, None)
    assert (p.scope, p.rate, p.retrain, p.rewind_step, p.exclude_classifier, p.exclude_first_layer,
            p.min_alive_units, p.schedule) == ("layerwise", 0.3, "rewind", 1000, True, False, 0.2, "gradual")
    # the earlier recipe is kept, under its earlier run name and identity
    assert earlier.name == "fcn-imagenet32" and config.name != earlier.name
    assert "input_norm" not in earlier.model.options and earlier.train.momentum == 0.9
    assert earlier.identity_hash() != config.identity_hash()


def test_digits_sweep_runs_and_the_report_overlays_locality_per_ratio(tmp_path):
    from prunelens.evaluate import evaluate_run
    from prunelens.pruning import prune_run
    from prunelens.report import build_report

    tiny = [f"output_dir={tmp_path}", "model.widths=[32, 32]", "train.epochs=2", "prune.rounds=1",
            "prune.rate=0.5", "prune.rewind_step=2", "evaluate.suites=[connectivity]"]
    configs = load_configs(CONFIGS / "sifting" / "fcn_digits_data_sweep.yaml", tiny)
    quiet = lambda *_: None  # noqa: E731
    run_dirs = []
    for config in configs:
        pool = prune_run(config, log=quiet)
        evaluate_run(pool.run_dir, overrides=["evaluate.connectivity.n_images=0",
                                              "evaluate.connectivity.figures=false",
                                              "evaluate.connectivity.n_shift_pairs=0"], log=quiet)
        run_dirs.append(pool.run_dir)
    index = build_report(run_dirs, tmp_path / "report")
    summary = pd.read_csv(index.parent / "summary.csv")
    locality = summary[(summary["metric"] == "locality_score") & (summary["method"] == "layers.fc1")]
    names = [c.name for c in configs]
    assert sorted(locality["group"].unique()) == sorted(names)      # one curve per data ratio …
    assert locality.groupby("group")["level"].nunique().to_dict() == {n: 2 for n in names}  # … over sparsity
    svg = (index.parent / "figures" / "connectivity.svg").read_text()
    assert all(n in svg for n in names)                              # in one overlaid figure
    assert "connectivity.svg" in index.read_text() or "connectivity.png" in index.read_text()
