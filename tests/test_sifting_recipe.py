"""Pellegrini & Biroli's training recipe and IMP (phiandark/SiftingFeatures @386b617) as prunelens
options, each against a transcription of their code (tests/sifting_reference.py, file and line
cited there): periodic validation and the level's error as its minimum (IMP.py:146-169), batches
drawn with replacement (Data.py:72-73). Tiny FCN, synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sifting_reference as ref
from conftest import tiny_config_dict
from prunelens.config import RunConfig, resolve_runs, validate_section
from prunelens.errors import ConfigError
from prunelens.models import create_model, spec_for
from prunelens.pruning.runner import WithReplacementBatches, prune_run
from prunelens.pruning.train import derived_seed, evaluate_model
from prunelens.data.provider import RunData
from torch.utils.data import DataLoader, Subset

FCN = {"name": "fcn", "input_shape": [3, 32, 32], "widths": [16, 16], "input_norm": "batch",
       "init": "xavier_normal"}


def sifting_config(tmp_path, train=None, prune=None):
    raw = tiny_config_dict(tmp_path, train={"schedule": "constant", "momentum": 0.0, **(train or {})},
                           prune={"rounds": 1, "scope": "layerwise", "exclude_classifier": True, "epochs": None,
                                  **(prune or {})})
    raw["model"] = dict(FCN)
    return resolve_runs(raw)[0]


def test_periodic_validation_records_the_authors_points_and_their_minimum(tmp_path):
    cfg = sifting_config(tmp_path, train={"validate_every": 2, "validate_split": "test",
                                          "validate_images": 40})
    pool = prune_run(cfg, log=lambda *_: None)
    steps = cfg.train.epochs * (256 // 64)
    data = RunData(cfg.data, cfg.seed)
    first = DataLoader(Subset(data.split("test"), range(40)), batch_size=64)
    for lv in pool.levels:
        record = lv.info["periodic_validation"]
        assert record["steps"] == ref.validation_steps(steps, 2)           # 0, 2, …, 8 (IMP.py:146-158)
        assert record["min_error"] == ref.level_error(record["errors"])    # IMP.py:169
        assert record["errors"][record["steps"].index(record["min_error_step"])] == record["min_error"]
        assert (record["split"], record["n_images"], record["every_steps"]) == ("test", 40, 2)
        # the last point is the level's own weights (after the last update), in eval mode
        model = create_model("fcn", 4, **{k: v for k, v in FCN.items() if k != "name"})
        model.load_state_dict(lv.state_dict())
        final = evaluate_model(model, first, spec_for(model), torch.device("cpu"))
        assert record["errors"][-1] == pytest.approx(1 - final["acc"], abs=1e-12)
    # step 0 of level 0: the initial weights with the running averages (0, 1) (IMP.py:141-144)
    torch.manual_seed(derived_seed(cfg.seed, "init"))
    init = create_model("fcn", 4, **{k: v for k, v in FCN.items() if k != "name"})
    start = evaluate_model(init, first, spec_for(init), torch.device("cpu"))
    assert pool.levels[0].info["periodic_validation"]["errors"][0] == pytest.approx(1 - start["acc"])
    # test_acc keeps its meaning: the end-of-level accuracy on the whole test split
    assert pool.levels[0].metrics["test_acc"] == pytest.approx(1 - _error_on(pool.levels[0], data))


def _error_on(level, data):
    model = create_model("fcn", 4, **{k: v for k, v in FCN.items() if k != "name"})
    model.load_state_dict(level.state_dict())
    loader = DataLoader(data.split("test"), batch_size=64)
    return 1 - evaluate_model(model, loader, spec_for(model), torch.device("cpu"))["acc"]


def test_a_resumed_level_keeps_the_points_already_measured(tmp_path):
    """An interrupted level leaves its curve in the .partial folder; the resumed one reads it back,
    overwrites the steps it replays and adds the rest."""
    from prunelens.pruning.validation import PeriodicValidation

    cfg = sifting_config(tmp_path, train={"validate_every": 2})
    data = RunData(cfg.data, cfg.seed)
    loader = DataLoader(Subset(data.split("val"), range(16)), batch_size=8)
    model = create_model("fcn", 4, **{k: v for k, v in FCN.items() if k != "name"})
    path = tmp_path / "curve.json"
    first = PeriodicValidation(loader, 16, spec_for(model), torch.device("cpu"), cfg.train, path)
    for step in range(5):
        first(step, model)                       # measured at 0, 2, 4; then interrupted
    resumed = PeriodicValidation(loader, 16, spec_for(model), torch.device("cpu"), cfg.train, path)
    assert resumed.curve == first.curve and sorted(resumed.curve) == [0, 2, 4]
    for step in range(4, 8):
        resumed(step, model)
    record = resumed.finish(8, model)
    assert record["steps"] == ref.validation_steps(8, 2)
    assert record["min_error"] == ref.level_error(record["errors"])
    assert model.training                        # evaluation leaves the model as it found it


def test_old_level_json_without_the_record_still_reads(tmp_path):
    cfg = sifting_config(tmp_path)
    pool = prune_run(cfg, log=lambda *_: None)
    assert "periodic_validation" not in pool.levels[0].info
    row = pool.table()[0]
    assert row["min_validation_error"] != row["min_validation_error"]  # NaN: not measured


def test_with_replacement_draws_as_numpys_choice():
    batches = list(WithReplacementBatches(1000, 37, steps=5, seed=1234))
    rng = np.random.RandomState(1234)
    want = [ref.getbatch_indices(rng, 1000, 37).tolist() for _ in range(5)]
    assert batches == want
    # under torchrun the ranks share the same global batch
    shares = [list(WithReplacementBatches(1000, 36, 5, 99, rank=r, world=3)) for r in range(3)]
    whole = list(WithReplacementBatches(1000, 36, 5, 99))
    for step in range(5):
        assert sorted(sum((s[step] for s in shares), [])) == sorted(whole[step])
    # and with replacement: in 200 draws of 20 from 20, repeats are the rule (P(no repeat) = 20!/20^20)
    assert any(len(set(b)) < 20 for b in WithReplacementBatches(20, 20, 200, 0))


def test_the_training_loader_uses_the_sampler(tmp_path):
    cfg = sifting_config(tmp_path, train={"sampler": "with_replacement", "epochs": 1})
    from prunelens.pruning.runner import _Loaders
    loaders = _Loaders(cfg, RunData(cfg.data, cfg.seed))
    assert loaders.steps_per_epoch == 256 // 64
    loader = loaders.for_epoch(level=0)(0)
    got = [b for b in loader.batch_sampler]
    rng = np.random.RandomState(derived_seed(cfg.seed, "with_replacement", 0, 0) % 2**32)
    assert got == [ref.getbatch_indices(rng, 256, 64).tolist() for _ in range(4)]


def test_defaults_keep_the_identity_and_bad_combinations_are_refused():
    base = {"model": FCN, "data": {"name": "digits"}}
    explicit = {**base, "train": {"sampler": "shuffle", "validate_every": None, "validate_split": "val"}}
    assert RunConfig(**base).identity_hash() == RunConfig(**explicit).identity_hash()
    assert RunConfig(**base).identity_hash() != RunConfig(**{**base, "train": {"validate_every": 100}}).identity_hash()
    with pytest.raises(ConfigError, match="choose one"):
        validate_section(RunConfig, {**base, "train": {"sampler": "with_replacement", "ra_sampler": True}})
    with pytest.raises(ConfigError, match="set validate_every"):
        validate_section(RunConfig, {**base, "train": {"validate_images": 10}})


# ---- IMP as IMP.py / Utils.py do it ----------------------------------------------------------------
def _fcn_with_ties(seed=0):
    torch.manual_seed(seed)
    model = create_model("fcn", 4, input_shape=[3, 2, 2], widths=[7, 6, 5], input_norm="batch",
                         init="xavier_normal")
    with torch.no_grad():  # coarse values: many ties at every threshold; biases in the weights' range
        for name, p in model.named_parameters():
            if name.startswith("layers.fc") or name.startswith("layers.classifier"):
                p.copy_(torch.round(torch.randn_like(p) * 4) / 8)
    return model


def _authors_view(model, masks, names):
    """(W (fan_in, fan_out), b) per Linear layer and [wmask, bmask] in the authors' orientation."""
    weights, old = [], []
    for layer in names:
        w, b = getattr(model.layers, layer).weight, getattr(model.layers, layer).bias
        weights.append((w.detach().double().numpy().T, b.detach().double().numpy()))
        mw = masks.get(f"layers.{layer}.weight", torch.ones_like(w, dtype=torch.bool))
        mb = masks.get(f"layers.{layer}.bias", torch.ones_like(b, dtype=torch.bool))
        old.append([mw.double().numpy().T, mb.double().numpy()])
    return weights, old


