"""Figures across pruning levels, drawn from whatever the results hold (PNG + SVG).

Every curve is a mean over items with its bootstrap CI band (two-stage over seeds where a group has
several, see :mod:`prunelens.stats`); runs are overlaid in one panel (by default colour per line,
line style per run group; a figure may name other style columns). Each suite declares its figures and which metrics they show
(:class:`prunelens.suite.FigureSpec`, :class:`prunelens.suite.Metric`): RMA/RRA per attribution
method with accuracy on a twin axis and sweet spots marked (Cassano et al. Fig. 3/4), CorLoc per
model (Fig. 5), accuracy per model-vs-human dataset and model against the pruning level, the
humans' accuracy on request (Fig. 6), accuracy per OOD dataset with runs overlaid, shape bias,
error consistency, connectivity/locality, PSP-entropy, sharpness. A metric no figure names gets a generic figure of its
suite, so nothing measured goes undrawn.
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

from prunelens.report.sweet_spots import accuracy_rows
from prunelens.stats import KEY, group_of, summarize
from prunelens.errors import ConfigError
from prunelens.io import naming
from prunelens.suite import FigureSpec, get_suite

_LINESTYLES = ("-", "--", ":", "-.")
MAX_LINES = 8
OTHER_SECTION = "other"


@dataclass(frozen=True)
class Plot(FigureSpec):
    """A figure to draw: a suite's :class:`~prunelens.suite.FigureSpec` with the suite, its metrics
    (those that name the figure) and the report section resolved."""

    suite: str = ""
    metrics: tuple[str, ...] = ()
    section: str = OTHER_SECTION

    @classmethod
    def of(cls, spec: FigureSpec, suite: str, metrics: tuple[str, ...], section: str) -> Plot:
        return cls(**vars(spec), suite=suite, metrics=metrics, section=section)


@dataclass(frozen=True)
class Figure:
    """A drawn figure: files relative to the report folder."""

    name: str
    section: str
    title: str
    caption: str
    png: Path
    svg: Path


def plots_for(frame: pd.DataFrame) -> list[Plot]:
    """The figures every suite in ``frame`` declares, plus a generic one per suite for the metrics
    none of its figures names (a suite this version does not know gets only that), so nothing
    measured goes undrawn."""
    plots = []
    for suite, metrics in sorted(frame.groupby("suite")["metric"].unique().to_dict().items()):
        try:
            declared = get_suite(suite)
        except ConfigError:
            declared = None
        section = declared.section.id if declared else OTHER_SECTION
        named: set[str] = set()
        for spec in declared.figures if declared else ():
            names = declared.figure_metrics(spec.name)
            named |= set(names)
            plots.append(Plot.of(spec, suite, names, section))
        rest = tuple(sorted(m for m in metrics if m not in named))
        if rest:
            generic = FigureSpec(f"{suite}_other", f"{suite}: {', '.join(rest)} vs sparsity",
                                 panels=("metric",), lines=("group", "method", "dataset", "condition"))
            plots.append(Plot.of(generic, suite, rest, section))
    return plots


def _rows(frame: pd.DataFrame, spec: Plot) -> pd.DataFrame:
    rows = frame[(frame["suite"] == spec.suite) & frame["metric"].isin(spec.metrics or ())]
    if spec.first_present and len(rows):
        first = next(m for m in spec.metrics if (rows["metric"] == m).any())
        rows = rows[rows["metric"] == first]
    if spec.prefer is not None:
        column, values = spec.prefer
        preferred = rows[column].isin(values)
        if preferred.any():
            rows = rows[preferred]
    return rows


def _at_resolution(rows: pd.DataFrame, spec: Plot) -> tuple[pd.DataFrame, bool]:
    """Pool the key columns the figure does not split on; also say whether none had to be pooled
    (only then do curve points map one-to-one onto sweet-spot rows)."""
    split = {"suite", *spec.panels, *spec.lines}
    pooled = [c for c in KEY if c not in split and rows[c].nunique() > 1]
    return (rows.assign(**{c: "" for c in pooled}), not pooled)


def _fit_lines(spec: Plot, summary: pd.DataFrame) -> Plot:
    """Move the busiest line column (e.g. one line per layer of a deep network) into the panels
    until no panel holds more than :data:`MAX_LINES` curves."""
    while True:
        per_panel = summary.groupby(list(spec.panels))[list(spec.lines)].apply(
            lambda p: len(p.drop_duplicates())).max()
        movable = [c for c in spec.lines if c != "group"] if len(spec.lines) > 1 else []
        if per_panel <= (spec.max_lines or MAX_LINES) or not movable:
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
                 n_boot: int = 1000, confidence: float = 0.95,
                 references: pd.DataFrame | None = None
                 ) -> tuple[list[Figure], list[tuple[str, str, str]]]:
    """Draw every figure the results allow into ``out_dir`` (PNG + SVG).

    ``summary`` is :func:`prunelens.stats.summarize` of ``frame`` (computed when not given);
    figures that pool key columns summarise their own rows. ``references``: the reference values
    to draw (:class:`prunelens.suite.FigureReference`; columns ``figure, group, key, value``, as
    :func:`prunelens.report.runs.figure_references` reads them), or None for none. Returns the
    figures and the skipped ones as ``(suite, name, reason)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups_of_rows = group_of(frame, groups)
    group_order = sorted(groups_of_rows.unique())
    if summary is None:
        summary = summarize(frame, groups, n_boot, confidence)
    accuracy = accuracy_rows(summary)
    figures, skipped = [], []
    for spec in tqdm(plots_for(frame), desc="figures", disable=None, leave=False):
        rows = _rows(frame, spec)
        if spec.multi_group_only and groups_of_rows[rows.index].nunique() < 2:
            continue
        if rows.empty:
            wanted = ", ".join(spec.metrics) if spec.metrics else "any metric"
            skipped.append((spec.suite, spec.name, f"no results of suite '{spec.suite}' ({wanted})"))
            continue
        rows, exact = _at_resolution(rows, spec)
        if exact:
            curves = summary[(summary["suite"] == spec.suite) & summary["metric"].isin(rows["metric"])]
        else:
            curves = summarize(rows, groups, n_boot, confidence)
        spec = _fit_lines(spec, curves)
        refs = (references[references["figure"] == spec.name]
                if references is not None and spec.reference is not None else None)
        fig = _draw(spec, curves, accuracy, spots if exact else None, group_order, refs)
        stem = out_dir / spec.name
        with matplotlib.rc_context({"svg.hashsalt": "prunelens", "svg.fonttype": "none"}):
            with naming(stem.with_suffix(".png")):
                fig.savefig(stem.with_suffix(".png"), dpi=110)
            with naming(stem.with_suffix(".svg")):
                fig.savefig(stem.with_suffix(".svg"), metadata={"Date": None})
        figures.append(Figure(spec.name, spec.section, spec.title,
                              _caption(spec, curves, confidence, refs is not None and not refs.empty),
                              Path(out_dir.name) / f"{spec.name}.png",
                              Path(out_dir.name) / f"{spec.name}.svg"))
    return figures, skipped


