"""Time prunelens' batched distortions against the per-image scipy/numpy way of making them.

The peer is how the Geirhos et al. 2018 stimuli are usually produced: one image at a time with
``scipy.ndimage.gaussian_filter`` and ``numpy.fft`` (written here independently). Both make every
(distortion, condition) of ``prunelens.data.distortions.DISTORTIONS`` for the same images; the
deterministic ones are checked to agree to one 8-bit level.

    PYTHONPATH=src python benchmarks/distortions.py                 # 100 images of 64 px
    PYTHONPATH=src python benchmarks/distortions.py --n 200 --size 224
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import best_time
from scipy.ndimage import gaussian_filter

from prunelens.data import distortions as D

GREY = np.array(D.LUMINANCE)


def _peer_one(img: np.ndarray, name: str, cond: str, scale: float, amplitude: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """One image (H, W, 3) in [0, 1] → its distorted version (H, W, 3)."""
    if name in ("colour", "false-colour") and cond in ("cr", "True"):
        return img
    if name == "false-colour":
        a, b = (t.numpy() for t in D._false_colour_affine())
        return np.clip(img @ a.T + b, 0, 1)
    g = img @ GREY
    if name == "contrast":
        g = (1 - int(cond[1:]) / 100) / 2 + int(cond[1:]) / 100 * g
    elif name == "low-pass" and cond != "0":
        g = np.clip(gaussian_filter(g, float(cond) * scale, mode="constant", cval=D.BACKGROUND_GREY), 0, 1)
    elif name == "high-pass" and cond != "inf":
        d = g - gaussian_filter(g, float(cond) * scale, mode="constant", cval=D.BACKGROUND_GREY)
        g = np.clip(d + D.BACKGROUND_GREY - d.mean(), 0, 1)
    elif name == "phase-scrambling":
        f = np.fft.fft2(g)
        shifts = rng.uniform(-1, 1, f.shape) * np.radians(float(cond))
        shifts = (shifts - np.roll(shifts[::-1, ::-1], 1, axis=(0, 1))) / 2  # odd, as the image is real
        g = np.clip(np.fft.ifft2(f * np.exp(1j * shifts)).real, 0, 1)
    elif name == "power-equalisation" and cond == "pow":
        g = np.clip(np.fft.ifft2(amplitude * np.exp(1j * np.angle(np.fft.fft2(g)))).real, 0, 1)
    elif name == "rotation":
        g = np.rot90(g, int(cond) // 90)
    elif name == "uniform-noise":
        g = np.clip(0.35 + 0.3 * g + rng.uniform(-float(cond), float(cond), g.shape), 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def peer(images: np.ndarray, scale: float) -> dict:
    rng = np.random.default_rng(0)
    amplitude = np.abs(np.fft.fft2(images @ GREY)).mean(0)
    return {(n, c): np.stack([np.round(_peer_one(im, n, c, scale, amplitude, rng) * 255) / 255
                              for im in images])
            for n, recipe in D.DISTORTIONS.items() for c in recipe.conditions}


def ours(images: torch.Tensor, scale: float) -> dict:
    return {(n, c): D.distort(images, n, c, seed=0, pixel_scale=scale)
            for n, recipe in D.DISTORTIONS.items() for c in recipe.conditions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = torch.rand(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    images = torch.round(images * 255) / 255
    scale = args.size / D.REFERENCE_SIZE
    hwc = images.permute(0, 2, 3, 1).double().numpy()

    t_ours, got = best_time(lambda: ours(images, scale), args.repeats)
    t_peer, ref = best_time(lambda: peer(hwc, scale), args.repeats)
    worst = 0.0
    for (name, cond), out in got.items():
        if name in ("phase-scrambling", "uniform-noise") and cond not in ("0", "0.0"):
            continue  # random: different draws
        diff = np.abs(out.permute(0, 2, 3, 1).double().numpy() - ref[name, cond]).max()
        worst = max(worst, float(diff))
    conditions = len(got)
    print(f"{args.n} images of {args.size} px, {conditions} (distortion, condition) pairs, "
          f"torch threads {torch.get_num_threads()}")
    print(f"prunelens batched: {t_ours:.3f} s   per-image scipy/numpy: {t_peer:.3f} s   "
          f"max |difference| on deterministic ones: {worst * 255:.2f}/255")
    print(f"ratio_vs_scipy_numpy={t_peer / t_ours:.1f}")


if __name__ == "__main__":
    main()
