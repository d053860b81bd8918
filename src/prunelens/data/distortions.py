"""Image distortions of Geirhos et al., NeurIPS 2018 ("Generalisation in humans and deep neural
networks"), so that any labelled image set becomes an out-of-distribution benchmark.

The primitives work on batches (B, C, H, W) of images in [0, 1] on any device. :data:`DISTORTIONS`
composes them as the model-vs-human datasets were made: every distortion but ``colour: cr`` and
``false-colour`` starts from the greyscale image (computed on one channel, returned stacked to
three), with the paper's parameters as conditions, named as in the benchmark's trial files.
:func:`distort` applies one (dataset, condition); it is deterministic for a given seed and image set.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunelens.errors import ConfigError

#: luminance weights of skimage's ``rgb2gray`` (ITU-R BT.709), used by Geirhos et al. 2018
LUMINANCE = (0.2125, 0.7154, 0.0721)
#: mean grey of Geirhos et al. 2018's images: padding of the Gaussian filters, mean of high-pass images
BACKGROUND_GREY = 0.4423
#: image side the paper's filter widths (pixels) refer to
REFERENCE_SIZE = 224


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Luminance Y = 0.2125 R + 0.7154 G + 0.0721 B: (B, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMINANCE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """The luminance image stacked to three channels."""
    return luminance(x).expand(-1, 3, -1, -1)


def contrast(x: torch.Tensor, level: float) -> torch.Tensor:
    """Contrast reduced to ``level`` ∈ [0, 1] around mid-grey: (1 − c)/2 + c·x."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"contrast level must be in [0, 1], got {level}")
    return (1 - level) / 2 + level * x


def uniform_noise(x: torch.Tensor, width: float, generator: torch.Generator,
                  contrast_level: float = 0.3) -> torch.Tensor:
    """Contrast set to ``contrast_level``, then additive noise U(−w, w) per pixel, clipped to [0, 1].

    The same noise is added to every channel (the paper's images are grey).
    """
    b, _, h, w = x.shape
    noise = (torch.rand(b, 1, h, w, generator=generator) * 2 - 1).to(x) * width
    return (contrast(x, contrast_level) + noise).clamp(0, 1)


def _blur_matrix(n: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n, n) matrix of a 1-D Gaussian filter (std ``sigma``, truncated at 4 std) on n samples."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    norm = torch.exp(-0.5 * (t / sigma) ** 2).sum()
    i = torch.arange(n, dtype=torch.float64)
    d = i.view(-1, 1) - i.view(1, -1)
    k = torch.exp(-0.5 * (d / sigma) ** 2) * (d.abs() <= radius) / norm
    return k.to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, sigma: float, background: float = BACKGROUND_GREY) -> torch.Tensor:
    """Gaussian filter of std ``sigma`` pixels, the image extended by the constant ``background``.

    Same result as ``scipy.ndimage.gaussian_filter(mode="constant", cval=background)``: outside
    values contribute ``background``, so blur(x) = background + K_h (x − background) K_wᵀ with
    K the (truncated) 1-D filters as matrices.
    """
    if sigma <= 0:
        return x
    kh = _blur_matrix(x.shape[-2], sigma, x.dtype, x.device)
    kw = _blur_matrix(x.shape[-1], sigma, x.dtype, x.device)
    return background + kh @ (x - background) @ kw.T


def low_pass(x: torch.Tensor, sigma: float, background: float = BACKGROUND_GREY) -> torch.Tensor:
    """Low-pass: the Gaussian-filtered image, clipped to [0, 1]."""
    return gaussian_blur(x, sigma, background).clamp(0, 1)


def high_pass(x: torch.Tensor, sigma: float, background: float = BACKGROUND_GREY) -> torch.Tensor:
    """High-pass: x − lowpass(x), shifted to mean ``background``, clipped to [0, 1]."""
    detail = x - gaussian_blur(x, sigma, background)
    return (detail + (background - detail.mean(dim=(-2, -1), keepdim=True))).clamp(0, 1)


