"""Figures across pruning levels, drawn from whatever the results hold (PNG + SVG).

Every curve is a mean over items with its bootstrap CI band (two-stage over seeds where a group has
several, see :mod:`prunelens.report.sweet_spots`); runs are overlaid in one panel (colour per line,
line style per run group). The paper figures: RMA/RRA per attribution method with accuracy on a twin
axis and sweet spots marked (Cassano et al. Fig. 3/4), CorLoc per model (Fig. 5), accuracy per OOD
dataset (Fig. 6); plus shape bias, error consistency, connectivity/locality, PSP-entropy, sharpness.
A metric or suite no spec names gets a generic figure, so nothing measured goes undrawn.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter
from tqdm.auto import tqdm

from prunelens.report.sweet_spots import KEY, accuracy_rows, group_summary, run_groups

SUITE_SECTION = {"accuracy": "pool", "interpretability": "rq1", "discovery": "rq2",
                 "alignment": "rq3", "connectivity": "connectivity", "psp": "minima",
                 "sharpness": "minima"}
_LINESTYLES = ("-", "--", ":", "-.")
MAX_LINES = 8


@dataclass(frozen=True)
class FigureSpec:
    """One figure: rows of ``suite`` with a metric in ``metrics`` (None: the suite's metrics no
    other spec names), one panel per value of the ``panels`` columns, one line per value of the
    ``lines`` columns; key columns in neither are pooled."""

    name: str
    title: str
    suite: str
    metrics: tuple[str, ...] | None
    panels: tuple[str, ...]
    lines: tuple[str, ...]
    first_present: bool = False    # draw only the first metric of ``metrics`` that has rows
    accuracy_axis: bool = True     # test accuracy on a twin axis (panels holding one run group)
    multi_group_only: bool = False  # an overlay that only makes sense for several run groups

    @property
    def section(self) -> str:
        return SUITE_SECTION.get(self.suite, "other")


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("accuracy", "Test accuracy vs sparsity", "accuracy", ("accuracy",),
               panels=("metric",), lines=("group", "dataset"), accuracy_axis=False),
    FigureSpec("interpretability", "Relevance Mass / Rank Accuracy vs sparsity per attribution "
               "method (Cassano et al. Fig. 3/4)", "interpretability", ("rma", "rra"),
               panels=("group", "dataset", "metric"), lines=("method",)),
    FigureSpec("interpretability_overlay", "Relevance Mass / Rank Accuracy vs sparsity: runs overlaid",
               "interpretability", ("rma", "rra"), panels=("dataset", "metric", "method"),
               lines=("group",), accuracy_axis=False, multi_group_only=True),
    FigureSpec("discovery", "LOST object discovery vs sparsity per model (Cassano et al. Fig. 5)",
               "discovery", ("corloc", "iou"), panels=("metric", "dataset"), lines=("group", "method")),
    FigureSpec("alignment_ood", "Accuracy per out-of-distribution dataset vs sparsity "
               "(Cassano et al. Fig. 6)", "alignment", ("accuracy", "ood_accuracy"),
               panels=("dataset",), lines=("group",), first_present=True),
    FigureSpec("shape_bias", "Shape bias vs sparsity (cue-conflict)", "alignment", ("shape_bias",),
               panels=("metric",), lines=("group", "dataset")),
    FigureSpec("consistency", "Consistency with human decisions vs sparsity", "alignment",
               ("error_consistency", "observed_consistency", "accuracy_difference"),
               panels=("metric",), lines=("group", "dataset")),
    FigureSpec("connectivity", "Connectivity and locality of the surviving weights vs sparsity",
               "connectivity", None, panels=("metric",), lines=("group", "method", "condition")),
    FigureSpec("psp_entropy", "PSP-entropy per layer vs sparsity", "psp", ("psp_entropy",),
               panels=("metric",), lines=("group", "method")),
    FigureSpec("sharpness", "Sharpness of the minimum vs sparsity", "sharpness", None,
               panels=("metric",), lines=("group", "method")),
)


@dataclass(frozen=True)
class Figure:
    """A drawn figure: files relative to the report folder."""

    name: str
    section: str
    title: str
    caption: str
    png: Path
    svg: Path


def resolve_specs(frame: pd.DataFrame) -> list[FigureSpec]:
    """:data:`FIGURES` with open metric lists filled in, plus a generic spec for every suite or
    metric no spec draws."""
    present = frame.groupby("suite")["metric"].unique().to_dict()
    named = {(s.suite, m) for s in FIGURES if s.metrics for m in s.metrics}
    specs = []
    for spec in FIGURES:
        if spec.metrics is None:
            rest = tuple(sorted(m for m in present.get(spec.suite, ()) if (spec.suite, m) not in named))
            spec = replace(spec, metrics=rest)
            named |= {(spec.suite, m) for m in rest}
        specs.append(spec)
    for suite, metrics in sorted(present.items()):
        rest = tuple(sorted(m for m in metrics if (suite, m) not in named))
        if rest:
            specs.append(FigureSpec(f"{suite}_other", f"{suite}: {', '.join(rest)} vs sparsity", suite,
                                    rest, panels=("metric",),
                                    lines=("group", "method", "dataset", "condition")))
    return specs


def _rows(frame: pd.DataFrame, spec: FigureSpec) -> pd.DataFrame:
    rows = frame[(frame["suite"] == spec.suite) & frame["metric"].isin(spec.metrics or ())]
    if spec.first_present and len(rows):
        first = next(m for m in spec.metrics if (rows["metric"] == m).any())
        rows = rows[rows["metric"] == first]
    return rows


def _at_resolution(rows: pd.DataFrame, spec: FigureSpec) -> tuple[pd.DataFrame, bool]:
    """Pool the key columns the figure does not split on; also say whether none had to be pooled
    (only then do curve points map one-to-one onto sweet-spot rows)."""
    split = {"suite", *spec.panels, *spec.lines}
    pooled = [c for c in KEY if c not in split and rows[c].nunique() > 1]
    return (rows.assign(**{c: "" for c in pooled}), not pooled)


def _fit_lines(spec: FigureSpec, summary: pd.DataFrame) -> FigureSpec:
    """Move the busiest line column (e.g. one line per layer of a deep network) into the panels
    until no panel holds more than :data:`MAX_LINES` curves."""
    while True:
        per_panel = summary.groupby(list(spec.panels))[list(spec.lines)].apply(
            lambda p: len(p.drop_duplicates())).max()
        movable = [c for c in spec.lines if c != "group"]
        if per_panel <= MAX_LINES or not movable:
            return spec
        busiest = max(movable, key=lambda c: summary[c].nunique())
        spec = replace(spec, panels=(*spec.panels, busiest),
                       lines=tuple(c for c in spec.lines if c != busiest))


def _natural(key: tuple) -> list:
    """Sort key that puts layer2 before layer10."""
    return [tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(v))) for v in key]


def _label(values: tuple, columns: tuple[str, ...], show_group: bool) -> str:
    parts = [str(v) for v, c in zip(values, columns) if str(v) and (c != "group" or show_group)]
    return " · ".join(parts)


def draw_figures(frame: pd.DataFrame, out_dir: str | Path, groups: Mapping[str, str] | None = None,
                 spots: pd.DataFrame | None = None, summary: pd.DataFrame | None = None,
                 n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[list[Figure], list[tuple[str, str, str]]]:
    """Draw every figure the results allow into ``out_dir`` (PNG + SVG).

    ``summary`` is :func:`group_summary` of ``frame`` (computed when not given); figures that pool
    key columns summarise their own rows. Returns the figures and the skipped ones as
    ``(suite, name, reason)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    group_of = run_groups(frame, groups)
    group_order = sorted(group_of.unique())
    if summary is None:
        summary = group_summary(frame, groups, n_boot, confidence, seed)
    accuracy = accuracy_rows(summary)
    figures, skipped = [], []
    for spec in tqdm(resolve_specs(frame), desc="figures", disable=None, leave=False):
        rows = _rows(frame, spec)
        if spec.multi_group_only and group_of[rows.index].nunique() < 2:
            continue
        if rows.empty:
            wanted = ", ".join(spec.metrics) if spec.metrics else "any metric"
            skipped.append((spec.suite, spec.name, f"no results of suite '{spec.suite}' ({wanted})"))
            continue
        rows, exact = _at_resolution(rows, spec)
        if exact:
            curves = summary[(summary["suite"] == spec.suite) & summary["metric"].isin(rows["metric"])]
        else:
            curves = group_summary(rows, groups, n_boot, confidence, seed)
        spec = _fit_lines(spec, curves)
        fig = _draw(spec, curves, accuracy, spots if exact else None, group_order)
        stem = out_dir / spec.name
        with matplotlib.rc_context({"svg.hashsalt": "prunelens", "svg.fonttype": "none"}):
            fig.savefig(stem.with_suffix(".png"), dpi=110)
            fig.savefig(stem.with_suffix(".svg"), metadata={"Date": None})
        figures.append(Figure(spec.name, spec.section, spec.title, _caption(spec, curves, confidence),
                              Path(out_dir.name) / f"{spec.name}.png",
                              Path(out_dir.name) / f"{spec.name}.svg"))
    return figures, skipped


