"""Pellegrini & Biroli's figures across pruning levels (ICML 2022, Secs. 3–4 and the supplementary
movie), drawn by the connectivity suite once all levels are evaluated.

Each level saves what records cannot hold (:func:`save_level`, ``results/connectivity/level_XX/``
:data:`LEVEL_FILE`): the first layer's unit masks, the second layer's effective masks M2·M1 (bits
packed) and the best translated-copy pairs of the first layer with their weights. The connections
per unit, locality scores and class independence come from the suite's records. Six figures are
drawn (:data:`FIGURES`), each a PNG with the numbers it shows in a CSV of the same name:

* the same units at every level. They are chosen once, at the last level shown: the ``n`` units
  connected there, evenly spaced in the order of their number of connections there (least to most
  connected, ties by index; :func:`gallery_units`). Chosen by connections, not by locality, so the
  gallery does not pick the local units out;
* the best translated copies of each pruned level: among the suite's sampled pairs of connected
  units, those whose masks overlap most at their best relative shift
  (:func:`~prunelens.analysis.connectivity.shift_similarity`), with the cosine of their weights at
  that shift (:func:`~prunelens.analysis.selectivity.pair_weight_similarity`). The dense level is
  left out: full masks are copies of one another at shift 0.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from prunelens.analysis import figures
from prunelens.analysis.selectivity import PairWeights
from prunelens.io import atomic_save_tensors, atomic_write_bytes
from prunelens.runfolder import saved_per_level
from prunelens.suite import DrawnFigure

#: per level, in the suite's level artifacts folder
LEVEL_FILE = "across_levels.safetensors"
#: the two views a level saves: the first layer, the second layer's effective mask
ROLES = ("first", "second")

FIGURES = (
    DrawnFigure("connections_across_levels", "Connections per unit across levels",
                "Incoming connections of each unit at each level (box: quartiles, whiskers: 5th and "
                "95th percentiles, dot: mean; units with none are counted below the box). For the "
                "second layer the connections of its effective mask M2·M1: the inputs it reaches."),
    DrawnFigure("locality_across_levels", "Locality vs sparsity",
                "Locality score: the share of a unit's same-channel connection pairs within the "
                "suite's radius, divided by that share for a random mask with the same number of "
                "connections per unit (dashed line: 1, a random mask). Mean over units, and all "
                "units' pairs pooled."),
    DrawnFigure("masks_across_levels", "The same first-layer units at every level",
                "Each row one unit, each column one level (Pellegrini & Biroli's supplementary "
                "movie as a grid): the unit's mask, coloured by input channel, black where nothing "
                "is connected. Units chosen once at the last level shown: those connected there, "
                "evenly spaced from the least to the most connected (not chosen by locality)."),
    DrawnFigure("translated_pairs", "Translated copies and their weights",
                "For each pruned level, the sampled pairs of first-layer units whose masks overlap "
                "most at their best relative shift s: their masks (top) and masked weights (bottom, "
                "grey = 0). Above each pair: units, s = (Δy, Δx), mask similarity at s and the "
                "cosine of their weights at s."),
    DrawnFigure("class_independent_across_levels", "Class-independent response vs sparsity",
                "Share of first-layer units whose response is no more class-specific than with "
                "shuffled labels (a unit's selectivity not above the suite's quantile of its "
                "shuffled-label baseline). Dashed: that quantile, the share expected if no unit's "
                "response depended on the class."),
    DrawnFigure("second_layer_across_levels", "Second layer's aggregated features",
                "Effective masks M2·M1 of second-layer units (the inputs each reaches through the "
                "first layer), the same units at every level, chosen as in the first-layer gallery."),
)


# ---- per level -----------------------------------------------------------------------------------
def _pack(units: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(units.detach().bool().cpu().flatten(1).numpy(), axis=1))


def _unpack(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    n = math.prod(shape[1:])
    bits = np.unpackbits(packed.numpy(), axis=1, count=n)
    return torch.from_numpy(bits.astype(bool)).reshape(*shape)


def save_level(path: Path, views: Sequence[tuple[str, torch.Tensor]], pairs: PairWeights | None,
               weights: torch.Tensor | None) -> None:
    """Save one level's unit masks (``views``: (layer, (U, C, H, W) bool), first layer then the
    second's effective mask) and its best translated pairs with the first layer's ``weights`` of
    their units."""
    tensors, layers = {}, {}
    for role, (layer, units) in zip(ROLES, views):
        tensors[f"{role}.shape"] = torch.tensor(units.shape, dtype=torch.int64)
        tensors[f"{role}.masks"] = _pack(units)
        layers[role] = layer
    if pairs is not None and len(pairs.pairs) and weights is not None:
        tensors.update({"pairs.units": pairs.pairs, "pairs.shift": pairs.shift,
                        "pairs.mask_similarity": pairs.mask_similarity.double(),
                        "pairs.weight_similarity": pairs.weight_similarity.double(),
                        "pairs.weights": torch.stack([weights[pairs.pairs[:, 0]],
                                                      weights[pairs.pairs[:, 1]]], 1).float()})
    atomic_save_tensors(path, tensors, metadata={"layers": json.dumps(layers)})


def read_level(path: Path) -> dict | None:
    """What :func:`save_level` wrote: ``{role: (layer, masks)}`` and ``pairs`` (a dict of tensors);
    None, with a warning, for a damaged file."""
    try:
        with safe_open(str(path), "pt") as f:
            layers = json.loads((f.metadata() or {})["layers"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        views = {role: (str(layers[role]), _unpack(tensors[f"{role}.masks"],
                                                   tensors[f"{role}.shape"].tolist()))
                 for role in ROLES if role in layers}
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        warnings.warn(f"{path} is damaged ({type(exc).__name__}): its level is left out of the "
                      "figures across levels; re-run `prunelens evaluate --suite connectivity` "
                      "to compute that level again", stacklevel=2)
        return None
    pairs = {k.removeprefix("pairs."): v for k, v in tensors.items() if k.startswith("pairs.")}
    return {"views": views, "pairs": pairs}


# ---- choices -------------------------------------------------------------------------------------
def gallery_units(counts: torch.Tensor, n: int) -> list[int]:
    """``n`` units with connections, evenly spaced in the order of their number of connections
    (least to most, ties by index): the rule of the galleries (see the module docstring)."""
    alive = torch.nonzero(counts > 0).flatten()
    if not len(alive) or n <= 0:
        return []
    order = alive[torch.argsort(counts[alive], stable=True)]
    picks = np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))
    return order[picks].tolist()


def shown_levels(levels: Sequence[int], n: int) -> list[int]:
    """At most ``n`` of ``levels``, evenly spaced, the first and the last among them."""
    if len(levels) <= n:
        return list(levels)
    return [levels[i] for i in np.unique(np.linspace(0, len(levels) - 1, n).round().astype(int))]


def _label(level: int, sparsity: float) -> str:
    return f"L{level}\n{sparsity:.1%}"


# ---- tables from the records ---------------------------------------------------------------------
def connections_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per level and layer: units, units without connections, and quantiles over the connected."""
    rows = []
    counts = frame[frame["metric"] == "connections_per_unit"]
    for (level, sparsity, layer), part in counts.groupby(["level", "sparsity", "method"], sort=True):
        values = part["value"].to_numpy(dtype=float)
        alive = values[values > 0]
        q = np.percentile(alive, [5, 25, 50, 75, 95]) if len(alive) else [np.nan] * 5
        rows.append({"level": int(level), "sparsity": sparsity, "layer": layer, "units": len(values),
                     "no_connection": int((values == 0).sum()), "mean": float(alive.mean()) if len(alive)
                     else np.nan, "q05": q[0], "q25": q[1], "median": q[2], "q75": q[3], "q95": q[4]})
    return pd.DataFrame(rows)


