"""Pellegrini & Biroli's ``init_sparsity`` (phiandark/SiftingFeatures @386b617): level 0 trains under
a random mask, each weight of a pruned layer dropped with probability p, biases kept (src/Utils.py:93-101),
and the cumulative ratio starts at p (src/IMP.py:58, 88-89, 182). Each against a transcription of
their code (tests/sifting_reference.py: ``authors_make_mask``, ``authors_ratios``,
``authors_get_mask``). Tiny FCN, synthetic data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

import sifting_reference as ref
from conftest import tiny_config_dict
from prunelens.cli import main
from prunelens.config import resolve_runs
from prunelens.models import create_model, spec_for
from prunelens.pruning.masks import (cumulative_ratio, dense_masks, mask_sparsity, prunable_from_config,
                                     random_initial_masks)
from prunelens.pruning.runner import initial_masks, prune_run
from prunelens.pruning.train import derived_seed
from prunelens.report import build_report

FCN = {"name": "fcn", "input_shape": [3, 32, 32], "widths": [16, 16], "input_norm": "batch",
       "init": "xavier_normal"}
LAYERS = ("layers.fc1", "layers.fc2", "layers.classifier")
#: the authors' settings (basic.ini:19-20; Utils.py:58-70): hidden layers, 30 % cumulative, biases pooled
AUTHORS_PRUNE = {"scope": "layerwise", "exclude_classifier": True, "rate": 0.3, "target": "cumulative",
                 "biases": True, "max_sparsity": 0.99}


def raw_config(tmp_path, prune=None, train=None):
    raw = tiny_config_dict(tmp_path, train={"epochs": 1, **(train or {})},
                           prune={**AUTHORS_PRUNE, **(prune or {})})
    raw["model"] = dict(FCN)
    return raw


def config(tmp_path, **kw):
    return resolve_runs(raw_config(tmp_path, **kw))[0]


def model_and_params(cfg):
    torch.manual_seed(derived_seed(cfg.seed, "init"))
    model = create_model("fcn", 4, **{k: v for k, v in FCN.items() if k != "name"})
    return model, prunable_from_config(model, cfg.prune)


def torch_uniforms(cfg, name, shape):
    """The draws the runner makes for parameter ``name`` (its seeding, float64)."""
    g = torch.Generator().manual_seed(derived_seed(cfg.seed, "init-mask", name))
    return torch.rand(shape, generator=g, dtype=torch.float64)


def test_level0_mask_is_the_authors_make_mask_for_the_same_draws(tmp_path):
    p = 0.5
    cfg = config(tmp_path, prune={"init_sparsity": p})
    model, params = model_and_params(cfg)
    masks = initial_masks(cfg, params, list(spec_for(model).prunable(model)))
    assert set(masks) == {"layers.fc1.weight", "layers.fc1.bias", "layers.fc2.weight", "layers.fc2.bias"}
    linear = dict(model.named_parameters())
    # arch as archparse builds it for f16:f16:x with prune T:T:F (Utils.py:4-25)
    arch = [("f", [linear[f"{n}.weight"].shape[1], linear[f"{n}.weight"].shape[0]], n != "layers.classifier")
            for n in LAYERS]
    draws = iter(torch_uniforms(cfg, f"{n}.weight", linear[f"{n}.weight"].shape).numpy().T
                 for n in LAYERS[:2])
    authors = ref.authors_make_mask(arch, p * np.ones(2), lambda shape: next(draws))
    for layer, (wmask, bmask) in zip(LAYERS[:2], authors):
        # theirs is W (fan_in, fan_out): torch's weight transposed
        assert np.array_equal(masks[f"{layer}.weight"].numpy(), wmask.T.astype(bool))
        assert masks[f"{layer}.bias"].all() and bmask.all()     # biases kept (Utils.py:100)
    assert "layers.classifier.weight" not in masks                # not pruned (T:T:T:F)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_keep_fraction_is_binomial_and_layers_draw_independently(tmp_path, p):
    cfg = config(tmp_path, prune={"init_sparsity": p, "biases": False})
    model, params = model_and_params(cfg)
    masks = initial_masks(cfg, params, list(spec_for(model).prunable(model)))
    for name, m in masks.items():
        n, kept = m.numel(), int(m.sum())
        assert abs(kept - n * (1 - p)) <= 5 * math.sqrt(n * p * (1 - p)), (name, kept, n)
    # one stream per parameter: fc2's mask is not fc1's draws reused
    first = torch_uniforms(cfg, "layers.fc1.weight", (16, 16))
    assert not torch.equal(masks["layers.fc2.weight"], first >= p)


def test_zero_draws_nothing_and_keeps_the_identity(tmp_path):
    cfg = config(tmp_path)
    _, params = model_and_params(cfg)

    def no_draw(name):
        raise AssertionError(f"drew for {name}")
    for n, m in random_initial_masks(params, 0.0, no_draw).items():
        assert torch.equal(m, dense_masks(params)[n])
    explicit = config(tmp_path, prune={"init_sparsity": 0.0})
    # the hash this config had before init_sparsity existed (prunelens main at fbb0b83)
    assert cfg.identity_hash() == explicit.identity_hash() == "854007d7f090ac8e"
    assert config(tmp_path, prune={"init_sparsity": 0.5}).identity_hash() != cfg.identity_hash()


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_cumulative_ratio_is_the_authors_loop_started_at_p(p):
    for k in range(12):
        assert cumulative_ratio(0.3, k, p) == ref.authors_ratios(p, k, 1)[0]


def _authors_masks(level, maskold_level):
    """``authors_get_mask`` inputs from a level's weights and the previous level's masks."""
    state = level.state_dict()
    old = maskold_level.load_masks()
    weights = [(state[f"{n}.weight"].double().numpy().T, state[f"{n}.bias"].double().numpy()) for n in LAYERS]
    maskold = [[old[f"{n}.weight"].numpy().T.astype(float), old[f"{n}.bias"].numpy().astype(float)]
               if f"{n}.weight" in old else [np.ones_like(w), np.ones_like(b)]
               for n, (w, b) in zip(LAYERS, weights)]
    return weights, maskold


def test_a_pool_trains_level0_under_the_mask_and_prunes_on_as_the_authors(tmp_path):
    p = 0.5
    cfg = config(tmp_path, prune={"init_sparsity": p, "rounds": 2})
    pool = prune_run(cfg, log=lambda *_: None)
    assert [lv.index for lv in pool.levels] == [0, 1, 2]
    level0 = pool.levels[0]
    model, params = model_and_params(cfg)
    expected = initial_masks(cfg, params, list(spec_for(model).prunable(model)))
    stored = level0.load_masks()
    assert all(torch.equal(stored[n], expected[n]) for n in expected)
    # level.json: the real sparsity of level 0, not 0
    overall, per_layer = mask_sparsity(expected)
    assert level0.sparsity == pytest.approx(overall) and overall > 0.4
    assert level0.layer_sparsity == pytest.approx(per_layer)
    # trained under the mask: pruned weights stay zero, the kept ones and the biases moved
    state = level0.state_dict()
    for layer in LAYERS[:2]:
        w, m = state[f"{layer}.weight"], stored[f"{layer}.weight"]
        assert (w[~m] == 0).all() and (w[m] != 0).all()
        assert (state[f"{layer}.bias"] != 0).any()            # b = 0 at init (Network.py:31), trained
    # later levels: get_mask (Utils.py:52-74) at the ratios of IMP.py's loop started at p
    for k in (1, 2):
        weights, maskold = _authors_masks(pool.levels[k - 1], pool.levels[k - 1])
        authors = ref.authors_get_mask(weights, [True, True, False], ref.authors_ratios(p, k, 2), maskold)
        got = pool.levels[k].load_masks()
        for layer, (wmask, bmask) in zip(LAYERS[:2], authors):
            assert np.array_equal(got[f"{layer}.weight"].numpy(), wmask.T.astype(bool)), (k, layer)
            assert np.array_equal(got[f"{layer}.bias"].numpy(), bmask.astype(bool)), (k, layer)
    # the report: level 0 is still the baseline, shown at its real sparsity and said not to be dense
    text = build_report([pool.run_dir], tmp_path / "report").read_text()
    assert f"<td>{level0.sparsity:.1%}</td>" in text
    assert "Level 0 of tiny is not dense" in text and "prune.init_sparsity</code> 0.5" in text


def test_of_alive_continues_from_the_alive_weights(tmp_path):
    p = 0.5
    cfg = config(tmp_path, prune={"init_sparsity": p, "rounds": 1, "target": "of_alive", "biases": False})
    pool = prune_run(cfg, log=lambda *_: None)
    before, after = pool.levels[0].load_masks(), pool.levels[1].load_masks()
    for name in before:
        alive = int(before[name].sum())
        assert not (after[name] & ~before[name]).any()          # nested: no random-pruned entry revived
        assert int(after[name].sum()) == alive - round(0.3 * alive)


REFUSED = [
    ({"prune": {"control": "random_mask", "control_source": "src"}}, "with prune.control"),
    ({"prune": {"dense_source": "src"}}, "with prune.dense_source"),
    ({"prune": {"schedule": "one_shot", "target": "of_alive"}}, "with schedule one_shot"),
    ({"prune": {"max_sparsity": 0.4}}, "is not below prune.max_sparsity"),
    ({"train": {"epochs": 0}}, "with train.epochs 0"),
    ({"prune": {"init_sparsity": 1.0}}, "prune.init_sparsity"),
    ({"prune": {"init_sparsity": 0.99, "max_sparsity": 0.999, "min_alive_units": 0.9}}, "no level would train"),
]


@pytest.mark.parametrize("changes,message", REFUSED)
def test_refused_combinations_are_one_line_and_exit_2(tmp_path, capsys, changes, message):
    raw = raw_config(tmp_path, prune={"init_sparsity": 0.5, **changes.get("prune", {})},
                     train=changes.get("train"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["prune", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,message", [(["prune", "--control", "random_mask"], "with prune.control"),
                                          (["compare-schedules"], "compare-schedules with prune.init_sparsity")])
def test_controls_and_schedule_comparisons_are_refused_before_training(tmp_path, capsys, argv, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(tmp_path, prune={"init_sparsity": 0.5})))
    code = main([*argv, str(path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()
