"""Distortions: each one's defining property, filters against scipy, determinism under a seed."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from prunelens.data import distortions as D
from prunelens.errors import ConfigError


def _images(b=4, c=3, h=32, w=40, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _power(x):
    return torch.fft.fft2(x).abs() ** 2


def test_luminance_weights_are_skimage_rgb2gray():
    x = _images(1)
    expected = 0.2125 * x[:, 0] + 0.7154 * x[:, 1] + 0.0721 * x[:, 2]
    torch.testing.assert_close(D.luminance(x)[:, 0], expected)
    g = D.greyscale(x)
    assert g.shape == x.shape and torch.equal(g[:, 0], g[:, 2])


@pytest.mark.parametrize("level", [1.0, 0.5, 0.1, 0.01])
def test_contrast_scales_deviations_from_the_mean(level):
    x = _images()
    y = D.contrast(x, level)
    dev_x = x - x.mean(dim=(-2, -1), keepdim=True)
    dev_y = y - y.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(dev_y, level * dev_x)
    # and mid-grey is the fixed point of the paper's (1 - c)/2 + c x
    torch.testing.assert_close(D.contrast(torch.full((1, 1, 2, 2), 0.5), level), torch.full((1, 1, 2, 2), 0.5))


def test_contrast_rejects_levels_outside_unit_interval():
    with pytest.raises(ValueError):
        D.contrast(_images(), 1.5)


@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.0, 10.0, 40.0])
def test_gaussian_blur_matches_scipy_constant_mode(sigma):
    img = np.random.default_rng(1).random((2, 37, 50))
    got = D.gaussian_blur(torch.tensor(img).unsqueeze(1), sigma).squeeze(1).numpy()
    for k in range(2):
        ref = gaussian_filter(img[k], sigma, mode="constant", cval=D.BACKGROUND_GREY)
        np.testing.assert_allclose(got[k], ref, atol=1e-12)


F_LOW, F_HIGH, SIGMA = 1 / 32, 1 / 4, 3.0  # cycles per pixel; filter std in pixels


def _gratings(h=64, w=128):
    """Background grey plus a low- and a high-frequency vertical grating, amplitude 0.2 each."""
    col = torch.arange(w, dtype=torch.float64)
    row = D.BACKGROUND_GREY + 0.2 * torch.sin(2 * math.pi * F_LOW * col) \
        + 0.2 * torch.sin(2 * math.pi * F_HIGH * col)
    return row.expand(1, 1, h, w).clone()


def _amplitude(img, f, margin):
    """Amplitude of the grating of frequency f in the image's interior (least squares on both)."""
    y = img[0, 0, margin:-margin, margin:-margin].mean(0).numpy()
    col = np.arange(margin, margin + len(y))
    waves = [fn(2 * np.pi * g * col) for g in (F_LOW, F_HIGH) for fn in (np.sin, np.cos)]
    coef = np.linalg.lstsq(np.stack([np.ones_like(y), *waves], 1), y, rcond=None)[0]
    k = 1 if f == F_LOW else 3
    return float(np.hypot(coef[k], coef[k + 1]))