def locality_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per level and layer: the mean locality score over units (and how many have one), the pooled
    score, and the random-mask baseline (1)."""
    unit = frame[frame["metric"] == "locality_score"].groupby(["level", "sparsity", "method"])["value"]
    pooled = frame[frame["metric"] == "locality_score_pooled"].set_index(
        ["level", "sparsity", "method"])["value"]
    table = pd.DataFrame({"mean_unit_score": unit.mean(), "units_scored": unit.count(),
                          "pooled_score": pooled}).reset_index()
    return table.rename(columns={"method": "layer"}).assign(random_mask=1.0)


def class_independence_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per level, layer and measure: the share of class-independent units (units with a constant
    response, NaN, left out) and how many units it is over."""
    rows = frame[frame["metric"] == "class_independent_fraction"]
    table = rows.groupby(["level", "sparsity", "method", "condition"])["value"].agg(
        ["mean", "count"]).reset_index()
    return table.rename(columns={"method": "layer", "condition": "measure", "mean": "fraction",
                                 "count": "units"})


# ---- drawing -------------------------------------------------------------------------------------
#: why a figure has no data, when its table is empty
NO_DATA = {
    "connections_across_levels": "no level has connection counts",
    "locality_across_levels": "no level has a locality score (conv kernels smaller than "
                              "evaluate.connectivity.min_kernel get counts only)",
    "masks_across_levels": "no level saved readable unit masks with locality (conv kernels smaller "
                           "than evaluate.connectivity.min_kernel get counts only)",
    "translated_pairs": "no pruned level has a pair of connected units with locality",
    "class_independent_across_levels": "no class-independence records "
                                       "(evaluate.connectivity.selectivity_images is 0)",
    "second_layer_across_levels": "no second layer's effective mask (fully connected nets with "
                                  "evaluate.connectivity.second_layer only)",
}