def _caption(spec: FigureSpec, summary: pd.DataFrame, confidence: float) -> str:
    seeds = int(summary["n_seeds"].max()) if len(summary) else 1
    how = "two-stage bootstrap over seeds and items" if seeds > 1 else "bootstrap over items"
    text = (f"Mean per pruning level; band: {confidence:.0%} CI ({how}; none where a level has a "
            "single value).")
    if spec.accuracy_axis and spec.suite != "accuracy":
        text += " Dashed grey (right axis, in panels showing one run): its test accuracy."
    return text + (" ★ confirmed, ○ naive sweet spot (rule in the sweet-spot section); these come "
                   "from paired per-item differences with the dense level, so a star can sit where "
                   "the bands overlap.")


def _draw(spec: FigureSpec, summary: pd.DataFrame, accuracy: pd.DataFrame, spots: pd.DataFrame | None,
          group_order: list[str]) -> MplFigure:
    panels = sorted(summary.groupby(list(spec.panels)), key=lambda p: _natural(p[0]))
    inner = summary[spec.panels[-1]].nunique()  # the last panel column varies fastest: one per column
    ncols = min(len(panels), inner if 1 < inner <= 4 else (3 if len(panels) <= 9 else 4))
    nrows = math.ceil(len(panels) / ncols)
    fig = MplFigure(figsize=(4.6 * ncols, 3.5 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    show_group = len(group_order) > 1
    for ax, (pkey, pdata) in zip(axes, panels):
        _draw_panel(ax, spec, pdata, accuracy, spots, group_order, show_group)
        ax.set_title(_label(pkey, spec.panels, show_group) or spec.suite, fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(spec.title, fontsize=10)
    return fig


def _draw_panel(ax, spec: FigureSpec, pdata: pd.DataFrame, accuracy: pd.DataFrame,
                spots: pd.DataFrame | None, group_order: list[str], show_group: bool) -> None:
    handles = []
    marked = set()
    lines = sorted(pdata.groupby(list(spec.lines)), key=lambda p: _natural(p[0]))
    for i, (lkey, line) in enumerate(lines):
        line = line.sort_values("level")
        style = _LINESTYLES[group_order.index(line["group"].iloc[0]) % len(_LINESTYLES)]
        x = line["sparsity"].to_numpy()
        (handle,) = ax.plot(x, line["mean"], ls=style, marker=".", color=f"C{i % 10}",
                            label=_label(lkey, spec.lines, show_group) or line["metric"].iloc[0])
        ax.fill_between(x, line["ci_low"], line["ci_high"], color=f"C{i % 10}", alpha=0.18, lw=0)
        handles.append(handle)
        if spots is not None:
            marked |= _mark_spots(ax, line, spots, f"C{i % 10}")
    ax.set_xlabel("sparsity")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    metrics = pdata["metric"].unique()
    ax.set_ylabel(metrics[0] if len(metrics) == 1 else "value")
    ax.grid(alpha=0.3)
    groups = pdata["group"].unique()
    if spec.accuracy_axis and len(groups) == 1:
        handles += _accuracy_axis(ax, accuracy[accuracy["group"] == groups[0]])
    for status, marker in (("confirmed", "*"), ("naive", "o")):
        if status in marked:
            handles.append(Line2D([], [], ls="", marker=marker, color="k", markersize=8,
                                  markerfacecolor="k" if status == "confirmed" else "none",
                                  label=f"{status} sweet spot"))
    ax.legend(handles=handles, fontsize=6 if len(handles) > 6 else 7, loc="best")


def _mark_spots(ax, line: pd.DataFrame, spots: pd.DataFrame, color: str) -> set[str]:
    first = line.iloc[0]
    match = np.ones(len(spots), dtype=bool)
    for col in ("group", *KEY):
        match &= (spots[col] == first[col]).to_numpy()
    hits = line.merge(spots.loc[match, ["level", "status"]], on="level")
    for status, marker in (("confirmed", "*"), ("naive", "o")):
        sel = hits[hits["status"] == status]
        ax.plot(sel["sparsity"], sel["mean"], ls="", marker=marker, markersize=11, color=color,
                markerfacecolor=color if status == "confirmed" else "none", markeredgewidth=1.5)
    return set(hits["status"])


def _accuracy_axis(ax, acc: pd.DataFrame) -> list:
    if acc.empty:
        return []
    acc = acc.sort_values("level")
    twin = ax.twinx()
    (handle,) = twin.plot(acc["sparsity"], acc["mean"], ls="--", color="0.4", lw=1, label="test accuracy")
    twin.fill_between(acc["sparsity"], acc["ci_low"], acc["ci_high"], color="0.4", alpha=0.12, lw=0)
    twin.set_ylabel("test accuracy", color="0.3")
    return [handle]