def _caption(spec: Plot, summary: pd.DataFrame, confidence: float, referenced: bool = False) -> str:
    seeds = int(summary["n_seeds"].max()) if len(summary) else 1
    how = "two-stage bootstrap over seeds and items" if seeds > 1 else "bootstrap over items"
    text = (f"Mean per pruning level; band: {confidence:.0%} CI ({how}; none where a level has a "
            "single value).")
    if spec.accuracy_axis and spec.suite != "accuracy":
        text += " Dashed grey (right axis, in panels showing one run): its test accuracy."
    styled = [c for c in spec.styles if c != "group" and summary[c].nunique() > 1]
    if styled:
        values = summary[styled].drop_duplicates().itertuples(index=False, name=None)
        text += (f" Line style: the {' · '.join(styled)} "
                 f"({', '.join(' · '.join(map(str, v)) for v in sorted(values, key=_natural))}).")
    if spec.x == "level":
        text += " x: pruning level (step); top axis: the sparsity of those levels."
    if referenced:
        text += (f" Dashed horizontal lines: {spec.reference.label} ({spec.reference.metric}), in the "
                 "colour of the line they belong to.")
    return text + (" ★ confirmed, ○ naive sweet spot (rule in the sweet-spot section); these come "
                   "from paired per-item differences with the dense level, so a star can sit where "
                   "the bands overlap.")


