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


def schedule_comparison(table: pd.DataFrame, dense: pd.DataFrame | None = None) -> Figure:
    """Gradual vs one-shot as curves: each network-level row of a comparison table (accuracy,
    PSP-entropy of all layers, loss increase per σ, top Hessian eigenvalue, probe accuracies; the
    per-layer and per-class PSP-entropy and the probe's C stay in the CSV) vs
    sparsity, mean with its CI, one line per schedule; ``dense`` (the gradual pool's level 0,
    :func:`~prunelens.analysis.schedules.dense_means`) starts both lines."""
    key = ["suite", "metric", "method", "dataset", "condition"]
    per_layer = (table["metric"] == "psp_entropy") & (table["method"] != "(all layers)")
    detail = table["metric"].isin(["psp_entropy_per_class", "probe_regularization"])  # in the CSV
    rows = table[~per_layer & ~detail]
    panels = list(rows.groupby(key, sort=True, dropna=False)) if len(rows) else []
    cols = min(4, max(1, len(panels)))
    n_rows = max(1, -(-len(panels) // cols))
    fig = Figure(figsize=(3.0 * cols, 2.6 * n_rows), layout="constrained")
    for i, (panel_key, part) in enumerate(panels):
        ax = fig.add_subplot(n_rows, cols, i + 1)
        part = part.sort_values("gradual_level")
        start = _dense_point(dense, panel_key, key)
        for schedule, colour, label in (("gradual", "#4477aa", "gradual"),
                                        ("one_shot", "#ee6677", "one-shot")):
            x = [0.0] * (start is not None) + part[f"sparsity_{schedule}"].tolist()
            y, lo, hi = ([start[c]] if start is not None else [] for c in ("mean", "ci_low", "ci_high"))
            y += part[f"mean_{schedule}"].tolist()
            lo += part[f"ci_low_{schedule}"].tolist()
            hi += part[f"ci_high_{schedule}"].tolist()
            ax.plot(x, y, marker="o", markersize=3, color=colour, label=label)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.2, linewidth=0)
        suite, metric, method, dataset, condition = panel_key
        detail = " ".join(str(v) for v in (method, dataset, condition) if isinstance(v, str) and v)
        label = metric.replace("_", " ")
        ax.set_title(f"{label}\n{detail}" if detail else label, fontsize=8)
        ax.set_xlabel("sparsity", fontsize=7)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("gradual vs one-shot at equal sparsity and retraining epochs (band: CI)", fontsize=9)
    return fig


def _dense_point(dense: pd.DataFrame | None, panel_key: tuple, key: list[str]) -> dict | None:
    if dense is None or dense.empty:
        return None
    match = dense[(dense[key].fillna("") == pd.Series(
        ["" if not isinstance(v, str) else v for v in panel_key], index=key)).all(axis=1)]
    return match.iloc[0].to_dict() if len(match) else None
