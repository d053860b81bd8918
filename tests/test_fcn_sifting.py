"""The FCN as Pellegrini & Biroli ran it (``input_norm: batch``, ``init: xavier_normal``) against a
NumPy transcription of their code (tests/sifting_reference.py): one SGD step, the running averages,
evaluation mode; the initialisation's statistics; the spec's prunable weights; and the defaults,
which keep the plain net and its identity hash."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sifting_reference as ref
from prunelens.config import RunConfig
from prunelens.errors import ConfigError
from prunelens.models import create_model, spec_for
from prunelens.models.builtins import FCN, InputBatchNorm

SHAPE, WIDTHS, CLASSES = (3, 2, 2), (7, 6, 5), 4


def authors_fcn(seed=0):
    torch.manual_seed(seed)
    model = create_model("fcn", CLASSES, input_shape=list(SHAPE), widths=list(WIDTHS),
                         input_norm="batch", init="xavier_normal").double()
    # non-trivial gamma/beta/bias so that every term of the step is exercised
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def batches(n=3, size=16, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(size, *SHAPE)) * 2.0 + 0.5, rng.integers(0, CLASSES, size)) for _ in range(n)]


def torch_params(model):
    return ref.params_from_torch(model)


def assert_params_equal(model, params, atol):
    for got, want in zip(torch_params(model), params):
        for key in ("W", "b", "gamma", "beta"):
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=key)


def test_the_oracle_matches_finite_differences():
    model = authors_fcn()
    params = torch_params(model)
    (x, y), = batches(1)
    logits, caches, _ = ref.forward(x, params)
    grads = ref.gradients(params, caches, ref.cross_entropy(logits, y)[1], y)
    worst = 0.0
    for layer, p in enumerate(params):
        for key in ("W", "b", "gamma", "beta"):
            flat = p[key].reshape(-1)
            for i in range(0, flat.size, max(1, flat.size // 4)):
                old = flat[i]
                flat[i] = old + 1e-6
                up = ref.cross_entropy(ref.forward(x, params)[0], y)[0]
                flat[i] = old - 1e-6
                down = ref.cross_entropy(ref.forward(x, params)[0], y)[0]
                flat[i] = old
                worst = max(worst, abs((up - down) / 2e-6 - grads[layer][key].reshape(-1)[i]))
    assert worst < 1e-7


def test_sgd_steps_equal_the_numpy_transcription():
    """Three steps of forward in training mode, mean cross-entropy and plain SGD (lr 0.1, no
    momentum): loss, every W, b, gamma, beta and the running averages as the authors' (float64)."""
    model = authors_fcn()
    params, running = torch_params(model), ref.initial_running(torch_params(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    norms = [m for m in model.modules() if isinstance(m, InputBatchNorm)]
    assert len(norms) == 4                                   # fc1, fc2, fc3 and the classifier
    model.train()
    for step, (x, y) in enumerate(batches(3)):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        params, running, ref_loss = ref.train_step(x, y, params, running, step, lr=0.1)
        assert abs(loss.item() - ref_loss) < 1e-9
        assert_params_equal(model, params, atol=1e-9)
        for norm, (mean, var) in zip(norms, running):
            np.testing.assert_allclose(norm.running_mean.numpy(), mean, rtol=0, atol=1e-12)
            np.testing.assert_allclose(norm.running_var.numpy(), var, rtol=0, atol=1e-12)
        assert int(norms[0].num_batches_tracked) == step + 1
    # step 0 copied the first batch's biased moments of the raw input (not blended into (0, 1))
    fresh = authors_fcn().train()
    x0 = torch.from_numpy(batches(1)[0][0])
    fresh(x0)
    first = fresh.layers.bn1
    assert torch.allclose(first.running_mean, x0.flatten(1).mean(0), atol=1e-12)
    assert torch.allclose(first.running_var, x0.flatten(1).var(0, unbiased=False), atol=1e-12)


def test_eval_mode_uses_the_running_averages():
    model = authors_fcn()
    params, running = torch_params(model), ref.initial_running(torch_params(model))
    x_test = batches(1, size=5, seed=7)[0][0]
    # before any training batch: mean 0, var 1 (IMP.py:141-144)
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x_test)).numpy()
    np.testing.assert_allclose(got, ref.forward(x_test, params, train=False, running=running)[0], atol=1e-10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (x, y) in enumerate(batches(2)):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimizer.step()
        params, running, _ = ref.train_step(x, y, params, running, step)
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x_test)).numpy()
        again = model(torch.from_numpy(x_test[:2])).numpy()   # per example: no batch statistics
    want = ref.forward(x_test, params, train=False, running=running)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(again, want[:2], rtol=0, atol=1e-9)
    assert int(model.layers.bn1.num_batches_tracked) == 2        # eval passes do not update


