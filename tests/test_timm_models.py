"""timm models by name (issue #23): one tiny model per family, random weights, no download.

Every number is checked against a reference that does not go through the spec: the classifier's
input captured by a hook, Captum's LayerGradCam and IntegratedGradients, attention probabilities
recomputed from the QKV projection, and hand-made Hugging Face cache folders.
"""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from _explain_helpers import images, lively

from prunelens._compat import torchvision
from prunelens.errors import ModelError
from prunelens.explain import gradcam, integrated_gradients
from prunelens.explain.attention import all_attention
from prunelens.explain.pipeline import applicable_methods
from prunelens.models import create_model, spec_for, spec_of
from prunelens.models.registry import read_weights

torchvision()  # timm imports torchvision: on a CPU torch, through prunelens's workaround first
pytest.importorskip("timm")
captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
#: one tiny model per family: name, options, whether it has a class token
FAMILIES = {
    "vit": ("timm:vit_tiny_patch16_224", VIT, True),
    "vit_registers": ("timm:vit_tiny_patch16_224", {**VIT, "reg_tokens": 2}, True),
    "vit_gap": ("timm:vit_tiny_patch16_224", {**VIT, "class_token": False, "global_pool": "avg"}, False),
    "deit_distilled": ("timm:deit_tiny_distilled_patch16_224", VIT, True),
    "convnext": ("timm:convnext_atto", {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1)}, False),
    "mobilenet": ("timm:mobilenetv3_small_050", {}, False),
    "regnet": ("timm:regnetx_002", {}, False),
    "swin": ("timm:swin_tiny_patch4_window7_224",
             {"img_size": 32, "window_size": 2, "depths": (1, 1), "num_heads": (1, 2), "embed_dim": 16}, False),
}


def tiny(family: str, dtype=torch.float64):
    name, options, _ = FAMILIES[family]
    torch.manual_seed(0)
    return lively(create_model(name, 5, **options)).to(dtype)


def _classifier_input(model, x):
    """The input of the classifier, by a hook; with several heads (DeiT's class and distillation
    heads, whose logits timm averages) the mean of their inputs."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    captured = []
    handles = [h.register_forward_pre_hook(lambda _m, args: captured.append(args[0])) for h in heads]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(captured) == len(heads)
    return torch.stack(captured).mean(0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_penultimate_features_are_the_classifier_input(family):
    model, x = tiny(family), images(2)
    with torch.no_grad():
        ours = spec_for(model).penultimate_features(model, x)
        ref = _classifier_input(model, x)
    assert ref.dim() == 2 and ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_spec_of_a_name_agrees_with_the_spec_of_its_model(family):
    name, options, has_cls = FAMILIES[family]
    model = tiny(family)
    by_name, by_model = spec_of(name, options), spec_for(model)
    for attribute in ("mean", "std", "num_prefix_tokens", "has_spatial_features", "tokens",
                      "has_class_token", "family"):
        assert getattr(by_name, attribute) == getattr(by_model, attribute), attribute
    assert by_model.has_class_token == has_cls
    # the prefix tokens are timm's own count (class, distillation, register tokens)
    assert by_model.num_prefix_tokens == getattr(model, "num_prefix_tokens", 0)
    assert by_model.classifier(model) in dict(model.named_parameters())
    assert by_model.first_layer(model) == next(iter(by_model.prunable(model)))


def _hand_token_gradcam(model, x, n_prefix, channels_last):
    """GradCAM from first principles on the tokens entering the last block (token models) or the
    last stage's NHWC output (Swin)."""
    target = model(x).argmax(1)
    if channels_last:
        layer, on_input = model.layers[-1], False
    else:
        layer, on_input = model.blocks[-1], True
    kept = []
    handle = (layer.register_forward_pre_hook(lambda _m, a: kept.append(a[0])) if on_input
              else layer.register_forward_hook(lambda _m, _a, out: kept.append(out)))
    try:
        logits = model(x)
    finally:
        handle.remove()
    act = kept[0]
    grad, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), act)
    act = act.detach()
    if not channels_last:
        side = math.isqrt(act.shape[1] - n_prefix)
        act = act[:, n_prefix:].reshape(len(x), side, side, -1)
        grad = grad[:, n_prefix:].reshape(len(x), side, side, -1)
    act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)
    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True).clamp(min=0)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradcam_equals_captum_or_the_hand_computation(family):
    model, x = tiny(family), images(2)
    ours = gradcam(model, x)
    if family == "swin":
        ref = _hand_token_gradcam(model, x, 0, channels_last=True)
    elif hasattr(model, "num_prefix_tokens"):
        ref = _hand_token_gradcam(model, x, model.num_prefix_tokens, channels_last=False)
    else:  # NCHW stages: Captum on the last feature_info stage, named independently here
        layer = model.get_submodule(model.feature_info[-1]["module"])
        target = model(x).argmax(1)
        cam = captum_attr.LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
        ref = captum_attr.LayerAttribution.interpolate(cam, (32, 32), "bilinear")[:, 0]
    assert ours.shape == (2, 32, 32) and ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["vit_registers", "convnext"])
