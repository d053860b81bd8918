"""Mask selection equals torch.nn.utils.prune; sparsity follows the schedule; masks stay exact."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelens.models import create_model
from prunelens.pruning import Masker, layer_sparsity, magnitude_masks, prunable_parameters, sparsity
from prunelens.pruning.masks import alive_unit_fraction, dense_masks, mask_sparsity


def _torch_global_masks(model, names, rate, rounds):
    modules = dict(model.named_modules())
    pairs = [(modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1]) for n in names]
    for _ in range(rounds):
        torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=rate)
    return {n: getattr(m, f"{attr}_mask").bool() for n, (m, attr) in zip(names, pairs)}


@pytest.mark.parametrize("name", ["small_resnet", "small_vit", "fcn"])
def test_global_masks_equal_torch_prune_over_rounds(name):
    torch.manual_seed(0)
    kw = {"input_shape": (3, 8, 8), "widths": (32, 16)} if name == "fcn" else {}
    if name == "small_vit":
        kw = {"image_size": 32, "hidden_dim": 32, "mlp_dim": 64, "num_layers": 2}
    model = create_model(name, 10, **kw)
    params = prunable_parameters(model)
    if name == "small_vit":  # the attention input projection is prunable (the paper's code missed it)
        assert any(n.endswith("in_proj_weight") for n in params)
    ours = dense_masks(params)
    for _ in range(3):
        ours = magnitude_masks({n: p.detach() for n, p in params.items()}, ours, 0.2, "global")
    reference = create_model(name, 10, **kw)
    reference.load_state_dict(model.state_dict())
    theirs = _torch_global_masks(reference, list(params), 0.2, 3)
    for n in params:
        assert torch.equal(ours[n], theirs[n]), n


def test_layerwise_masks_equal_torch_l1_unstructured():
    torch.manual_seed(1)
    model = create_model("lenet5", 10)
    params = prunable_parameters(model)
    ours = dense_masks(params)
    for _ in range(2):
        ours = magnitude_masks({n: p.detach() for n, p in params.items()}, ours, 0.3, "layerwise")
    modules = dict(model.named_modules())
    for n in params:
        module_name, attr = n.rsplit(".", 1)
        for _ in range(2):
            torch_prune.l1_unstructured(modules[module_name], attr, amount=0.3)
        assert torch.equal(ours[n], getattr(modules[module_name], f"{attr}_mask").bool()), n


def test_sparsity_after_k_rounds_follows_rate():
    torch.manual_seed(0)
    model = create_model("small_resnet", 10)
    params = prunable_parameters(model)
    total = sum(p.numel() for p in params.values())
    masks = dense_masks(params)
    for k in range(1, 8):
        masks = magnitude_masks({n: p.detach() for n, p in params.items()}, masks, 0.2, "global")
        overall, _ = mask_sparsity(masks)
        assert overall == pytest.approx(1 - 0.8 ** k, abs=k / total)


def test_min_alive_caps_the_last_round():
    w = {"a": torch.arange(1.0, 101.0)}
    masks = magnitude_masks(w, {"a": torch.ones(100, dtype=torch.bool)}, 0.9, "global", min_alive=25)
    assert int(masks["a"].sum()) == 25 and bool(masks["a"][-25:].all())


def test_exclusions_and_attention_parameters():
    model = create_model("small_vit", 10, image_size=32, hidden_dim=32, mlp_dim=64, num_layers=2)
    all_params = prunable_parameters(model)
    kept = prunable_parameters(model, exclude_first_layer=True, exclude_classifier=True,
                               exclude_attention=True, exclude=["*mlp.0*"])
    assert "conv_proj.weight" in all_params and "conv_proj.weight" not in kept
    assert "heads.head.weight" not in kept
    assert not any("self_attention" in n for n in kept)
    assert not any("mlp.0" in n for n in kept) and any("mlp.3" in n for n in kept)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pruned_weights_stay_exactly_zero_through_training(optimizer):
    torch.manual_seed(0)
    model = create_model("fcn", 4, input_shape=(1, 6, 6), widths=(16,))
    params = prunable_parameters(model)
    masks = magnitude_masks({n: p.detach() for n, p in params.items()}, dense_masks(params), 0.7)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    masker = Masker(params, masks).attach(opt)
    masker.apply_()
    for _ in range(20):
        x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 4, (32,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, p in params.items():
        assert torch.all(p[~masks[n]] == 0), n
        assert p[masks[n]].abs().min() > 0  # the surviving weights did train
        state = opt.state[p]
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if key in state:
                assert torch.all(state[key][~masks[n]] == 0), (n, key)
    assert sparsity(model, params) == pytest.approx(mask_sparsity(masks)[0])


def test_layer_sparsity_report_and_alive_units():
    model = create_model("fcn", 3, input_shape=(1, 2, 2), widths=(2,))
    with torch.no_grad():
        model.layers.fc1.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1, 0, 2, 0]]))
    rows = {r["name"]: r for r in layer_sparsity(model)}
    assert rows["layers.fc1.weight"]["zeros"] == 6 and rows["layers.fc1.weight"]["sparsity"] == 0.75
    masks = {"a": torch.tensor([[0, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)}
    assert alive_unit_fraction(masks) == {"a": 0.5}
    assert math.isclose(mask_sparsity(masks)[0], 0.75)