def test_two_rounds_of_cumulative_masks_equal_the_authors_get_mask():
    from prunelens.pruning.masks import cumulative_masks, cumulative_ratio, dense_masks, prunable_parameters

    model = _fcn_with_ties()
    params = prunable_parameters(model, exclude_classifier=True, biases=True)
    assert list(params) == [f"layers.fc{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")]
    layers, prunable = ["fc1", "fc2", "fc3", "classifier"], [True, True, True, False]   # T:T:T:F
    masks, ratios = dense_masks(params), np.zeros(3)
    for k in (1, 2):
        if k == 2:  # new trained weights between the rounds
            with torch.no_grad():
                for p in params.values():
                    p.add_(torch.round(torch.randn_like(p) * 2) / 16)
        weights, old = _authors_view(model, masks, layers)
        ratios = ref.next_ratios(ratios)                                       # IMP.py:182
        assert cumulative_ratio(0.3, k) == ratios[0]
        want = ref.authors_get_mask(weights, prunable, ratios, old)
        masks = cumulative_masks({n: p.detach() for n, p in params.items()}, masks, ratios[0])
        for i, layer in enumerate(layers[:3]):
            np.testing.assert_array_equal(masks[f"layers.{layer}.weight"].numpy().T, want[i][0].astype(bool))
            np.testing.assert_array_equal(masks[f"layers.{layer}.bias"].numpy(), want[i][1].astype(bool))
        # ties kept: at most floor(r_k N) of each layer's entries are cut
        for layer in layers[:3]:
            n = sum(masks[f"layers.{layer}.{t}"].numel() for t in ("weight", "bias"))
            cut = n - sum(int(masks[f"layers.{layer}.{t}"].sum()) for t in ("weight", "bias"))
            assert cut <= int(ratios[0] * n)
    assert any(not m.all() for n, m in masks.items() if n.endswith("bias"))  # biases did get cut


