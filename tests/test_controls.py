"""Controls (#22, part 2): pools derived from a source pool, level by level — random masks with each
layer's sparsity of the level, or the level's masks with fresh initial weights."""
from __future__ import annotations

import pytest
import torch

from prunelens.errors import ConfigError
from prunelens.pruning import prune_run
from prunelens.pruning.masks import random_masks_like
from prunelens.pruning.runner import control_config


def test_random_masks_keep_each_layers_count_and_stay_nested():
    g = torch.Generator().manual_seed(0)
    reference = {"a": torch.rand(20, 30, generator=g) < 0.3, "b": torch.rand(50, generator=g) < 0.1}
    within = {"a": torch.rand(20, 30, generator=g) < 0.6, "b": torch.ones(50, dtype=torch.bool)}
    masks = random_masks_like(reference, within, torch.Generator().manual_seed(1))
    for name in reference:
        assert int(masks[name].sum()) == int(reference[name].sum())
        assert not (masks[name] & ~within[name]).any()
    again = random_masks_like(reference, within, torch.Generator().manual_seed(1))
    assert all(torch.equal(masks[n], again[n]) for n in masks)
    assert not torch.equal(masks["a"], reference["a"])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from conftest import tiny_config_dict

    from prunelens.config import resolve_runs

    cfg = resolve_runs(tiny_config_dict(tmp_path_factory.mktemp("controls"),
                                        prune={"max_sparsity": 0.75}))[0]
    return cfg, prune_run(cfg, log=lambda *_: None)


@pytest.mark.parametrize("kind", ["random_mask", "random_reinit"])
def test_a_control_mirrors_every_level_of_its_source(source, kind):
    cfg, pool = source
    control = prune_run(control_config(cfg, kind), log=lambda *_: None)
    assert control.name == f"tiny-{kind.replace('_', '-')}" and control.complete
    assert [lv.index for lv in control.levels] == [lv.index for lv in pool.levels]
    assert control.identity_hash != pool.identity_hash
    assert control.config.prune.control == kind
    for mine, theirs in zip(control.levels[1:], pool.levels[1:]):
        assert mine.layer_sparsity == pytest.approx(theirs.layer_sparsity)
        same = all(torch.equal(a, theirs.load_masks()[n]) for n, a in mine.load_masks().items())
        assert same == (kind == "random_reinit")
        if kind == "random_reinit":  # same masks, other weights
            assert not torch.equal(mine.state_dict()["fc.weight"], theirs.state_dict()["fc.weight"])
    # resumable: a second call finds every level complete and changes nothing
    again = prune_run(control_config(cfg, kind), log=lambda *_: None)
    assert [lv.model_sha256 for lv in again.levels] == [lv.model_sha256 for lv in control.levels]


def test_a_control_must_match_its_source(source):
    cfg, _ = source
    raw = control_config(cfg, "random_mask").model_dump(mode="json")
    raw["train"]["lr"] = 0.2
    from prunelens.config import RunConfig, validate_section

    with pytest.raises(ConfigError, match="other settings"):
        prune_run(validate_section(RunConfig, raw, "test"), log=lambda *_: None)


def test_shipped_digits_control_runs_and_the_report_overlays_its_locality(tmp_path):
    """configs/sifting/fcn_digits_random_mask.yaml, shrunk: the pool, then its random-mask control;
    the report draws both locality curves in one figure, and the claim compares them level by level
    (checked against the per-level means of the same records)."""
    import pandas as pd

    from prunelens.evaluate import evaluate_run
    from prunelens.report import build_report
    from prunelens.results import load_results
    from prunelens.suite import load_configs
    from test_sifting_configs import CONFIGS

    tiny = [f"output_dir={tmp_path}", "model.widths=[32, 32]", "train.epochs=2", "prune.rounds=2",
            "prune.rate=0.5", "prune.rewind_step=2", "evaluate.suites=[connectivity]"]
    configs = load_configs(CONFIGS / "sifting" / "fcn_digits_random_mask.yaml", tiny)
    assert [c.prune.control for c in configs] == [None, "random_mask"]
    quiet = lambda *_: None  # noqa: E731
    run_dirs = []
    for config in configs:
        pool = prune_run(config, log=quiet)
        evaluate_run(pool.run_dir, overrides=["evaluate.connectivity.n_images=0",
                                              "evaluate.connectivity.figures=false",
                                              "evaluate.connectivity.selectivity_images=0",
                                              "evaluate.connectivity.n_shift_pairs=0"], log=quiet)
        run_dirs.append(pool.run_dir)
    index = build_report(run_dirs, tmp_path / "report")
    svg = (index.parent / "figures" / "connectivity.svg").read_text()
    assert "fcn-digits-random-mask" in svg and "fcn-digits" in svg   # one overlaid figure
    claims = pd.read_csv(index.parent / "claims.csv", keep_default_na=False)
    row = claims[(claims["claim"] == "locality_above_random_mask")
                 & (claims["method"] == "layers.fc1")].iloc[0]
    assert row["compared"] == "fcn-digits − fcn-digits-random-mask"
    frame = load_results(run_dirs, suite="connectivity")
    means = frame[(frame["metric"] == "locality_score") & (frame["method"] == "layers.fc1")
                  & (frame["level"] > 0)].groupby(["run", "level"])["value"].mean().unstack("run")
    gap = (means["fcn-digits"] - means["fcn-digits-random-mask"]).min()
    assert float(row["value"]) == pytest.approx(gap)
    assert int(row["n_levels"]) == 2 and row["expected"] == "+"
