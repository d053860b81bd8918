"""Integrated Gradients against Captum (float64), completeness, chunking, BN folding, SmoothGrad."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _explain_helpers import images, small

from prunelens.errors import ConfigError
from prunelens.explain import fold_batchnorm, integrated_gradients, quadrature
from prunelens.explain.integrated import black_baseline, row_memory_bytes, rows_per_chunk
from prunelens.models import spec_for

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


def _relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def resnet():
    return small("small_resnet")


@pytest.mark.parametrize("rule", RULES)
def test_ig_equals_captum(resnet, rule):
    x = images()
    baseline = black_baseline(x, spec_for(resnet))
    with torch.no_grad():
        target = resnet(x).argmax(1)
    ref = captum_attr.IntegratedGradients(resnet).attribute(x, baselines=baseline, target=target, n_steps=12,
                                                            method=rule)
    if rule == "riemann_trapezoid":
        ref = ref * 12 / 11  # Captum's trapezoid weights are 1/n instead of 1/(n-1) (see module doc)
    ours = integrated_gradients(resnet, x, n_steps=12, method=rule, internal_batch_size=5).attributions
    assert _relative_error(ours, ref) <= 1e-6


def test_ig_on_vit_equals_captum_with_explicit_target_and_baseline():
    model, x = small("small_vit"), images(2)
    baseline = torch.rand_like(x)
    target = torch.tensor([3, 1])
    ref = captum_attr.IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=8)
    ours = integrated_gradients(model, x, target, baseline, n_steps=8).attributions
    assert _relative_error(ours, ref) <= 1e-6


def test_quadrature_rules_integrate_polynomials():
    # ∫₀¹ α² dα = 1/3: Gauss-Legendre with 2 nodes is exact for cubics; the rest converge.
    for rule in RULES:
        nodes, weights = quadrature(200, rule)
        assert weights.sum() == pytest.approx(1.0)
        assert (weights * nodes**2).sum() == pytest.approx(1 / 3, abs=3e-3)
    nodes, weights = quadrature(2, "gausslegendre")
    assert (weights * nodes**3).sum() == pytest.approx(0.25, abs=1e-15)
    np.testing.assert_allclose(quadrature(4, "riemann_middle")[0], [0.125, 0.375, 0.625, 0.875])
    with pytest.raises(ConfigError, match="unknown integration rule"):
        quadrature(5, "simpson")


def test_completeness_gap_is_small_and_honest(resnet):
    x = images()
    result = integrated_gradients(resnet, x, n_steps=64)
    with torch.no_grad():
        logits = resnet(x)
        target = logits.argmax(1)
        delta = (logits.gather(1, target[:, None]) -
                 resnet(black_baseline(x, spec_for(resnet))).gather(1, target[:, None]))[:, 0]
    expected_gap = (result.attributions.flatten(1).sum(1) - delta).abs()
    torch.testing.assert_close(result.completeness_gap, expected_gap)
    coarse = integrated_gradients(resnet, x, n_steps=2, method="riemann_left")
    assert float(coarse.completeness_gap.sum()) > 10 * float(result.completeness_gap.sum())


def test_completeness_on_a_smooth_model_is_exact_with_gauss_legendre():
    model, x = small("small_vit"), images()  # GELU network: a smooth path integrand
    result = integrated_gradients(model, x, n_steps=64)
    assert float((result.completeness_gap / result.attributions.flatten(1).sum(1).abs()).max()) < 1e-8


def test_black_baseline_is_zero_in_pixel_space(resnet):
    spec = spec_for(resnet)
    baseline = black_baseline(images(), spec)
    torch.testing.assert_close(spec.denormalize(baseline), torch.zeros_like(baseline))


def test_chunking_does_not_change_the_result(resnet):
    x = images()
    one = integrated_gradients(resnet, x, n_steps=7, internal_batch_size=1)
    all_rows = integrated_gradients(resnet, x, n_steps=7, internal_batch_size=1000)
    torch.testing.assert_close(one.attributions, all_rows.attributions, rtol=1e-12, atol=1e-15)
    capped = integrated_gradients(resnet, x, n_steps=7, memory_cap_mb=1e-6)  # → one row per chunk
    torch.testing.assert_close(capped.attributions, all_rows.attributions, rtol=1e-12, atol=1e-15)


def test_row_memory_counts_saved_activations(resnet):
    small_row = row_memory_bytes(resnet, images(1, 16))
    big_row = row_memory_bytes(resnet, images(1, 32))
    assert big_row > 3 * small_row > 0  # activations grow with the pixel count
    cap_mb = 10 * big_row / 2**20
    assert rows_per_chunk(resnet, images(1, 32), cap_mb, fold_bn=False) == 10


def test_batchnorm_folding_keeps_the_function(resnet):
    folded = fold_batchnorm(resnet)
    assert folded is not resnet
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = images()
    torch.testing.assert_close(folded(x), resnet(x), rtol=1e-12, atol=1e-12)
    assert fold_batchnorm(resnet) is folded  # cached
    with torch.no_grad():
        resnet.bn1.running_mean.add_(0.1)
    refolded = fold_batchnorm(resnet)
    assert refolded is not folded
    torch.testing.assert_close(refolded(x), resnet(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        resnet.bn1.running_mean.sub_(0.1)
    a = integrated_gradients(resnet, x, n_steps=5, fold_bn=True).attributions
    b = integrated_gradients(resnet, x, n_steps=5, fold_bn=False).attributions
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert fold_batchnorm(resnet.train()) is resnet
    resnet.eval()


def test_smoothgrad_is_the_mean_of_ig_over_noisy_copies(resnet):
    x = images(2)
    with torch.no_grad():
        target = resnet(x).argmax(1)
    result = integrated_gradients(resnet, x, n_steps=6, noise_samples=3, noise_std=0.3,
                                  generator=torch.Generator().manual_seed(5))
    noise = torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    copies = [integrated_gradients(resnet, x + 0.3 * n, target, n_steps=6) for n in noise]
    expected = torch.stack([c.attributions for c in copies]).mean(0)
    torch.testing.assert_close(result.attributions, expected, rtol=1e-10, atol=1e-14)
    # the gap compares the averaged attributions with the mean output over the copies
    with torch.no_grad():
        f_copies = torch.stack([resnet(x + 0.3 * n).gather(1, target[:, None])[:, 0] for n in noise]).mean(0)
        f_base = resnet(black_baseline(x, spec_for(resnet))).gather(1, target[:, None])[:, 0]
    expected_gap = (result.attributions.flatten(1).sum(1) - (f_copies - f_base)).abs()
    torch.testing.assert_close(result.completeness_gap, expected_gap)
    # the paper's NoiseTunnel(IG) with the same noise gives the same attributions
    captum_ig = captum_attr.IntegratedGradients(resnet)
    baseline = black_baseline(x, spec_for(resnet))
    ref = torch.stack([captum_ig.attribute(x + 0.3 * n, baselines=baseline, target=target, n_steps=6)
                       for n in noise]).mean(0)
    assert _relative_error(result.attributions, ref) <= 1e-6


def test_bad_ig_settings_raise_config_errors(resnet):
    with pytest.raises(ConfigError, match="n_steps"):
        integrated_gradients(resnet, images(), n_steps=1, method="riemann_trapezoid")
    with pytest.raises(ConfigError, match="internal_batch_size"):
        integrated_gradients(resnet, images(), internal_batch_size=0)
    with pytest.raises(ConfigError, match="noise"):
        integrated_gradients(resnet, images(), noise_samples=-1)


def test_cpu_chunks_keep_each_activation_below_the_fresh_pages_size(resnet, monkeypatch):
    from prunelens.explain import integrated

    x = images(1, 32)
    largest = integrated._row_bytes(resnet, x)[1]
    assert 0 < largest < row_memory_bytes(resnet, x)
    monkeypatch.setattr(integrated, "CPU_FRESH_PAGES_BYTES", 3 * largest)
    assert rows_per_chunk(resnet, x, 1e6, fold_bn=False) == 3
    monkeypatch.setattr(integrated, "CPU_FRESH_PAGES_BYTES", 1)
    assert rows_per_chunk(resnet, x, 1e6, fold_bn=False) == 1