def test_layerwise_of_alive_ranks_a_layers_bias_with_its_weights():
    from prunelens.pruning.masks import dense_masks, magnitude_masks, prunable_parameters

    model = _fcn_with_ties(1)
    params = prunable_parameters(model, exclude_classifier=True, biases=True)
    weights = {n: p.detach() for n, p in params.items()}
    masks = magnitude_masks(weights, dense_masks(params), 0.3, "layerwise")
    for layer in ("fc1", "fc2", "fc3"):
        w, b = weights[f"layers.{layer}.weight"], weights[f"layers.{layer}.bias"]
        pooled = torch.cat([w.reshape(-1), b]).abs()
        kept = torch.cat([masks[f"layers.{layer}.weight"].reshape(-1), masks[f"layers.{layer}.bias"]])
        assert int((~kept).sum()) == round(0.3 * len(pooled))
        assert pooled[~kept].max() <= pooled[kept].min()                       # the smallest went


def test_the_stop_rule_counts_layers_as_the_authors_index_them():
    from prunelens.pruning.runner import _stop_reason, counted_layers

    model = _fcn_with_ties()
    order = list(spec_for(model).prunable(model))
    assert order == [f"layers.{n}.weight" for n in ("fc1", "fc2", "fc3", "classifier")]
    rng = np.random.default_rng(0)
    layers, prunable = ["fc1", "fc2", "fc3", "classifier"], [True, True, True, False]
    for trial in range(20):
        masks = {f"layers.{n}.weight": torch.from_numpy(rng.random(getattr(model.layers, n).weight.shape)
                                                        < rng.uniform(0.02, 0.6)) for n in layers[:3]}
        _, old = _authors_view(model, masks, layers)
        want = ref.connected_fraction(old, prunable)                           # IMP.py:87, 120, 188
        counted = counted_layers("authors", order, masks)
        assert counted == {"layers.fc1.weight", "layers.fc2.weight"}          # never fc3
        from prunelens.pruning.masks import alive_unit_fraction
        got = min([1.0] + [f for n, f in alive_unit_fraction(masks).items() if n in counted])
        assert got == pytest.approx(want)
    # strict: a layer at exactly min_alive_units stops with not_above (IMP.py:128 `>`), not with below
    masks = {f"layers.{n}.weight": torch.ones_like(getattr(model.layers, n).weight, dtype=torch.bool)
             for n in layers[:3]}
    masks["layers.fc3.weight"][1:] = False                                     # 1 of 5 units: 0.2
    dense = {n: torch.ones_like(m) for n, m in masks.items()}
    for stop_when, stop_layers, stops in [("below", "all", False), ("not_above", "all", True),
                                          ("not_above", "authors", False)]:
        cfg = RunConfig(model=FCN, data={"name": "digits"},
                        prune={"min_alive_units": 0.2, "stop_when": stop_when, "stop_layers": stop_layers})
        reason = _stop_reason(cfg, 1, dense, masks, order)
        assert (reason is not None) == stops, (stop_when, stop_layers, reason)