def test_integrated_gradients_equal_captum(family):
    model, x = tiny(family), images(2)
    baseline, target = torch.rand_like(x), torch.tensor([3, 1])
    ref = captum_attr.IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=8)
    ours = integrated_gradients(model, x, target, baseline, n_steps=8).attributions
    assert ref.abs().max() > 0
    assert float((ours - ref).norm() / ref.norm()) <= 1e-6


def _qkv_probabilities(model, x):
    """softmax(q·kᵀ·scale) per block, from the input each timm Attention receives."""
    inputs = []
    handles = [blk.attn.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for blk in model.blocks]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    probs = []
    for blk, tokens in zip(model.blocks, inputs):
        attn = blk.attn
        b, n, c = tokens.shape
        q, k, _ = (attn.qkv(tokens).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
                   .permute(2, 0, 3, 1, 4))
        scale = (c // attn.num_heads) ** -0.5
        probs.append(torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1))
    return probs, logits


@pytest.mark.parametrize("family", ["vit", "vit_registers", "deit_distilled"])
def test_attention_equals_softmax_of_qk_and_leaves_fused_attention_as_it_was(family):
    model, x = tiny(family), images(2)
    fused = [blk.attn.fused_attn for blk in model.blocks]
    ours = all_attention(model, x)
    ref, logits = _qkv_probabilities(model, x)
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits)
    assert {"attention", "rollout", "gradcam"} <= set(applicable_methods(model))


@pytest.mark.parametrize("family", ["vit_gap", "convnext", "swin"])
def test_attention_is_not_applicable_without_a_class_token_with_the_reason(family):
    model = tiny(family)
    spec = spec_for(model)
    assert not {"attention", "rollout"} & set(applicable_methods(model))
    reason = spec.attention_not_applicable(model, "attention")
    assert "class token" in reason and spec.family in reason


def test_lost_keys_are_the_last_blocks_keys_on_the_patch_grid():
    model, x = tiny("vit_registers"), images(2)
    inputs = []
    handle = model.blocks[-1].attn.register_forward_pre_hook(lambda _m, a: inputs.append(a[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        ours = spec_for(model).lost_tokens(model, x)
    tokens = inputs[0]
    b, n, c = tokens.shape
    k = model.blocks[-1].attn.qkv(tokens)[..., c:2 * c]          # heads concatenated, in order
    ref = k[:, model.num_prefix_tokens:].reshape(b, 4, 4, c).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, ref)


def test_normalisation_comes_from_pretrained_cfg():
    vit = spec_of("timm:vit_tiny_patch16_224", VIT)
    deit = spec_of("timm:deit_tiny_patch16_224", VIT)
    assert vit.mean == (0.5, 0.5, 0.5) and vit.std == (0.5, 0.5, 0.5)
    assert deit.mean == pytest.approx((0.485, 0.456, 0.406))
    x = torch.full((1, 3, 2, 2), 0.75)
    torch.testing.assert_close(vit.normalize(x), torch.full_like(x, 0.5))


def test_model_options_go_to_timm_and_bad_ones_are_model_errors():
    model = create_model("timm:vit_tiny_patch16_224", 3, **VIT)
    assert len(model.blocks) == 2 and model.patch_embed.patch_size == (8, 8)
    with pytest.raises(ModelError, match="no model 'not_a_model_at_all'"):
        create_model("timm:not_a_model_at_all", 3)
    with pytest.raises(ModelError, match="cannot build model"):
        create_model("timm:convnext_atto", 3, no_such_option=1)


def test_without_timm_a_timm_name_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ModelError) as info:
        create_model("timm:convnext_atto", 3)
    assert "pip install 'prunelens[timm]'" in str(info.value) and "\n" not in str(info.value)
    assert create_model("small_resnet", 3) is not None  # the rest of prunelens works


def test_cli_without_timm_exits_2(monkeypatch, tmp_path, capsys):
    from prunelens.cli import main
    monkeypatch.setitem(sys.modules, "timm", None)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "model": {"name": "timm:convnext_atto"}}))
    assert main(["prune", str(config)]) == 2
    assert "pip install 'prunelens[timm]'" in capsys.readouterr().err


def _hub_cache(root, repo, filename, state):
    """A Hugging Face hub cache folder as huggingface_hub lays it out."""
    from safetensors.torch import save_file
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / filename))
    return snapshot / filename