def _transfer(f, sigma=SIGMA):
    """Frequency response of the sampled, truncated Gaussian filter."""
    radius = int(4 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return float((k / k.sum() * np.cos(2 * np.pi * f * t)).sum())


def test_low_pass_removes_high_frequencies():
    x = _gratings()
    y = D.low_pass(x, SIGMA)
    margin = int(4 * SIGMA + 0.5)
    assert _amplitude(y, F_HIGH, margin) < 1e-4  # a period-4 grating is gone (H = 1.5e-5) …
    assert _amplitude(y, F_LOW, margin) == pytest.approx(0.2 * _transfer(F_LOW), abs=1e-9)
    assert _transfer(F_LOW) > 0.8                # … a period-32 one mostly stays
    assert 0 <= y.min() and y.max() <= 1


def test_high_pass_removes_low_frequencies_and_has_the_papers_mean():
    x = _gratings()
    y = D.high_pass(x, SIGMA)
    margin = int(4 * SIGMA + 0.5)
    assert _amplitude(y, F_LOW, margin) == pytest.approx(0.2 * (1 - _transfer(F_LOW)), abs=1e-9)
    assert _amplitude(y, F_HIGH, margin) == pytest.approx(0.2, abs=1e-4)
    detail = x - D.gaussian_blur(x, SIGMA)
    torch.testing.assert_close(y - y.mean(), detail - detail.mean())  # nothing clipped here
    assert y.mean().item() == pytest.approx(D.BACKGROUND_GREY)


def test_phase_noise_keeps_the_amplitude_spectrum_and_changes_phases():
    x = 0.5 + 0.02 * (_images(3, 1, 32, 32) - 0.5)  # low contrast: the result needs no clipping
    y = D.phase_noise(x, 90, torch.Generator().manual_seed(0), clip=False)
    assert y.dtype == x.dtype and torch.isreal(y).all()
    torch.testing.assert_close(torch.fft.fft2(y).abs(), torch.fft.fft2(x).abs())
    dphi = torch.angle(torch.fft.fft2(y) / torch.fft.fft2(x))
    assert dphi.abs().max() <= math.radians(90) + 1e-6
    assert dphi.abs().mean() > math.radians(30)  # U(-90°, 90°) has mean |shift| 45°
    # width 0 is the identity
    torch.testing.assert_close(D.phase_noise(x, 0, torch.Generator().manual_seed(0)), x)


def test_phase_noise_field_is_odd_with_zeros_where_frequency_is_its_own_negative():
    theta = D._odd_phase_field(2, 6, 5, 1.0, torch.Generator().manual_seed(3))
    neg = torch.roll(torch.flip(theta, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    torch.testing.assert_close(theta, -neg)
    assert theta[..., 0, 0].abs().max() == 0 and theta[..., 3, 0].abs().max() == 0  # DC, Nyquist row


def test_power_equalisation_gives_the_target_spectrum():
    x = 0.5 + 0.05 * (_images(5, 1, 32, 32) - 0.5)
    target = D.mean_amplitude_spectrum(x)
    torch.testing.assert_close(target, torch.fft.fft2(x).abs().mean(0))
    y = D.power_equalise(x, target, clip=False)
    for k in range(len(x)):
        torch.testing.assert_close(torch.fft.fft2(y[k]).abs(), target)
        # phases are kept
        torch.testing.assert_close(torch.angle(torch.fft.fft2(y[k])), torch.angle(torch.fft.fft2(x[k])))


def test_false_colour_inverts_opponent_channels_and_keeps_grey_and_luminance():
    x = 0.5 + 0.1 * (_images(2) - 0.5)  # in gamut after inversion: no clipping
    y = D.false_colour(x)
    m = torch.tensor(D._RGB_TO_LMS, dtype=x.dtype)
    n = torch.tensor(D._LMS_TO_DKL, dtype=x.dtype)
    white = m @ torch.full((3,), 0.5, dtype=x.dtype)
    dkl = lambda img: torch.einsum("ij,jk,bkhw->bihw", n, m, img) - (n @ white).view(1, 3, 1, 1)  # noqa: E731
    torch.testing.assert_close(dkl(y)[:, 0], dkl(x)[:, 0])     # luminance kept
    torch.testing.assert_close(dkl(y)[:, 1:], -dkl(x)[:, 1:])  # L-M and S-(L+M) inverted
    torch.testing.assert_close(D.false_colour(y), x)           # an involution
    grey = torch.full((1, 3, 2, 2), 0.3, dtype=x.dtype)
    torch.testing.assert_close(D.false_colour(grey), grey)


def test_rotation_is_exact():
    x = _images(2)
    assert torch.equal(D.rotate(x, 0), x)
    np.testing.assert_array_equal(D.rotate(x, 90)[0, 1].numpy(), np.rot90(x[0, 1].numpy(), 1))
    np.testing.assert_array_equal(D.rotate(x, 180)[1, 2].numpy(), x[1, 2].numpy()[::-1, ::-1])
    assert torch.equal(D.rotate(D.rotate(x, 90), 270), x)
    with pytest.raises(ValueError):
        D.rotate(x, 45)


def test_uniform_noise_is_bounded_uniform_and_seeded():
    x = torch.full((8, 1, 64, 64), 0.5, dtype=torch.float64)
    width = 0.1
    y = D.uniform_noise(x, width, torch.Generator().manual_seed(0))
    noise = y - 0.5  # contrast 0.3 keeps mid-grey at 0.5
    assert noise.abs().max() <= width
    assert abs(noise.mean().item()) < 0.002
    assert abs(noise.var().item() - width ** 2 / 3) < 2e-4  # variance of U(-w, w)
    y2 = D.uniform_noise(x, width, torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)
    assert not torch.equal(y, D.uniform_noise(x, width, torch.Generator().manual_seed(1)))


def test_distort_is_deterministic_quantised_and_three_channel():
    x = _images(3, 3, 32, 32).float()
    for name, recipe in D.DISTORTIONS.items():
        for cond in recipe.conditions:
            a = D.distort(x, name, cond, seed=7, pixel_scale=32 / 224)
            b = D.distort(x, name, cond, seed=7, pixel_scale=32 / 224)
            assert a.shape == x.shape and torch.equal(a, b), (name, cond)
            assert torch.equal(a, torch.round(a * 255) / 255) and a.min() >= 0 and a.max() <= 1
    noisy = [D.distort(x, "uniform-noise", "0.1", seed=s) for s in (0, 1)]
    assert not torch.equal(*noisy)


def test_distort_recipes_follow_the_benchmark():
    x = _images(2, 3, 32, 32).float()
    grey = D.quantize(D.greyscale(x))
    assert torch.equal(D.distort(x, "colour", "cr"), D.quantize(x))
    assert torch.equal(D.distort(x, "colour", "bw"), grey)
    assert torch.equal(D.distort(x, "contrast", "c100"), grey)
    assert torch.equal(D.distort(x, "high-pass", "inf"), grey)
    assert torch.equal(D.distort(x, "low-pass", "0"), grey)
    assert torch.equal(D.distort(x, "rotation", "270"), D.quantize(D.rotate(D.greyscale(x), 270)))
    torch.testing.assert_close(D.distort(x, "contrast", "c05"), D.quantize(D.contrast(D.greyscale(x), 0.05)))
    # uniform noise at width 0 is the 30 % contrast image
    torch.testing.assert_close(D.distort(x, "uniform-noise", "0.0"), D.quantize(D.contrast(D.greyscale(x), 0.3)))
    # filter widths scale with pixel_scale
    torch.testing.assert_close(D.distort(x, "low-pass", "3", pixel_scale=0.5),
                               D.quantize(D.low_pass(D.greyscale(x), 1.5)))


def test_distort_names_the_bad_condition():
    with pytest.raises(ConfigError, match="c100"):
        D.distort(_images(1).float(), "contrast", "c42")
    with pytest.raises(ConfigError, match="unknown distortion"):
        D.distort(_images(1).float(), "blur", "1")


def test_every_distortion_keeps_the_channel_count_of_grey_images():
    from prunelens.data.distortions import DISTORTIONS, distort
    grey = torch.rand(2, 1, 16, 16)
    for name, recipe in DISTORTIONS.items():
        for condition in recipe.conditions:
            out = distort(grey, name, condition, pixel_scale=16 / 224)
            assert out.shape == grey.shape, (name, condition)
