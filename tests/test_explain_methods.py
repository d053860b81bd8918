"""GradCAM, guided backprop and Guided GradCAM against Captum (oracle) and hand computations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _explain_helpers import images, lively, small
from torch import nn

from prunelens.errors import DataError
from prunelens.explain import gradcam, guided_backprop, guided_gradcam
from prunelens.explain._common import capture
from prunelens.explain.gradients import gradcam_site, gradcam_with_logits
from prunelens.models import create_model, spec_for

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _captum_gradcam(model, x, target):
    layer = spec_for(model).gradcam_layer(model)
    cam = captum_attr.LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return captum_attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[:, 0]


@pytest.mark.parametrize("name", ["small_resnet", "lenet5"])
def test_gradcam_equals_captum_layergradcam_relu_bilinear(name):
    model, x = small(name), images()
    ours = gradcam(model, x)
    ref = _captum_gradcam(model, x, _predicted(model, x))
    assert ours.shape == (3, 32, 32)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_gradcam_explicit_target_differs_from_prediction():
    model, x = small("small_resnet"), images()
    predicted = _predicted(model, x)
    other = (predicted + 1) % 5
    torch.testing.assert_close(gradcam(model, x, other), _captum_gradcam(model, x, other), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(gradcam(model, x, other), gradcam(model, x))
    torch.testing.assert_close(gradcam(model, x, 2), gradcam(model, x, torch.full((3,), 2)))


def test_gradcam_rejects_bad_targets_and_inputs():
    model, x = small("small_resnet"), images()
    with pytest.raises(DataError, match=r"\[0, 5\)"):
        gradcam(model, x, torch.tensor([0, 1, 7]))
    with pytest.raises(DataError, match="one per image"):
        gradcam(model, x, torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"\(B, C, H, W\)"):
        gradcam(model, x[0])


def _hand_gradcam_tokens(model, x, layer, on_input, drop_first, channels_last_grid):
    """GradCAM from first principles: d(score)/d(site), weights = mean over cells, ReLU, bilinear."""
    target = _predicted(model, x)
    with capture(layer, on_input) as site:
        logits = model(x.requires_grad_(True))
    score = logits.gather(1, target[:, None]).sum()
    grad, = torch.autograd.grad(score, site.value)
    act = site.value.detach()
    if drop_first:  # ViT tokens (B, 1 + h*w, C): CLS first
        side = int((act.shape[1] - 1) ** 0.5)
        act = act[:, 1:].reshape(act.shape[0], side, side, -1)
        grad = grad[:, 1:].reshape(grad.shape[0], side, side, -1)
    if channels_last_grid or drop_first:
        act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)
    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True).clamp(min=0)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def test_vit_gradcam_uses_tokens_entering_last_block():
    model, x = small("small_vit"), images()
    layer = spec_for(model).gradcam_layer(model)
    # the spec's layer output: patch tokens never reach the class-token classifier
    with capture(layer) as site:
        logits = model(x.clone().requires_grad_(True))
    grad, = torch.autograd.grad(logits[:, 0].sum(), site.value)
    assert grad[:, 1:].abs().max() == 0 and grad[:, 0].abs().max() > 0
    assert gradcam_site(model, spec_for(model)) == (layer, True)
    ref = _hand_gradcam_tokens(model, x.clone(), layer, True, drop_first=True, channels_last_grid=False)
    ours = gradcam(model, x)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return create_model("swin_v2_t", 5).eval()


def test_swin_gradcam_permutes_channels_last_stage(swin):
    x = images(2, 64, torch.float32)
    layer = spec_for(swin).gradcam_layer(swin)
    ref = _hand_gradcam_tokens(swin, x.clone(), layer, False, drop_first=False, channels_last_grid=True)
    ours = gradcam(swin, x)
    assert ours.shape == (2, 64, 64) and ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_gradcam_with_logits_reports_the_prediction():
    model, x = small("small_resnet"), images()
    _, target, logits = gradcam_with_logits(model, x)
    torch.testing.assert_close(logits, model(x).detach())
    assert torch.equal(target, logits.argmax(1))


# ---- guided backprop ------------------------------------------------------------------------------
def test_guided_backprop_equals_captum_with_reused_inplace_relu():
    model, x = small("small_resnet"), images()
    assert model.layer1[0].relu.inplace  # torchvision's BasicBlock calls one in-place ReLU twice
    target = _predicted(model, x)
    ref = captum_attr.GuidedBackprop(model).attribute(x.clone(), target=target)
    ours = guided_backprop(model, x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)
    xg = x.clone().requires_grad_(True)
    plain, = torch.autograd.grad(model(xg).gather(1, target[:, None]).sum(), xg)
    assert not torch.allclose(ours, plain)  # the guided rule changed something


class _ModuleReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.r2(self.conv2(self.r1(self.conv1(x)))).flatten(1))


class _FunctionalReLUNet(_ModuleReLUNet):
    """Same network; its ReLUs are functional, one of them in place without using the result."""

    def forward(self, x):
        y = F.relu(self.conv1(x), inplace=True)
        z = self.conv2(y)
        z.relu_()
        return self.fc(z.flatten(1))


def test_guided_backprop_handles_functional_and_inplace_relus():
    torch.manual_seed(0)
    reference = _ModuleReLUNet().double().eval()
    functional = _FunctionalReLUNet().double().eval()
    functional.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    target = _predicted(reference, x)
    ref = captum_attr.GuidedBackprop(reference).attribute(x.clone(), target=target)
    torch.testing.assert_close(guided_backprop(functional, x, target), ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(guided_backprop(reference, x, target), ref, rtol=1e-12, atol=1e-15)
    # Captum only hooks nn.ReLU modules: on the functional net it returns the plain gradient
    plain = captum_attr.GuidedBackprop(functional).attribute(x.clone(), target=target)
    assert not torch.allclose(plain, ref)


def test_guided_gelu_passes_positive_part_of_local_gradient():
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 4, 3).double(), nn.Linear(4 * 4 * 4, 3).double()
    model = nn.Sequential(conv, nn.GELU(), nn.Flatten(), fc).eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2])
    h = conv(x)
    hd = h.detach().requires_grad_(True)
    local, = torch.autograd.grad(F.gelu(hd).sum(), hd)  # GELU'(h)
    upstream = fc.weight[target].view(2, 4, 4, 4)
    expected, = torch.autograd.grad(h, x, grad_outputs=(local * upstream).clamp(min=0), retain_graph=True)
    torch.testing.assert_close(guided_backprop(model, x.detach(), target), expected, rtol=1e-12, atol=1e-15)
    plain, = torch.autograd.grad(h, x, grad_outputs=local * upstream)
    torch.testing.assert_close(guided_backprop(model, x.detach(), target, guide_gelu=False), plain,
                               rtol=1e-12, atol=1e-15)


def test_vit_guided_backprop_without_gelu_rule_equals_captum():
    model, x = small("small_vit"), images()
    target = _predicted(model, x)
    ref = captum_attr.GuidedBackprop(model).attribute(x.clone(), target=target)  # no nn.ReLU in a ViT
    torch.testing.assert_close(guided_backprop(model, x, guide_gelu=False), ref, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(guided_backprop(model, x), ref)


def _plain_gradient(model, x):
    x = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(model(x)[:, 0].sum(), x)
    return grad


def test_guided_mode_ends_with_the_call():
    model, x = small("small_resnet"), images()
    before = _plain_gradient(model, x)
    guided_backprop(model, x)
    torch.testing.assert_close(_plain_gradient(model, x), before, rtol=0, atol=0)


def test_guided_gradcam_equals_captum_bilinear():
    model, x = small("small_resnet"), images()
    target = _predicted(model, x)
    layer = spec_for(model).gradcam_layer(model)
    ref = captum_attr.GuidedGradCam(model, layer).attribute(x.clone(), target=target, interpolate_mode="bilinear")
    ours = guided_gradcam(model, x)
    assert ours.shape == x.shape and ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("resnet50", 64), ("small_resnet", 32),
                                        ("vit_b_32", 64), ("small_vit", 32), ("swin_v2_t", 64),
                                        ("lenet5", 32), ("fcn", 8)])
def test_every_registry_architecture_through_the_pipeline(name, size):
    from prunelens.explain import IGSettings, applicable_methods, explain_batch
    from prunelens.explain.integrated import black_baseline

    torch.manual_seed(0)
    options = {"lenet5": {"in_channels": 3, "input_size": 32},
               "small_vit": {"image_size": 32, "patch_size": 8, "num_layers": 2, "hidden_dim": 32,
                             "mlp_dim": 64}, "fcn": {"input_shape": (3, 8, 8), "widths": (16,)},
               "vit_b_32": {"image_size": 64}}.get(name, {})  # the full ViT-B/32, on a 2x2 patch grid
    model = lively(create_model(name, 5, **options))
    spec = spec_for(model)
    methods = applicable_methods(model, spec)
    expected = {"fcn": ["integrated_gradients"]}.get(
        name, ["gradcam", "guided_gradcam", "integrated_gradients"]
        + (["attention", "rollout"] if "vit" in name else ["attention"] if "swin" in name else []))
    assert methods == expected
    x = images(1, size, torch.float32)
    result = explain_batch(model, x, methods, ig=IGSettings(n_steps=2))
    for method in methods:
        pooled = result.pooled(method)
        assert pooled.shape == (1, size, size) and torch.isfinite(pooled).all() and float(pooled.min()) >= 0
    if "gradcam" in methods:
        assert float(result.heatmaps["gradcam"].max()) > 0
    with torch.no_grad():
        out = model(x)[0, result.targets[0]] - model(black_baseline(x, spec))[0, result.targets[0]]
    ig_sum = result.heatmaps["integrated_gradients"].sum()
    assert float(result.completeness_gap[0]) == pytest.approx(float((ig_sum - out).abs()), rel=1e-3, abs=1e-4)


def test_swin_has_an_attention_map_but_no_rollout(swin):
    from prunelens.explain import applicable_methods
    from prunelens.explain.pipeline import ATTRIBUTION_METHODS

    spec = spec_for(swin)
    assert applicable_methods(swin, spec) == ["gradcam", "guided_gradcam", "integrated_gradients",
                                              "attention"]
    assert "no class token" in ATTRIBUTION_METHODS["rollout"].why_not(swin, spec)


def _swin_v2_received(block, tokens):
    """Attention received per token by Swin V2's definition (Liu et al. 2022, eq. 2) for one window
    covering the whole (B, H, W, C) input, zero-padded to the window as torchvision does: cosine
    attention scaled by exp(logit_scale) plus the block's continuous relative position bias,
    softmax, mean over heads and queries, cropped back to H×W."""
    b, h, w, c = tokens.shape
    ws = block.window_size[0]
    tokens = torch.nn.functional.pad(tokens, (0, 0, 0, ws - w, 0, ws - h))
    x = tokens.reshape(b, ws * ws, c)
    bias = block.qkv.bias.clone()
    bias[c:2 * c] = 0                                   # V2 drops the key bias
    qkv = torch.nn.functional.linear(x, block.qkv.weight, bias)
    q, k, _ = qkv.reshape(b, ws * ws, 3, block.num_heads, -1).unbind(2)
    q, k = (torch.nn.functional.normalize(t.transpose(1, 2), dim=-1) for t in (q, k))
    scale = torch.clamp(block.logit_scale, max=math.log(100.0)).exp()
    probs = torch.softmax(q @ k.transpose(-2, -1) * scale + block.get_relative_position_bias(), dim=-1)
    return probs.mean(1).mean(1).reshape(b, ws, ws)[:, :h, :w]


def test_swin_attention_map_is_the_attention_tokens_receive(swin):
    from prunelens.explain import IGSettings, explain_batch  # noqa: F401

    x = images(2, 64, torch.float32)
    spec = spec_for(swin)
    blocks = [m for m in swin.features[-1].modules() if type(m).__name__ == "ShiftedWindowAttentionV2"]
    inputs = {}
    handles = [b.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0])) for b in blocks]
    with torch.no_grad():
        swin(x)
    for handle in handles:
        handle.remove()
    # at 64 px the last stage is a 2x2 grid: one window, no shift
    expected = torch.stack([_swin_v2_received(b, inputs[b]) for b in blocks]).mean(0)
    with torch.no_grad():
        got = spec.window_attention_map(swin, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    maps = explain_batch(swin, x, ["attention"]).heatmaps["attention"]
    assert maps.shape == (2, 64, 64) and float(maps.min()) >= 0
    torch.testing.assert_close(maps, torch.nn.functional.interpolate(
        expected.unsqueeze(1), size=(64, 64), mode="bilinear", align_corners=False)[:, 0])


def test_window_attention_is_laid_back_on_the_grid_with_the_shift_undone():
    """A 6x6 grid, 4x4 windows (padded to 8x8), shift 2: torchvision's partition, inverted."""
    from types import SimpleNamespace

    from prunelens.models.spec import _received_on_grid

    b, h, w, ws, shift = 2, 6, 6, 4, 2
    grid = torch.arange(b * h * w, dtype=torch.float64).reshape(b, h, w) + 1
    padded = torch.nn.functional.pad(grid, (0, 2, 0, 2))
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2))          # as torchvision
    windows = rolled.view(b, 2, ws, 2, ws).permute(0, 1, 3, 2, 4).reshape(b * 4, ws * ws)
    probs = windows[:, None, None, :].expand(-1, 3, ws * ws, -1)                # every query, head
    block = SimpleNamespace(window_size=[ws, ws], shift_size=[shift, shift])
    torch.testing.assert_close(_received_on_grid(probs, (b, h, w, 8), block), grid)