@dataclass(frozen=True)
class _Look:
    """How the lines of one figure look: a colour per value of the colour columns and a style per
    value of the style columns, the same in every panel."""

    colour_columns: tuple[str, ...]
    colours: dict[tuple, str]
    style_columns: tuple[str, ...]
    styles: dict[tuple, str]

    @classmethod
    def of(cls, spec: Plot, summary: pd.DataFrame, group_order: list[str]) -> _Look:
        colour_columns = tuple(c for c in spec.lines if c not in spec.styles) or spec.lines
        keys = sorted(summary[list(colour_columns)].drop_duplicates().itertuples(index=False, name=None),
                      key=_natural)
        palette = ([matplotlib.colormaps["tab20"](i) for i in range(20)] if len(keys) > 10
                   else [f"C{i}" for i in range(10)])
        colours = {k: palette[i % len(palette)] for i, k in enumerate(keys)}
        style_columns = tuple(spec.styles)
        if style_columns == ("group",):  # a run group keeps its style in every figure
            values = [(g,) for g in group_order]
        else:
            values = sorted(summary[list(style_columns)].drop_duplicates().itertuples(index=False, name=None),
                            key=_natural) if style_columns else [()]
        styles = {v: _LINESTYLES[i % len(_LINESTYLES)] for i, v in enumerate(values)}
        return cls(colour_columns, colours, style_columns, styles)

    def colour(self, line: pd.DataFrame) -> str:
        return self.colours[tuple(line[c].iloc[0] for c in self.colour_columns)]

    def style(self, line: pd.DataFrame) -> str:
        return self.styles[tuple(line[c].iloc[0] for c in self.style_columns)]


def _draw(spec: Plot, summary: pd.DataFrame, accuracy: pd.DataFrame, spots: pd.DataFrame | None,
          group_order: list[str], references: pd.DataFrame | None = None) -> MplFigure:
    panels = sorted(summary.groupby(list(spec.panels)), key=lambda p: _natural(p[0]))
    inner = summary[spec.panels[-1]].nunique()  # the last panel column varies fastest: one per column
    ncols = min(len(panels), inner if 1 < inner <= 4 else (3 if len(panels) <= 9 else 4))
    nrows = math.ceil(len(panels) / ncols)
    top_axis = 0.35 if spec.x == "level" else 0.0  # room for the sparsity axis above each panel
    width, height = 4.6 * ncols, (3.5 + top_axis) * nrows + 0.5
    fig = MplFigure(figsize=(width, height))
    # fixed margins in inches, room for a twin accuracy axis on the right: matplotlib's constrained
    # layout measures every tick label of every panel and took a third of the report's time
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=dict(
        left=0.7 / width, right=1 - 0.75 / width, bottom=0.55 / height,
        top=1 - (0.95 + top_axis) / height, wspace=2.0 / 4.6,
        hspace=(1.0 + top_axis) / 3.5)).ravel()
    show_group = len(group_order) > 1
    look = _Look.of(spec, summary, group_order)
    for ax, (pkey, pdata) in zip(axes, panels):
        _draw_panel(ax, spec, pdata, accuracy, spots, look, show_group, references)
        ax.set_title(_label(pkey, spec.panels, show_group) or spec.suite, fontsize=9,
                     pad=22 if spec.x == "level" else 6)  # above the top sparsity axis
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(spec.title, fontsize=10, y=1 - 0.2 / height, va="top")
    return fig


