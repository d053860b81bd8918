"""GPU speed options of the attribution passes (bf16 autocast, channels-last), checked on the CPU."""
from __future__ import annotations

import torch

from prunelens.explain.pipeline import IGSettings, explain_batch
from prunelens.models import create_model, spec_for


def _setup():
    torch.manual_seed(0)
    model = create_model("small_resnet", 5, widths=[8, 16]).eval()
    spec = spec_for(model)
    x = spec.normalize(torch.rand(3, 3, 32, 32))
    return model, spec, x


def test_channels_last_gives_the_same_heatmaps():
    model, spec, x = _setup()
    methods = ["gradcam", "guided_gradcam", "integrated_gradients"]
    plain = explain_batch(model, x, methods, spec=spec, ig=IGSettings(n_steps=8))
    fast = explain_batch(model, x, methods, spec=spec, ig=IGSettings(n_steps=8), channels_last=True)
    for m in methods:
        torch.testing.assert_close(fast.heatmaps[m], plain.heatmaps[m], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_returns_float32_heatmaps_close_to_fp32():
    model, spec, x = _setup()
    plain = explain_batch(model, x, ["gradcam", "integrated_gradients"], spec=spec, ig=IGSettings(n_steps=8))
    amp = explain_batch(model, x, ["gradcam", "integrated_gradients"], spec=spec, ig=IGSettings(n_steps=8),
                        amp=True)
    assert torch.equal(amp.targets, plain.targets)
    for m in ("gradcam", "integrated_gradients"):
        assert amp.heatmaps[m].dtype == torch.float32
        a, b = amp.heatmaps[m].flatten(1), plain.heatmaps[m].flatten(1)
        assert not torch.equal(a, b)  # the pass really ran in bf16
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.95
