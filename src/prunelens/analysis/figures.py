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


def mosaic(tiles: list[np.ndarray], pad: int = 1) -> np.ndarray:
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
            ax.imshow(mosaic(tiles), interpolation="nearest")
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


# ---- figures across levels (Pellegrini & Biroli's; drawn by the connectivity suite's after_levels) --
def _fixed_axes(fig: Figure, left: float, right: float, bottom: float, top: float, n: int = 1):
    """``n`` axes side by side with margins in inches (constrained layout measures every label and
    is slow)."""
    width, height = fig.get_size_inches()
    return fig.subplots(1, n, squeeze=False, gridspec_kw=dict(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
        wspace=0.35))[0]


def quantile_boxes(title: str, panels: dict[str, list[tuple[str, dict]]], ylabel: str) -> Figure:
    """One panel per layer, a box per level on a log axis: ``(label, stats)`` with stats ``q05,
    q25, median, q75, q95, mean`` (whiskers at the 5th and 95th percentiles) and ``none``, the
    units left out (no connection), written under the box."""
    n_levels = max(len(v) for v in panels.values())
    fig = Figure(figsize=(max(4.0, 0.55 * n_levels + 1.4) * len(panels), 3.6))
    for ax, (layer, boxes) in zip(_fixed_axes(fig, 0.75, 0.2, 0.85, 0.55, len(panels)), panels.items()):
        stats = [{"med": s["median"], "q1": s["q25"], "q3": s["q75"], "whislo": s["q05"],
                  "whishi": s["q95"], "mean": s["mean"], "fliers": []} for _, s in boxes]
        ax.bxp(stats, positions=range(len(boxes)), showmeans=True, medianprops={"color": "#cc3311"},
               meanprops={"marker": "o", "markersize": 3, "markerfacecolor": "#4477aa",
                          "markeredgecolor": "#4477aa"})
        ax.set_yscale("log")
        ax.set_xticks(range(len(boxes)))
        ax.set_xticklabels([label for label, _ in boxes], fontsize=7)
        for x, (_, s) in enumerate(boxes):
            if s["none"]:
                ax.annotate(f"{s['none']} none", (x, 0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6,
                            color="#cc3311")
        ax.set_ylabel(ylabel)
        ax.set_title(layer, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    return fig


def lines_vs_sparsity(title: str, ylabel: str, lines: dict[str, tuple[np.ndarray, np.ndarray]],
                      reference: tuple[float, str] | None = None) -> Figure:
    """One line per label (x = sparsity, y), and a dashed horizontal reference line."""
    fig = Figure(figsize=(6.0, 3.8))
    (ax,) = _fixed_axes(fig, 0.8, 0.2, 0.6, 0.45)
    for i, (label, (x, y)) in enumerate(lines.items()):
        ax.plot(x, y, marker="o", ms=4, color=f"C{i % 10}", label=label)
    if reference is not None:
        ax.axhline(reference[0], ls="--", color="0.3", lw=1, label=reference[1])
    ax.set_xlabel("sparsity")
    ax.xaxis.set_major_formatter(_percent())
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def _percent():
    from matplotlib.ticker import PercentFormatter
    return PercentFormatter(1.0)


def tile_grid(title: str, cells: list[list[np.ndarray | None]], row_labels: Sequence[str],
              col_labels: Sequence[str], notes: list[list[str]] | None = None) -> Figure:
    """Images (H, W) or (H, W, 3), all of one size, in a grid drawn as one image (fast), a
    separator colour around them; ``None`` leaves a cell empty. ``notes``: text above each cell
    (two short lines at most)."""
    h, w = next(c for row in cells for c in row if c is not None).shape[:2]
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    gap = max(1, h // 10)
    pad_y = gap + (h * 2 // 5 if notes else 0)  # room for the notes above each row
    canvas = np.empty(((h + pad_y) * n_rows, (w + gap) * n_cols, 3), dtype=np.float32)
    canvas[:] = _SEPARATOR
    for r, row in enumerate(cells):
        for c, tile in enumerate(row):
            if tile is not None:
                tile = np.repeat(tile[..., None], 3, axis=2) if tile.ndim == 2 else tile
                y, x = r * (h + pad_y) + pad_y - gap, c * (w + gap)
                canvas[y:y + h, x:x + w] = tile
    inch = min(1.0 / h, 12.0 / canvas.shape[1])  # inches per pixel: a tile about 1 in tall
    fig = Figure(figsize=(canvas.shape[1] * inch + 1.5, canvas.shape[0] * inch + 1.1))
    (ax,) = _fixed_axes(fig, 1.3, 0.2, 0.1, 0.9)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([c * (w + gap) + w / 2 for c in range(len(col_labels))])
    ax.set_xticklabels(col_labels, fontsize=7)
    ax.xaxis.set_ticks_position("top")
    ax.set_yticks([r * (h + pad_y) + pad_y - gap + h / 2 for r in range(len(row_labels))])
    ax.set_yticklabels(row_labels, fontsize=7)
    for side in ax.spines.values():
        side.set_visible(False)
    for r, row in enumerate(notes or []):
        for c, text in enumerate(row):
            ax.text(c * (w + gap), r * (h + pad_y) + pad_y - gap - 0.5, text, fontsize=5.5,
                    va="bottom", ha="left", linespacing=1.0)
    fig.suptitle(title, fontsize=10)
    return fig


def mask_tile(mask: torch.Tensor) -> np.ndarray:
    """A unit's mask (C, H, W) as an image: black where nothing is connected, the channels'
    colours where something is (white: all three)."""
    return _as_rgb(mask.float())


def weight_tile(weights: torch.Tensor) -> np.ndarray:
    """Signed weights (C, H, W) around grey, scaled by their largest magnitude."""
    return _signed_rgb(weights.float())