def test_xavier_normal_init_and_the_normalisations_start_at_identity():
    torch.manual_seed(0)
    model = FCN(10, input_shape=(3, 32, 32), widths=(1024, 512), init="xavier_normal", input_norm="batch")
    for name, fan_in, fan_out in (("fc1", 3072, 1024), ("fc2", 1024, 512), ("classifier", 512, 10)):
        layer = getattr(model.layers, name)
        w = layer.weight.detach().double()
        std = math.sqrt(2.0 / (fan_in + fan_out))
        n = w.numel()
        # sample std within 5 standard errors of N(0, 2/(fan_in+fan_out)); torch's default would be
        # uniform with std 1/sqrt(3 fan_in), e.g. 0.0104 vs 0.0221 for fc1
        assert abs(w.std().item() / std - 1) < 5 * math.sqrt(1 / (2 * n))
        assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
        kurtosis = ((w - w.mean()) ** 4).mean().item() / w.var().item() ** 2
        assert abs(kurtosis - 3) < 5 * math.sqrt(24 / n) + 0.05   # normal, not uniform (1.8)
        assert torch.count_nonzero(layer.bias) == 0
    for norm in (model.layers.bn1, model.layers.bn2, model.layers.bn_classifier):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
        assert norm.eps == 1e-10 and norm.beta == 0.99


def test_spec_prunes_only_the_linear_weights():
    model = authors_fcn().float()
    spec = spec_for(model)
    assert list(spec.prunable(model)) == ["layers.fc1.weight", "layers.fc2.weight", "layers.fc3.weight",
                                          "layers.classifier.weight"]
    assert spec.first_layer(model) == "layers.fc1.weight"
    assert spec.second_layer(model) == "layers.fc2.weight"
    assert spec.classifier(model) == "layers.classifier.weight"
    assert spec.first_layer_units(model) == "rows"
    assert spec.norm_modules(model) == {"layers.bn1", "layers.bn2", "layers.bn3", "layers.bn_classifier"}
    images = spec.first_layer_images(model, model.layers.fc1.weight)
    assert images.shape == (WIDTHS[0], *SHAPE)
    # the probe's features are the classifier's input: after bn_classifier
    x = torch.randn(6, *SHAPE)
    model.eval()
    captured = []
    handle = model.layers.classifier.register_forward_pre_hook(lambda _, a: captured.append(a[0]))
    model(x)
    handle.remove()
    assert torch.allclose(spec.penultimate_features(model, x), captured[0])


def test_defaults_keep_the_plain_net_and_its_identity():
    torch.manual_seed(3)
    plain = FCN(5, input_shape=SHAPE, widths=WIDTHS)
    torch.manual_seed(3)
    explicit = FCN(5, input_shape=SHAPE, widths=WIDTHS, input_norm="none", init="default")
    torch.manual_seed(3)
    by_hand = [torch.nn.Linear(12, 7), torch.nn.Linear(7, 6), torch.nn.Linear(6, 5), torch.nn.Linear(5, 5)]
    names = ["layers.fc1", "layers.fc2", "layers.fc3", "layers.classifier"]
    want = {f"{n}.{k}": v for n, m in zip(names, by_hand) for k, v in m.state_dict().items()}
    for model in (plain, explicit):
        got = model.state_dict()
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    base = {"model": {"name": "fcn", "input_shape": [3, 8, 8], "widths": [16, 16]}, "data": {"name": "digits"}}
    same = {"model": {**base["model"], "input_norm": "none", "init": "default"}, "data": {"name": "digits"}}
    authors = {"model": {**base["model"], "input_norm": "batch", "init": "xavier_normal"}, "data": {"name": "digits"}}
    hashes = [RunConfig(**c).identity_hash() for c in (base, same, authors)]
    assert hashes[0] == hashes[1] != hashes[2]
    # the hash a config without the new options had before they existed: no model option beyond defaults
    assert "model.input_norm" not in RunConfig(**base)._beyond_defaults()


@pytest.mark.parametrize("option, value", [("input_norm", "bn"), ("init", "xavier")])
def test_unknown_option_values_are_refused_when_the_config_loads(option, value):
    with pytest.raises(ConfigError, match=f"{option}.*must be one of"):
        RunConfig(model={"name": "fcn", option: value}, data={"name": "digits"})