def draw(folder: Path, sparsity: Mapping[int, float], frame: pd.DataFrame, *, n_units: int,
         n_levels: int, n_pairs: int, quantile: float) -> dict[str, str]:
    """Draw :data:`FIGURES` into ``folder`` (the suite's artifacts folder) from its levels' saved
    files and the records ``frame`` (:func:`prunelens.results.load_results` of the suite); levels
    not in ``sparsity`` (the pool's) are left out. Returns the figures not drawn, each with why: a
    figure without data is not drawn (and an old one of that name removed)."""
    frame = frame[frame["level"].isin(list(sparsity))]
    saved = {lv: p for lv, p in saved_per_level(folder, LEVEL_FILE).items() if lv in sparsity}
    spatial = set(frame.loc[frame["metric"] == "locality_score", "level"])
    if spatial - set(saved):
        warnings.warn(f"{folder}: levels {sorted(spatial - set(saved))} have results but no "
                      f"{LEVEL_FILE} (evaluated by an earlier prunelens, or with across_levels off): "
                      "they are left out of the galleries; re-run `prunelens evaluate --suite "
                      "connectivity` to compute those levels again", stacklevel=2)
    data = {lv: d for lv in shown_levels(list(saved), n_levels) if (d := read_level(saved[lv]))}
    gallery = lambda role: (_gallery_table(data, sparsity, role, n_units),  # noqa: E731
                            lambda spec, table: _gallery_figure(spec, table, data))
    made = {
        "connections_across_levels": (connections_table(frame), _connections_figure),
        "locality_across_levels": (locality_table(frame), _locality_figure),
        "masks_across_levels": gallery("first"),
        "translated_pairs": (_pairs_table(data, sparsity, n_pairs),
                             lambda spec, table: _pairs_figure(spec, table, data)),
        "class_independent_across_levels": (class_independence_table(frame),
                                            lambda spec, table: _class_figure(spec, table, quantile)),
        "second_layer_across_levels": gallery("second"),
    }
    not_drawn = {}
    for spec in FIGURES:
        table, draw_figure = made[spec.name]
        png, csv = spec.files(folder)
        if table.empty:
            png.unlink(missing_ok=True)
            csv.unlink(missing_ok=True)
            not_drawn[spec.name] = NO_DATA[spec.name]
            continue
        figures.save(draw_figure(spec, table), png)
        atomic_write_bytes(csv, table.to_csv(index=False).encode())
    return not_drawn


def _connections_figure(spec: DrawnFigure, table: pd.DataFrame):
    panels = {layer: [(_label(r.level, r.sparsity), {**r._asdict(), "none": r.no_connection})
                      for r in part.itertuples()]
              for layer, part in table.groupby("layer", sort=False)}
    return figures.quantile_boxes(spec.title, panels, "connections per unit")


def _locality_figure(spec: DrawnFigure, table: pd.DataFrame):
    lines = {}
    for layer, part in table.groupby("layer", sort=False):
        lines[f"{layer}: mean over units"] = (part["sparsity"].to_numpy(), part["mean_unit_score"].to_numpy())
        lines[f"{layer}: pooled pairs"] = (part["sparsity"].to_numpy(), part["pooled_score"].to_numpy())
    return figures.lines_vs_sparsity(spec.title, "locality score (× random mask)", lines,
                                     (1.0, "random mask (same connections per unit)"))


