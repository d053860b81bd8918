"""Figures of the analysis suites (matplotlib's object API: no pyplot state, no display needed).

Every figure is written atomically as a PNG (:func:`save`).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from prunelens.io import atomic_write_bytes


def save(fig: Figure, path: Path, dpi: int = 100) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _as_rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] → an (H, W, 3) or (H, W) array imshow understands."""
    image = image.detach().float().cpu()
    if image.shape[0] == 3:
        return image.permute(1, 2, 0).numpy()
    return image.mean(0).numpy()


def _signed_rgb(weights: torch.Tensor) -> np.ndarray:
    """Signed weights (C, H, W) → [0, 1] around grey 0.5, scaled by the largest magnitude."""
    scale = float(weights.abs().max())
    return _as_rgb(0.5 + 0.5 * weights / scale if scale > 0 else weights * 0 + 0.5)


def connectivity_overview(name: str, counts: torch.Tensor, per_input: torch.Tensor) -> Figure:
    """Histogram of connections per unit, and connections per input pixel (one map per channel)."""
    channels = per_input.shape[0]
    fig = Figure(figsize=(3.2 * (1 + min(channels, 3)), 3.0), layout="constrained")
    ax = fig.add_subplot(1, 1 + min(channels, 3), 1)
    ax.hist(counts.cpu().numpy(), bins=min(50, max(5, int(counts.max()) + 1)), color="#4477aa")
    ax.set_xlabel("connections per unit")
    ax.set_ylabel("units")
    ax.set_title(name, fontsize=9)
    vmax = float(per_input.max()) or 1.0
    for c in range(min(channels, 3)):
        ax = fig.add_subplot(1, 1 + min(channels, 3), 2 + c)
        im = ax.imshow(per_input[c].cpu().numpy(), cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(f"units per input, channel {c}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def displacement_maps(name: str, observed: Sequence[torch.Tensor], expected: Sequence[torch.Tensor],
                      radius: float) -> Figure:
    """S_sc / S_dc: observed pair counts, random-mask expectation and their ratio."""
    labels = ("same channel (S_sc)", "different channels (S_dc)")
    rows = [(lab, o, e) for lab, o, e in zip(labels, observed, expected) if float(e.sum()) > 0]
    fig = Figure(figsize=(12, 3.2 * max(1, len(rows))), layout="constrained")
    for r, (label, obs, exp) in enumerate(rows):
        h, w = obs.shape
        extent = (-(w // 2) - 0.5, w // 2 + 0.5, h // 2 + 0.5, -(h // 2) - 0.5)
        ratio = torch.where(exp > 0, obs / exp.clamp(min=1e-12), torch.full_like(obs, np.nan))
        for c, (img, title, cmap) in enumerate(((obs, f"{label}: observed", "magma"),
                                                (exp, "random-mask expectation", "magma"),
                                                (ratio, "observed / random", "coolwarm"))):
            ax = fig.add_subplot(len(rows), 3, 3 * r + c + 1)
            kw = {"vmin": 0, "vmax": 2} if c == 2 else {}
            im = ax.imshow(img.cpu().numpy(), cmap=cmap, extent=extent, **kw)
            ax.add_patch(_circle(radius))
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("Δx")
            ax.set_ylabel("Δy")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{name}: pair displacements (circle: |d| = {radius:g})", fontsize=10)
    return fig


def _circle(radius: float):
    from matplotlib.patches import Circle
    return Circle((0, 0), radius, fill=False, color="white", lw=0.8, ls="--")


_SEPARATOR = (0.55, 0.75, 0.95)  # between tiles: a colour no mask or weight map takes


def _mosaic(tiles: list[np.ndarray], pad: int = 1) -> np.ndarray:
    """Tiles (H, W) or (H, W, 3) side by side as one RGB image, ``pad`` pixels apart."""
    tiles = [np.repeat(t[..., None], 3, axis=2) if t.ndim == 2 else t for t in tiles]
    h, w = tiles[0].shape[:2]
    out = np.empty((h, len(tiles) * (w + pad) - pad, 3), dtype=np.float32)
    out[:] = _SEPARATOR
    for j, tile in enumerate(tiles):
        out[:, j * (w + pad):j * (w + pad) + w] = tile
    return out


def mask_gallery(name: str, units: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor,
                 n: int) -> Figure:
    """Masks and mask × weight of the ``n`` most and ``n`` least connected (alive) units."""
    alive = torch.nonzero(counts > 0).flatten()
    order = alive[torch.argsort(counts[alive], descending=True, stable=True)]
    picks = [("most", order[:n]), ("least", order[max(0, len(order) - n):])]
    picks = [(label, index) for label, index in picks if len(index)]
    fig = Figure(figsize=(max(4.0, 1.1 * n), 1.4 * max(1, 2 * len(picks))), layout="constrained")
    for block, (label, index) in enumerate(picks):
        rows = (("mask", [_as_rgb(units[u].float()) for u in index.tolist()]),
                ("mask × weight", [_signed_rgb(weights[u]) for u in index.tolist()]))
        for r, (what, tiles) in enumerate(rows):
            ax = fig.add_subplot(2 * len(picks), 1, 2 * block + r + 1)
            ax.imshow(_mosaic(tiles), interpolation="nearest")
            ax.set_xticks([(j + 0.5) * (tiles[0].shape[1] + 1) for j in range(len(tiles))])
            ax.set_xticklabels([f"#{u} ({int(counts[u])})" for u in index.tolist()] if r == 0
                               else [], fontsize=6)
            ax.xaxis.set_ticks_position("top")
            ax.set_yticks([])
            ax.set_ylabel(f"{label}\n{what}", fontsize=7)
    fig.suptitle(f"{name}: most / least connected units (unit, connections)", fontsize=9)
    return fig


def schedule_comparison(table: pd.DataFrame) -> Figure:
    """Gradual vs one-shot bars (mean, 95 % CI) of the network-level rows of a comparison table:
    accuracy, PSP-entropy of all layers, loss increase per σ, top Hessian eigenvalue."""
    per_layer = (table["metric"] == "psp_entropy") & (table["method"] != "(all layers)")
    rows = table[~per_layer].reset_index(drop=True)
    fig = Figure(figsize=(2.4 * max(1, len(rows)), 3.2), layout="constrained")
    for i, row in rows.iterrows():
        ax = fig.add_subplot(1, max(1, len(rows)), i + 1)
        means = [row["mean_gradual"], row["mean_one_shot"]]
        errs = [[m - row[f"ci_low_{s}"] if np.isfinite(row[f"ci_low_{s}"]) else 0 for m, s in
                 zip(means, ("gradual", "one_shot"))],
                [row[f"ci_high_{s}"] - m if np.isfinite(row[f"ci_high_{s}"]) else 0 for m, s in
                 zip(means, ("gradual", "one_shot"))]]
        ax.bar([0, 1], means, yerr=errs, capsize=3, color=["#4477aa", "#ee6677"])
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["gradual", "one-shot"], fontsize=8)
        label = row["metric"].replace("_", " ")
        ax.set_title(f"{label}\n{row['method']}" if row["method"] else label, fontsize=8)
    fig.suptitle(f"final level: gradual {rows['sparsity_gradual'].iloc[0]:.1%} vs one-shot "
                 f"{rows['sparsity_one_shot'].iloc[0]:.1%} sparsity" if len(rows) else "", fontsize=9)
    return fig