def _odd_phase_field(b: int, h: int, w: int, width_rad: float, generator: torch.Generator
                     ) -> torch.Tensor:
    """Phases θ(k) ~ U(−w, w) with θ(−k) = −θ(k) (so the image stays real); 0 where k = −k."""
    u = (torch.rand(b, 1, h, w, generator=generator, dtype=torch.float64) * 2 - 1) * width_rad
    u_neg = torch.roll(torch.flip(u, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))  # u(−k mod N)
    rows, cols = torch.arange(h).view(-1, 1), torch.arange(w).view(1, -1)
    key, key_neg = rows * w + cols, ((-rows) % h) * w + (-cols) % w
    return torch.where(key < key_neg, u, torch.where(key > key_neg, -u_neg, torch.zeros_like(u)))


def phase_noise(x: torch.Tensor, width: float, generator: torch.Generator, clip: bool = True
                ) -> torch.Tensor:
    """Phase scrambling: each frequency's phase shifted by U(−width, width) degrees.

    The amplitude spectrum is kept (exactly, before clipping to [0, 1]); the same shifts apply to
    every channel.
    """
    b, _, h, w = x.shape
    theta = _odd_phase_field(b, h, w, math.radians(width), generator).to(x)
    y = torch.fft.ifft2(torch.fft.fft2(x) * torch.polar(torch.ones_like(theta), theta)).real
    return y.clamp(0, 1) if clip else y


def mean_amplitude_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |FFT2| per channel: (C, H, W)."""
    return torch.fft.fft2(x).abs().mean(0)


def power_equalise(x: torch.Tensor, amplitude: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Power equalisation: amplitude spectrum set to ``amplitude`` (C, H, W), phases kept."""
    spectrum = torch.fft.fft2(x)
    target = amplitude.to(x).expand_as(spectrum.real)
    y = torch.fft.ifft2(torch.polar(target, spectrum.angle())).real
    return y.clamp(0, 1) if clip else y


# Opponent-colour inversion of Geirhos et al. 2018 (after Brainard 1996): RGB → cone (LMS)
# activations with the monitor's cone sensitivities, then DKL opponent channels (luminance, L−M,
# S−(L+M)) around the white point; the two chromatic channels are negated. Numbers: the paper's
# released stimulus code; the white point is the cone activation of mid-grey (0.5, 0.5, 0.5).
_RGB_TO_LMS = ((0.1619982647, 0.208049264, 0.0389347448),
               (0.0330275785, 0.2496504557, 0.0618343518),
               (0.0015524055, 0.0198861001, 0.1890224274))
_LMS_TO_DKL = ((9.27590805, 9.27590805, 0.0),
               (7.86421647, -9.33587662, 0.0),
               (-3.39709047, -3.39709047, 12.16230246))


def _false_colour_affine() -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(_RGB_TO_LMS, dtype=torch.float64)
    n = torch.tensor(_LMS_TO_DKL, dtype=torch.float64)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    a = torch.linalg.inv(m) @ torch.linalg.inv(n) @ flip @ n @ m
    grey = torch.full((3,), 0.5, dtype=torch.float64)
    return a, grey - a @ grey  # rgb' = A rgb + b, with mid-grey fixed


def false_colour(x: torch.Tensor) -> torch.Tensor:
    """Opponent colours: L−M and S−(L+M) inverted, luminance kept; clipped to [0, 1].

    The paper also undid its monitor's gamma; prunelens treats pixel values as linear.
    """
    a, b = _false_colour_affine()
    y = torch.einsum("ij,bjhw->bihw", a.to(x), x) + b.to(x).view(1, 3, 1, 1)
    return y.clamp(0, 1)