def test_weights_timm_come_from_the_hub_cache_only(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    name = "timm:regnetx_002"
    with pytest.raises(ModelError) as info:
        create_model(name, 3, weights="timm")
    message = str(info.value)
    assert "timm/regnetx_002.pycls_in1k" in message and str(tmp_path / "hub") in message
    assert "never downloads" in message and "\n" not in message
    torch.manual_seed(1)
    source = create_model(name, 3)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    _hub_cache(tmp_path / "hub", "timm/regnetx_002.pycls_in1k", "model.safetensors", state)
    loaded = create_model(name, 3, weights="timm")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    # a local .safetensors file works as well
    path = tmp_path / "local.safetensors"
    from safetensors.torch import save_file
    save_file(state, str(path))
    assert set(read_weights(name, path)) == set(state)
    with pytest.raises(ModelError, match="neither an existing file nor 'timm'"):
        create_model(name, 3, weights="imagenet")


E2E = {
    "deit": ("timm:deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
    "convnext": ("timm:convnext_atto", {}),
    "efficientnet": ("timm:efficientnet_b0", {}),
    **{k: v[:2] for k, v in FAMILIES.items() if k in ("vit_registers", "deit_distilled", "regnet", "swin")},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(E2E))
def test_prunelens_run_end_to_end(family, tmp_path):
    from prunelens.cli import main
    from prunelens.results import load_results
    name, options = E2E[family]
    config = {
        "seed": 0, "output_dir": str(tmp_path / "runs"),
        "data": {"name": "synthetic", "image_size": 32, "num_classes": 4, "n_train": 128,
                 "n_val": 32, "n_test": 48},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.002, "optimizer": "adamw", "device": "cpu"},
        "prune": {"rate": 0.6, "rounds": 2, "epochs": 1, "min_alive_units": 0.0},
        "evaluate": {"interpretability": {"n_images": 4}, "discovery": {"n_images": 4},
                     "alignment": {"n_images": 8}, "sharpness": {"n_images": 8, "hessian_images": 4, "n_draws": 1},
                     "transfer": {"n_train": 32, "n_test": 16, "c_grid": [1.0], "shots": [1], "n_draws": 2}},
        "runs": [{"name": family, "model": {"name": name, **options}}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0
    frame = load_results([tmp_path / "runs" / family])
    assert set(frame["suite"]) == {"accuracy", "interpretability", "discovery", "alignment", "connectivity",
                                   "psp", "sharpness", "transfer"}
    assert sorted(frame["level"].unique()) == [0, 1, 2]
    methods = set(frame[frame.suite == "interpretability"]["method"])
    model = create_model(name, 4, **options)
    assert methods == set(applicable_methods(model)) - {"guided_backprop"} | (methods & {"guided_backprop"})
    pool = json.loads((tmp_path / "runs" / family / "pool.json").read_text())
    assert pool["config"]["model"]["name"] == name
    html = (tmp_path / "runs" / family / "report" / "index.html").read_text()  # one run: its own report
    for section in ("RQ1", "RQ2", "RQ3", "PSP-entropy", "Connectivity"):
        assert section in html


def test_models_command_lists_the_suites_that_apply_and_why_not(capsys):
    from prunelens.cli import main
    assert main(["models", "fcn", "timm:convnext_atto"]) == 0
    out = capsys.readouterr().out.splitlines()
    fcn, convnext = out.index(next(l for l in out if l.startswith("fcn:"))), \
        out.index(next(l for l in out if l.startswith("timm:convnext_atto:")))
    assert "discovery" not in out[fcn] and "discovery" in out[convnext]
    assert any(l.startswith("  not discovery: LOST needs a spatial feature map") for l in out[fcn:convnext])
    assert any("method 'attention'" in l and "class token" in l for l in out[convnext:])
    assert not any("gradcam" in l for l in out[convnext:])
    assert main(["models", "timm:no_such_model_xyz"]) == 2


def test_psp_neurons_of_swin_leave_out_the_window_attention_layers():
    from prunelens.analysis.psp_entropy import psp_entropy
    model = tiny("swin", torch.float32).eval()
    layers = spec_for(model).neuron_layers(model)
    windowed = {n for n, m in model.named_modules() if type(m).__name__ == "WindowAttention"}
    assert layers and not any(n.startswith(w + ".") for n in layers for w in windowed)
    assert "layers.0.blocks.0.mlp.fc1" in layers
    x = images(8, dtype=torch.float32)
    data = [(x[:4], torch.tensor([0, 1, 2, 3])), (x[4:], torch.tensor([4, 0, 1, 2]))]
    result = psp_entropy(model, data, 5)
    assert set(result.per_neuron) == set(layers)
    # one entropy per output unit of each layer, finite and non-negative
    assert result.per_neuron["layers.0.blocks.0.mlp.fc1"].shape == (layers["layers.0.blocks.0.mlp.fc1"].out_features,)
    assert all(bool((torch.isfinite(h) & (h >= 0)).all()) for h in result.per_neuron.values())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_design_the_papers_claims_read_comes_from_the_model(family):
    """Self-attention makes a transformer (RQ1 predicts +), its absence a convolutional net (−)."""
    from prunelens.suite import get_suite

    name, options, _ = FAMILIES[family]
    design = spec_for(create_model(name, 5, **options)).design
    transformers = {"vit", "vit_registers", "vit_gap", "deit_distilled", "swin"}
    assert design == ("transformer" if family in transformers else "convolutional")
    (rq1,) = [c for c in get_suite("interpretability").claims if c.id == "rq1_attribution_vs_accuracy"]
    assert rq1.expected_for(f"timm:{family}", design) == (1 if family in transformers else -1)