def test_authors_imp_end_to_end(tmp_path):
    """Cumulative target, biases pruned, rewind with the full step count, the authors' stop rule."""
    from prunelens.pruning.masks import cumulative_ratio

    cfg = sifting_config(tmp_path, train={"validate_every": 2, "sampler": "with_replacement"},
                         prune={"rounds": 2, "rate": 0.3, "target": "cumulative", "biases": True,
                                "retrain": "rewind", "rewind_step": 2, "rewind_replay": "full",
                                "stop_when": "not_above", "stop_layers": "authors"})
    pool = prune_run(cfg, log=lambda *_: None)
    total = cfg.train.epochs * (256 // 64)
    assert [lv.index for lv in pool.levels] == [0, 1, 2]
    for lv in pool.levels:
        assert lv.info["steps"] == total                                       # not total - rewind_step
        assert lv.info["periodic_validation"]["steps"] == ref.validation_steps(total, 2)
        masks = lv.load_masks()
        assert "layers.fc1.bias" in masks and "layers.classifier.weight" not in masks
        for layer in ("fc1", "fc2"):                                           # widths [16, 16]
            n = masks[f"layers.{layer}.weight"].numel() + masks[f"layers.{layer}.bias"].numel()
            cut = n - int(masks[f"layers.{layer}.weight"].sum()) - int(masks[f"layers.{layer}.bias"].sum())
            assert cut <= int(cumulative_ratio(0.3, lv.index) * n)
            assert cut >= int(cumulative_ratio(0.3, lv.index) * n) - 3        # a few ties at most


def test_the_new_prune_options_default_to_todays_behaviour():
    base = {"model": FCN, "data": {"name": "digits"}}
    explicit = {**base, "prune": {"target": "of_alive", "biases": False, "rewind_replay": "rest",
                                  "stop_when": "below", "stop_layers": "all"}}
    assert RunConfig(**base).identity_hash() == RunConfig(**explicit).identity_hash()
    with pytest.raises(ConfigError, match="retrain rewind"):
        validate_section(RunConfig, {**base, "prune": {"rewind_replay": "full"}})


@pytest.mark.parametrize("name", ["fcn_imagenet32", "fcn_imagenet32_modulo10", "fcn_imagenet32_data03",
                                  "fcn_imagenet32_superclasses"])
def test_the_shipped_authors_configs_run_scaled_down(tmp_path, name):
    """The shipped configs, every authors' option as written, on a tiny ImageNet32 folder with the
    sizes scaled down (nothing held out: data.val_size 0)."""
    from pathlib import Path

    from prunelens.config import apply_overrides, read_yaml
    from test_imagenet32 import write_imagenet32

    root = write_imagenet32(tmp_path / "inet", batches=(12, 12, 16), n_val=9)
    shipped = Path(__file__).parents[1] / "configs" / "sifting" / f"{name}.yaml"
    raw = apply_overrides(read_yaml(shipped), [
        f"data.root={root}", f"output_dir={tmp_path / 'runs'}", "model.widths=[8, 8, 8]",
        "train.epochs=2", "train.max_steps_per_epoch=3", "train.batch_size=4", "train.device=cpu",
        "train.validate_every=2", "train.validate_images=5", "prune.rewind_step=1",
        "prune.min_alive_units=0.05", "evaluate.suites=[accuracy]"])
    assert raw["data"]["val_size"] == 0 and raw["train"]["sampler"] == "with_replacement"
    cfg = resolve_runs(raw)[0]
    p = cfg.prune
    assert (p.target, p.biases, p.rewind_replay, p.stop_when, p.stop_layers) == (
        "cumulative", True, "full", "not_above", "authors")
    assert cfg.train.validate_split == "test"
    pool = prune_run(cfg.model_copy(update={"prune": p.model_copy(update={"rounds": 1})}),
                     log=lambda *_: None)
    assert [lv.index for lv in pool.levels] == [0, 1]
    assert all(lv.info["steps"] == 6 and lv.info["periodic_validation"]["steps"] == [0, 2, 4, 6]
               for lv in pool.levels)


@pytest.mark.parametrize("buffers", ["restore", "reset"])
def test_rewound_levels_restore_or_reset_the_running_averages(tmp_path, buffers):
    """reset: the running averages start again as at level 0 (mean 0, var 1, then the first batch
    copied; IMP.py:136-144, 162-163), seen by the validation at step 0 of a rewound level."""
    from prunelens.runfolder import Layout

    cfg = sifting_config(tmp_path, train={"validate_every": 2, "validate_images": 40},
                         prune={"retrain": "rewind", "rewind_step": 3, "rewind_replay": "full",
                                "rewind_buffers": buffers})
    pool = prune_run(cfg, log=lambda *_: None)
    rewind = pool.level(0).tensors(Layout.REWIND)
    assert int(rewind["layers.bn1.num_batches_tracked"]) == 3
    data = RunData(cfg.data, cfg.seed)
    first = DataLoader(Subset(data.split("val"), range(40)), batch_size=64)

    def error_at_step_0(reset):
        model = create_model("fcn", 4, **{k: v for k, v in FCN.items() if k != "name"})
        model.load_state_dict(rewind)
        if reset:
            for name, buf in model.named_buffers():
                buf.copy_(torch.zeros_like(buf) if "mean" in name or "tracked" in name else torch.ones_like(buf))
        with torch.no_grad():
            for name, mask in pool.levels[1].load_masks().items():
                dict(model.named_parameters())[name].mul_(mask)
        return 1 - evaluate_model(model, first, spec_for(model), torch.device("cpu"))["acc"]

    want, other = error_at_step_0(buffers == "reset"), error_at_step_0(buffers != "reset")
    assert want != other                                       # the two choices are told apart here
    assert pool.levels[1].info["periodic_validation"]["errors"][0] == pytest.approx(want, abs=1e-12)


def test_validating_on_an_empty_split_is_refused_before_training(tmp_path):
    from test_imagenet32 import write_imagenet32

    root = write_imagenet32(tmp_path / "inet")
    raw = tiny_config_dict(tmp_path, data={"name": "imagenet32", "root": str(root), "val_size": 0},
                           train={"validate_every": 2})
    raw["data"] = {"name": "imagenet32", "root": str(root), "val_size": 0}
    raw["model"] = dict(FCN, widths=[4])
    cfg = resolve_runs(raw)[0]
    with pytest.raises(ConfigError, match="split is empty"):
        prune_run(cfg, log=lambda *_: None)
    assert not cfg.run_dir.exists()                          # refused before the run folder is made


def test_two_ranks_with_replacement_load_the_global_batch_of_one_process(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from test_distributed import _fake_ranks, _Indexed
    from prunelens.pruning.runner import _Loaders

    def loaders():
        cfg = resolve_runs(tiny_config_dict(tmp_path, train={"batch_size": 16,
                                                             "sampler": "with_replacement"}))[0]
        data = SimpleNamespace(split=lambda s: _Indexed(203 if s == "train" else 10),
                               entry=SimpleNamespace(splits=("train", "val", "test")))
        return _Loaders(cfg, data)

    single = [y.tolist() for _, y in loaders().for_epoch(1)(2)]
    assert len(single) == 203 // 16
    shards = []
    for r in (0, 1):
        _fake_ranks(monkeypatch, r, 2)
        shards.append([y.tolist() for _, y in loaders().for_epoch(1)(2)])
    for i, step in enumerate(single):
        assert len(shards[0][i]) == len(shards[1][i]) == 8
        assert sorted(shards[0][i] + shards[1][i]) == sorted(step)