def _class_figure(spec: DrawnFigure, table: pd.DataFrame, quantile: float):
    lines = {f"{layer} ({measure})": (part["sparsity"].to_numpy(), part["fraction"].to_numpy())
             for (layer, measure), part in table.groupby(["layer", "measure"], sort=False)}
    return figures.lines_vs_sparsity(spec.title, "class-independent units (fraction)", lines,
                                     (quantile, f"no unit class-dependent ({quantile:g})"))


def _gallery_table(data: dict, sparsity: Mapping[int, float], role: str, n: int) -> pd.DataFrame:
    levels = [lv for lv in data if role in data[lv]["views"]]
    if not levels:
        return pd.DataFrame()
    layer, last = data[levels[-1]]["views"][role]
    units = gallery_units(last.flatten(1).sum(1), n)
    rows = [{"level": lv, "sparsity": sparsity[lv], "layer": data[lv]["views"][role][0], "unit": u,
             "connections": int(data[lv]["views"][role][1][u].sum()), "role": role}
            for u in units for lv in levels]
    return pd.DataFrame(rows)


def _gallery_figure(spec: DrawnFigure, table: pd.DataFrame, data: dict):
    role = table["role"].iloc[0]
    levels = list(dict.fromkeys(table["level"]))
    units = list(dict.fromkeys(table["unit"]))
    cells = [[figures.mask_tile(data[lv]["views"][role][1][u]) for lv in levels] for u in units]
    counts = table.set_index(["unit", "level"])["connections"]
    notes = [[str(counts[(u, lv)]) for lv in levels] for u in units]
    cols = [_label(lv, float(table.loc[table["level"] == lv, "sparsity"].iloc[0])) for lv in levels]
    layer = table["layer"].iloc[0]
    return figures.tile_grid(f"{spec.title}: {layer} (number above a mask: its connections)", cells,
                             [f"unit {u}" for u in units], cols, notes)


def _pairs_table(data: dict, sparsity: Mapping[int, float], n: int) -> pd.DataFrame:
    rows = []
    for lv, d in data.items():
        pairs = d["pairs"]
        if sparsity[lv] == 0 or not pairs:
            continue
        layer = d["views"]["first"][0]
        for rank in range(min(n, len(pairs["units"]))):
            i, j = pairs["units"][rank].tolist()
            dy, dx = pairs["shift"][rank].tolist()
            rows.append({"level": lv, "sparsity": sparsity[lv], "layer": layer, "rank": rank,
                         "unit_i": i, "unit_j": j, "shift_y": dy, "shift_x": dx,
                         "mask_similarity": float(pairs["mask_similarity"][rank]),
                         "weight_similarity": float(pairs["weight_similarity"][rank])})
    return pd.DataFrame(rows)


def _pairs_figure(spec: DrawnFigure, table: pd.DataFrame, data: dict):
    cells, notes, labels = [], [], []
    for lv, part in table.groupby("level", sort=True):
        masks = data[lv]["views"]["first"][1]
        weights = data[lv]["pairs"]["weights"]
        mask_row, weight_row, note_row = [], [], []
        for r in part.itertuples():
            mask_row.append(figures.mosaic([figures.mask_tile(masks[r.unit_i]),
                                             figures.mask_tile(masks[r.unit_j])]))
            weight_row.append(figures.mosaic([figures.weight_tile(weights[r.rank, 0]),
                                               figures.weight_tile(weights[r.rank, 1])]))
            note_row.append(f"{r.unit_i}–{r.unit_j}, s=({r.shift_y},{r.shift_x})\n"
                            f"mask {r.mask_similarity:.2f}, weights {r.weight_similarity:.2f}")
        cells += [mask_row, weight_row]
        notes += [note_row, [""] * len(note_row)]
        label = _label(lv, float(part["sparsity"].iloc[0])).replace("\n", " ")
        labels += [f"{label}\nmasks", "weights"]
    cols = [f"pair {k + 1}" for k in range(max(len(r) for r in cells))]
    return figures.tile_grid(f"{spec.title}: {table['layer'].iloc[0]}", cells, labels, cols, notes)