def test_forward_goes_through_the_spec_when_it_has_one():
    from prunelens.explain import IGSettings, explain_batch
    from prunelens.models.spec import ResNetSpec

    class Doubling(ResNetSpec):
        def forward(self, model, x):
            return 2 * model(x)

    model, x = small("small_resnet"), images()
    plain = explain_batch(model, x, ["gradcam", "guided_gradcam", "integrated_gradients"],
                          spec=ResNetSpec(), ig=IGSettings(n_steps=4))
    doubled = explain_batch(model, x, ["gradcam", "guided_gradcam", "integrated_gradients"],
                            spec=Doubling(), ig=IGSettings(n_steps=4))
    for method in ("gradcam", "guided_gradcam", "integrated_gradients"):
        factor = 4 if method == "guided_gradcam" else 2  # GradCAM × guided backprop: both doubled
        torch.testing.assert_close(doubled.heatmaps[method], factor * plain.heatmaps[method])
    torch.testing.assert_close(doubled.completeness_gap, 2 * plain.completeness_gap)


@pytest.mark.skipif(not hasattr(spec_for(small("small_vit")), "forward"),
                    reason="needs ArchSpec.forward (ViT at any size), in the lead's spec")
def test_vit_explained_at_a_size_other_than_its_own():
    from prunelens.explain import IGSettings, applicable_methods, explain_batch

    model = small("small_vit")  # built for 32 px, 8 px patches
    x = images(2, 48)
    methods = applicable_methods(model)
    result = explain_batch(model, x, methods, ig=IGSettings(n_steps=32))
    for method in methods:
        assert result.pooled(method).shape == (2, 48, 48)
    total = result.heatmaps["integrated_gradients"].flatten(1).sum(1).abs()
    assert float((result.completeness_gap / total).max()) < 1e-3