def rotate(x: torch.Tensor, angle: int) -> torch.Tensor:
    """Rotation by a multiple of 90 degrees, counter-clockwise (exact)."""
    if angle % 90:
        raise ValueError(f"rotation angle must be a multiple of 90, got {angle}")
    return torch.rot90(x, k=(angle // 90) % 4, dims=(-2, -1))


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels, as the benchmark's stimuli are stored (PNG)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


# ---- the benchmark's datasets as recipes -----------------------------------------------------------
@dataclass(frozen=True)
class DistortionContext:
    """What a recipe may need besides the images and the condition."""

    generator: torch.Generator
    pixel_scale: float = 1.0                 # filter widths are multiplied by this
    amplitude: torch.Tensor | None = None    # target spectrum for power equalisation


@dataclass(frozen=True)
class Distortion:
    name: str                    # the model-vs-human dataset it reproduces
    conditions: tuple[str, ...]  # in the benchmark's spelling and order
    apply: Callable[[torch.Tensor, str, DistortionContext], torch.Tensor]
    parameter: str               # what the condition means


def _colour(x, cond, ctx):
    return x if cond == "cr" else luminance(x)


def _contrast(x, cond, ctx):
    return contrast(luminance(x), int(cond[1:]) / 100)


def _high_pass(x, cond, ctx):
    grey = luminance(x)
    return grey if cond == "inf" else high_pass(grey, float(cond) * ctx.pixel_scale)


def _low_pass(x, cond, ctx):
    return low_pass(luminance(x), float(cond) * ctx.pixel_scale)


def _phase(x, cond, ctx):
    return phase_noise(luminance(x), float(cond), ctx.generator)


def _power(x, cond, ctx):
    grey = luminance(x)
    if cond == "0":
        return grey
    amplitude = ctx.amplitude if ctx.amplitude is not None else mean_amplitude_spectrum(grey)
    return power_equalise(grey, amplitude)


def _false_colour(x, cond, ctx):
    return x if cond == "True" else false_colour(x)


def _rotation(x, cond, ctx):
    return rotate(luminance(x), int(cond))


def _uniform_noise(x, cond, ctx):
    return uniform_noise(luminance(x), float(cond), ctx.generator)


DISTORTIONS: dict[str, Distortion] = {d.name: d for d in (
    Distortion("colour", ("cr", "bw"), _colour, "cr: colour, bw: greyscale"),
    Distortion("contrast", ("c100", "c50", "c30", "c15", "c10", "c05", "c03", "c01"), _contrast,
               "contrast in percent"),
    Distortion("high-pass", ("inf", "3.0", "1.5", "1.0", "0.7", "0.55", "0.45", "0.4"), _high_pass,
               "Gaussian std in pixels at 224 px (inf: unfiltered)"),
    Distortion("low-pass", ("0", "1", "3", "5", "7", "10", "15", "40"), _low_pass,
               "Gaussian std in pixels at 224 px"),
    Distortion("phase-scrambling", ("0", "30", "60", "90", "120", "150", "180"), _phase,
               "phase noise width in degrees"),
    Distortion("power-equalisation", ("0", "pow"), _power,
               "0: original, pow: amplitude spectrum set to the set's mean"),
    Distortion("false-colour", ("True", "False"), _false_colour, "True: true colour, False: opponent"),
    Distortion("rotation", ("0", "90", "180", "270"), _rotation, "angle in degrees"),
    Distortion("uniform-noise", ("0.0", "0.03", "0.05", "0.1", "0.2", "0.35", "0.6", "0.9"),
               _uniform_noise, "noise width (contrast 0.3)"),
)}


def condition_seed(seed: int, dataset: str, condition: str) -> int:
    """A seed for one (dataset, condition), stable across processes and platforms."""
    return (seed * 1_000_003 + zlib.crc32(f"{dataset}/{condition}".encode())) % (2 ** 63)


def distort(images: torch.Tensor, dataset: str, condition: str, seed: int = 0,
            pixel_scale: float = 1.0, amplitude: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` (B, 3, H, W) in [0, 1] as in ``dataset`` at ``condition``, quantised to 8 bits.

    ``pixel_scale`` multiplies the filter widths (use H / 224 to keep the paper's cut-offs
    relative to the image); ``amplitude`` is power equalisation's target spectrum (default: the
    mean amplitude spectrum of these images in greyscale).
    """
    if dataset not in DISTORTIONS:
        raise ConfigError(f"unknown distortion '{dataset}'; available: {', '.join(DISTORTIONS)}")
    recipe = DISTORTIONS[dataset]
    if condition not in recipe.conditions:
        raise ConfigError(f"distortion '{dataset}' has no condition '{condition}'; its conditions: "
                          f"{', '.join(recipe.conditions)} ({recipe.parameter})")
    generator = torch.Generator().manual_seed(condition_seed(seed, dataset, condition))
    ctx = DistortionContext(generator, pixel_scale, amplitude)
    out = quantize(recipe.apply(images, condition, ctx))  # recipes on grey images work on 1 channel
    if out.shape[1] == images.shape[1]:
        return out
    if out.shape[1] == 1:
        return out.expand(-1, images.shape[1], -1, -1)
    return quantize(luminance(out))  # a colour recipe (false colour) on grey images: back to grey