def _draw_panel(ax, spec: Plot, pdata: pd.DataFrame, accuracy: pd.DataFrame,
                spots: pd.DataFrame | None, look: _Look, show_group: bool,
                references: pd.DataFrame | None = None) -> None:
    handles = []
    marked = set()
    lines = sorted(pdata.groupby(list(spec.lines)), key=lambda p: _natural(p[0]))
    referenced = False
    for lkey, line in lines:
        line = line.sort_values("level")
        colour = look.colour(line)
        x = line[spec.x].to_numpy()
        (handle,) = ax.plot(x, line["mean"], ls=look.style(line), marker=".", color=colour,
                            label=_label(lkey, spec.lines, show_group) or line["metric"].iloc[0])
        ax.fill_between(x, line["ci_low"], line["ci_high"], color=colour, alpha=0.18, lw=0)
        handles.append(handle)
        if spots is not None:
            marked |= _mark_spots(ax, line, spots, colour, spec.x)
        if references is not None:
            referenced |= _reference_line(ax, spec, line, references, colour)
    if spec.x == "level":
        ax.set_xlabel("pruning level")
        ax.xaxis.get_major_locator().set_params(integer=True)
        _sparsity_axis(ax, pdata)
    else:
        ax.set_xlabel("sparsity")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    if spec.ylim is not None:
        ax.set_ylim(*spec.ylim)
    metrics = pdata["metric"].unique()
    ax.set_ylabel(metrics[0] if len(metrics) == 1 else "value")
    ax.grid(alpha=0.3)
    if referenced:
        handles.append(Line2D([], [], ls=_REFERENCE_STYLE, color="k", lw=1,
                              label=f"{spec.reference.label} (dashed, same colour)"))
    groups = pdata["group"].unique()
    if spec.accuracy_axis and len(groups) == 1:
        handles += _accuracy_axis(ax, accuracy[accuracy["group"] == groups[0]], spec.x)
    for status, marker in (("confirmed", "*"), ("naive", "o")):
        if status in marked:
            handles.append(Line2D([], [], ls="", marker=marker, color="k", markersize=8,
                                  markerfacecolor="k" if status == "confirmed" else "none",
                                  label=f"{status} sweet spot"))
    many = len(handles) > MAX_LINES  # e.g. Figure 6's 17 datasets: two columns, see-through
    ax.legend(handles=handles, fontsize=5.5 if many else 6 if len(handles) > 6 else 7, loc="best",
              ncol=2 if many else 1, framealpha=0.6 if many else 0.8)


_REFERENCE_STYLE = (0, (4, 3))


def _reference_line(ax, spec: Plot, line: pd.DataFrame, references: pd.DataFrame, colour) -> bool:
    """The reference value of ``line`` (its group's, matched on the reference's column) as a dashed
    horizontal line in its colour; whether there was one."""
    key = line[spec.reference.match].iloc[0]
    hit = references[(references["group"] == line["group"].iloc[0]) & (references["key"] == key)]
    if hit.empty:
        return False
    ax.axhline(float(hit["value"].mean()), ls=_REFERENCE_STYLE, color=colour, lw=1, alpha=0.9,
               gid=f"reference:{key}")
    return True


def _sparsity_axis(ax, pdata: pd.DataFrame) -> None:
    """A top axis that labels pruning levels with their sparsity (panels showing one run group)."""
    if pdata["group"].nunique() != 1:
        return
    sparsity = pdata.groupby("level")["sparsity"].mean()
    step = max(1, math.ceil(len(sparsity) / 6))
    ticks = sparsity.iloc[::step]
    top = ax.secondary_xaxis("top")
    top.set_ticks(ticks.index.to_numpy(dtype=float), labels=[f"{v:.0%}" for v in ticks])
    top.tick_params(labelsize=7)
    top.set_xlabel("sparsity", fontsize=8)


def _mark_spots(ax, line: pd.DataFrame, spots: pd.DataFrame, color: str, x: str = "sparsity") -> set[str]:
    first = line.iloc[0]
    match = np.ones(len(spots), dtype=bool)
    for col in ("group", *KEY):
        match &= (spots[col] == first[col]).to_numpy()
    hits = line.merge(spots.loc[match, ["level", "status"]], on="level")
    for status, marker in (("confirmed", "*"), ("naive", "o")):
        sel = hits[hits["status"] == status]
        ax.plot(sel[x], sel["mean"], ls="", marker=marker, markersize=11, color=color,
                markerfacecolor=color if status == "confirmed" else "none", markeredgewidth=1.5)
    return set(hits["status"])


def _accuracy_axis(ax, acc: pd.DataFrame, x: str = "sparsity") -> list:
    if acc.empty:
        return []
    acc = acc.sort_values("level")
    twin = ax.twinx()
    (handle,) = twin.plot(acc[x], acc["mean"], ls="--", color="0.4", lw=1, label="test accuracy")
    twin.fill_between(acc[x], acc["ci_low"], acc["ci_high"], color="0.4", alpha=0.12, lw=0)
    twin.set_ylabel("test accuracy", color="0.3")
    return [handle]
