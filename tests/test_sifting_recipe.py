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
