"""The HTML page of a report: one self-contained file beside its figures, no script, no server.

Every piece of text that comes from a run (config values, run names, metric/method names, suite
messages) goes through :func:`html.escape`; images and downloads are relative links inside the
report folder, so the page works offline from any location.
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from prunelens.errors import ConfigError
from prunelens.report.claims import CORRECTION
from prunelens.report.claims import __doc__ as CLAIMS_METHOD
from prunelens.report.figures import Figure
from prunelens.report.sweet_spots import __doc__ as SWEET_SPOT_RULE
from prunelens.runfolder import RunFolder
from prunelens.suite import ReportSection, all_suites, available_suites, get_suite


#: where suites no version of prunelens declared a section for go
OTHER = ReportSection("other", "Other results", "Suites this version of prunelens does not know.",
                      order=1000)


def sections(evaluated: set[str]) -> list[tuple[ReportSection, tuple[str, ...]]]:
    """The report's sections in order, each with the suites it shows: every suite's declared
    section, and :data:`OTHER` for evaluated suites this version does not know."""
    by_id: dict[str, tuple[ReportSection, list[str]]] = {}
    unknown = []
    for name in sorted(set(available_suites()) | evaluated):
        try:
            section = get_suite(name).section
        except ConfigError:
            unknown.append(name)
            continue
        by_id.setdefault(section.id, (section, []))[1].append(name)
    out = sorted(((sec, tuple(names)) for sec, names in by_id.values()), key=lambda p: p[0].order)
    return out + ([(OTHER, tuple(unknown))] if unknown else [])


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#222;line-height:1.4}
h1{margin-bottom:.1em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
.muted{color:#666;font-size:.9em}nav a{margin-right:1em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right}
th{background:#f4f4f4}td.t,th.t{text-align:left}td{white-space:nowrap}td.t{white-space:normal}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444}
.confirmed{background:#e3f5e1}.naive{background:#fff7dd}
.supported{background:#e3f5e1}.contradicted{background:#fde2e1}.inconclusive{background:#fff7dd}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
details{margin:.4em 0}
"""


@dataclass
class ReportContent:
    """Everything the page shows (built by :func:`prunelens.report.write_report`)."""

    runs: Sequence[RunFolder]
    groups: dict[str, str]
    pools: dict[str, pd.DataFrame]
    figures: list[Figure]
    suite_images: dict[str, list[tuple[str, Path, Path | None]]]  # suite -> (run, figure, its data)
    spots: pd.DataFrame
    not_evaluated: list[tuple[str, str, str]]        # (suite or "", what, why)
    files: dict[str, Path]                           # title -> path inside the report
    confidence: float = 0.95
    version: str = ""
    evaluated_suites: set[str] = field(default_factory=set)
    settings: list[tuple[str, str, str]] = field(default_factory=list)  # (suite, run, description)
    claims: pd.DataFrame | None = None               # prunelens.report.claims.evaluate_claims


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence], text_cols: int = 1,
           row_class: Sequence[str] | None = None) -> str:
    def cell(tag, i, v):
        cls = ' class="t"' if i < text_cols else ""
        return f"<{tag}{cls}>{v}</{tag}>"
    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{esc(row_class[r])}"' if row_class else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pct(value) -> str:
    return "–" if value is None or value != value else f"{value:.1%}"


def _ci(delta, lo, hi) -> str:
    return esc(f"{_fmt(delta)} [{_fmt(lo)}, {_fmt(hi)}]")


def _link(path: Path, text: str) -> str:
    return f'<a href="{esc(path.as_posix())}">{esc(text)}</a>'


# ---- sections ------------------------------------------------------------------------------------
def _provenance(c: ReportContent) -> str:
    rows = [(esc(r.name), esc(r.config.model.name), esc(r.config.data.name), esc(r.config.seed),
             esc(c.groups.get(r.name, r.name)), esc(r.identity_hash), esc(len(r.levels)),
             "yes" if r.complete else "<b>no</b>",
             esc(", ".join(f"{k} {v}" for k, v in sorted(r.versions.items()))), esc(r.run_dir))
            for r in c.runs]
    parts = [_table(("run", "model", "data", "seed", "group", "identity hash", "levels", "complete",
                     "versions", "folder"), rows, text_cols=10)]
    for r in c.runs:
        config = yaml.safe_dump(r.info["config"], sort_keys=True, default_flow_style=False)
        parts.append(f"<details><summary>Config of {esc(r.name)}</summary><pre>{esc(config)}</pre>"
                     "</details>")
    return "".join(parts)


def _pool_tables(c: ReportContent) -> str:
    parts = []
    for r in c.runs:
        table = c.pools[r.name]
        rows = [(esc(int(t.level)), esc(f"{t.sparsity:.1%}"), esc(_pct(t.sparsity_all)),
                 esc(_pct(t.sparsity_paper)),
                 esc(_fmt(t.train_acc)), esc(_fmt(t.val_acc)),
                 esc(_fmt(t.test_acc)), esc(_fmt(t.test_loss)), esc(_fmt(t.epochs)), esc(_fmt(t.steps)),
                 esc(_fmt(t.wall_time_s, 1)),
                 f'<span title="{esc(t.model_sha256)}">{esc(str(t.model_sha256)[:12])}</span>',
                 f'<span title="{esc(t.masks_sha256)}">{esc(str(t.masks_sha256)[:12])}</span>')
                for t in table.itertuples()]
        parts.append(f"<h3>Pool of {esc(r.name)}</h3>" + _table(
            ("level", "sparsity", "of all parameters", "paper's count", "train acc", "val acc",
             "test acc", "test loss", "epochs", "steps", "wall time (s)", "model sha256", "masks sha256"), rows))
        if r.config.prune.init_sparsity > 0:
            parts.append(f'<p class="muted">Level 0 of {esc(r.name)} is not dense: it trained under a '
                         f"random mask (<code>prune.init_sparsity</code> {esc(r.config.prune.init_sparsity)}, "
                         "Pellegrini &amp; Biroli's control, SiftingFeatures Utils.py:93-101), at the "
                         "sparsity shown. It is still the baseline every level is compared with "
                         "(\"vs dense\", sweet spots).</p>")
    if parts:
        parts.append('<p class="muted">Sparsity three ways: of the pruned weights, of all parameters, '
                     "and as Cassano et al.'s code counts it (pruned weights over every Conv2d and "
                     "Linear weight, train.py <code>compute_sparsity_global</code>), the count to "
                     "match the paper's x-axes.</p>")
    return "".join(parts)


def _spot_table(spots: pd.DataFrame, confidence: float) -> str:
    if spots.empty:
        return "<p>No sweet spot: no level beats the dense model on both a metric and accuracy.</p>"
    spots = spots.sort_values(["status", "group", "suite", "metric", "method", "dataset", "condition",
                               "level"])
    rows = [(esc(s.status), esc(s.group), esc(s.suite), esc(s.metric), esc(s.method), esc(s.dataset),
             esc(s.condition), esc(int(s.level)), esc(f"{s.sparsity:.1%}"),
             _ci(s.delta, s.ci_low, s.ci_high), _ci(s.acc_delta, s.acc_ci_low, s.acc_ci_high),
             esc(f"{int(s.n_items)} / {int(s.n_seeds)}"))
            for s in spots.itertuples()]
    header = ("status", "group", "suite", "metric", "method", "dataset", "condition", "level",
              "sparsity", f"Δ metric [{confidence:.0%} CI]", f"Δ accuracy [{confidence:.0%} CI]",
              "items / seeds")
    return _table(header, rows, text_cols=7, row_class=list(spots["status"]))


def _figures(c: ReportContent, section: ReportSection, suites: tuple[str, ...]) -> str:
    parts = []
    for fig in c.figures:
        if fig.section == section.id:
            parts.append(f'<figure id="fig-{esc(fig.name)}"><img src="{esc(fig.png.as_posix())}" '
                         f'alt="{esc(fig.title)}"><figcaption><b>{esc(fig.title)}.</b> '
                         f"{esc(fig.caption)} {_link(fig.svg, 'SVG')}</figcaption></figure>")
    for suite in suites:
        parts += _drawn_figures(suite, c.suite_images.get(suite, []))
    return "".join(parts)


def _drawn_figures(suite: str, images: list[tuple[str, Path, Path | None]]) -> list[str]:
    """The figures a suite drew itself: per run, those it declares (:attr:`Suite.drawn_figures`)
    in their order, with their title, caption and data, then any other."""
    try:
        declared = {f.name: (i, f) for i, f in enumerate(get_suite(suite).drawn_figures)}
    except ConfigError:
        declared = {}
    runs = list(dict.fromkeys(run for run, _, _ in images))

    def order(image) -> tuple[int, int]:
        run, path, _ = image
        return runs.index(run), declared[path.stem][0] if path.stem in declared else len(declared)

    parts, heading = [], None
    for run, path, data in sorted(images, key=order):
        spec = declared[path.stem][1] if path.stem in declared else None
        if spec is not None and heading != run:
            heading = run
            parts.append(f"<h3>Across levels: {esc(run)}</h3>")
        title = f"<b>{esc(spec.title)}</b> ({esc(run)}). {esc(spec.caption)}" if spec else (
            f"{esc(path.stem)} — drawn by the {esc(suite)} suite of {esc(run)}.")
        link = f" {_link(data, 'data (CSV)')}" if data is not None else ""
        parts.append(f'<figure id="fig-{esc(run)}-{esc(path.stem)}"><img src="{esc(path.as_posix())}" '
                     f'alt="{esc(spec.title if spec else path.stem)}"><figcaption>{title}{link}'
                     "</figcaption></figure>")
    return parts


def _section(c: ReportContent, section: ReportSection, suites: tuple[str, ...]) -> str:
    settings = "".join(f"<li>{esc(run)} ({esc(suite)}): {esc(text)}</li>"
                       for suite, run, text in c.settings if suite in suites)
    body = (f'<p class="muted">Settings:</p><ul class="muted">{settings}</ul>' if settings else "")
    body += (_pool_tables(c) if section.id == "pool" else "") + _figures(c, section, suites)
    spots = c.spots[c.spots["suite"].isin(suites)] if len(c.spots) else c.spots
    if len(spots):
        body += "<h3>Sweet spots</h3>" + _spot_table(spots, c.confidence)
    missing = [(what, why) for suite, what, why in c.not_evaluated if suite in suites]
    if missing:
        body += "<h3>Not evaluated</h3><ul>" + "".join(
            f"<li>{esc(what)}: {esc(why)}</li>" for what, why in missing) + "</ul>"
    if not body:
        body = "<p>Nothing measured for this question.</p>"
    return (f'<section id="{esc(section.id)}"><h2>{esc(section.title)}</h2>'
            f'<p class="muted">{esc(section.question)}</p>{body}</section>')


def _rule() -> str:
    """The rule as stated in :mod:`prunelens.report.sweet_spots` (its docstring, reST markup off)."""
    paragraphs = []
    for block in SWEET_SPOT_RULE.split("\n\n")[1:]:
        text = esc(re.sub(r":\w+:`~?([^`]*)`", r"\1", block.strip()).replace("``", "").replace("::", ":"))
        text = re.sub(r"\*\*(\w+)\*\*", r"<b>\1</b>", text).replace("*", "")
        paragraphs.append(f"<pre>{text}</pre>" if block.startswith("    ") else f"<p>{text}</p>")
    directions = [(esc(suite.name), esc(m.name), esc(m.unit),
                   esc(m.direction if m.direction != "none" else "— (not a criterion)"), esc(m.why))
                  for suite in all_suites() for m in suite.metrics]
    return ("".join(paragraphs) + "<details><summary>Direction of each metric</summary>"
            + _table(("suite", "metric", "unit", "better", "why"), directions, text_cols=5)
            + "</details>")


def _claims(c: ReportContent) -> str:
    """The claims table (:mod:`prunelens.report.claims`), its method and how to read a verdict."""
    method = []
    for block in CLAIMS_METHOD.split("\n\n")[1:]:
        items = []
        for item in re.split(r"\n(?=\d\. )", block.strip()):
            text = esc(re.sub(r":\w+:`~?([^`]*)`", r"\1", " ".join(item.split())).replace("``", ""))
            text = re.sub(r"\*\*(\w[\w ]*)\*\*", r"<b>\1</b>", text)
            items.append(re.sub(r"\*(\w[^*]*)\*", r"<i>\1</i>", text))
        method.append("<ol>" + "".join(f"<li>{re.sub(r'^[0-9]+[.] ', '', i)}</li>" for i in items)
                      + "</ol>" if len(items) > 1 else f"<p>{items[0]}</p>")
    claims = c.claims if c.claims is not None else pd.DataFrame()
    if claims.empty:
        return ("<p>No claim could be tested: none of the suites that declare one has results "
                "(or none declares one).</p>" + "".join(method))
    seeds = int(claims["n_seeds"].max())
    header = ("run or comparison", "of", "statistic", f"value [{c.confidence:.0%} CI]", "p",
              f"p ({CORRECTION})", "expected sign", "verdict", "levels / seeds / items", "resampled",
              "note")
    tables = []
    for claim, part in claims.groupby("claim", sort=False):
        rows, classes = [], []
        for t in part.itertuples():
            of = " · ".join(str(v) for v in (t.metric, t.method, t.dataset, t.condition) if v)
            rows.append((esc(t.compared), esc(of), esc(t.statistic),
                         _ci(t.value, t.ci_low, t.ci_high), esc(_fmt(t.p)), esc(_fmt(t.p_holm)),
                         esc(t.expected), f"<b>{esc(t.verdict)}</b>",
                         esc(f"{int(t.n_levels)} / {int(t.n_seeds)} / {int(t.n_items)}"),
                         esc(t.resampled), esc(t.note)))
            classes.append(str(t.verdict).replace(" ", "-"))
        tables.append(f'<h3 id="claim-{esc(claim)}">{esc(part["statement"].iloc[0])}</h3>'
                      f'<p class="muted">{esc(claim)} ({esc(part["suite"].iloc[0])}): y = '
                      f'{esc(part["y"].iloc[0])}, x = {esc(part["x"].iloc[0])}</p>'
                      + _table(header, rows, text_cols=2, row_class=classes))
    counts = claims["verdict"].value_counts()
    summary = (f"<p><b>{int(counts.get('supported', 0))}</b> supported, "
               f"<b>{int(counts.get('contradicted', 0))}</b> contradicted, "
               f"<b>{int(counts.get('inconclusive', 0))}</b> inconclusive at {c.confidence:.0%} "
               f"confidence, {CORRECTION}-corrected over the {int(claims['p_holm'].notna().sum())} "
               f"rows that predict a sign; at most {seeds} seed(s) per run.</p>")
    return summary + "".join(tables) + (
        "<details><summary>How the claims are computed and how to read a verdict</summary>"
        + "".join(method) + "</details>")


def _seeds(c: ReportContent) -> str:
    """How many seeds went into each group: seeds of one experiment are replicates of its intervals
    and claims."""
    sizes: dict[str, int] = {}
    for run in c.runs:
        label = c.groups.get(run.name, run.name)
        sizes[label] = sizes.get(label, 0) + 1
    pooled = [f"{esc(label)}: {n} seeds" for label, n in sizes.items() if n > 1]
    if not pooled:
        return ("Seeds: one per run, so intervals and claims cover images and levels, not a "
                "retraining with another seed (report several seeds of one experiment to cover that).")
    return ("Seeds pooled as replicates (resampled first in every interval and claim): "
            + "; ".join(pooled) + ".")


def render(c: ReportContent) -> str:
    """The full page as a string."""
    shown = sections(c.evaluated_suites)
    counts = c.spots["status"].value_counts() if len(c.spots) else pd.Series(dtype=int)
    nav = "".join(f'<a href="#{esc(sec.id)}">{esc(sec.title)}</a>' for sec, _ in shown)
    runs = ", ".join(esc(r.name) for r in c.runs)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    files = " · ".join(_link(path, title) for title, path in c.files.items())
    not_eval = "".join(f"<li>{esc(what)}: {esc(why)}</li>" for _, what, why in c.not_evaluated)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>prunelens report — {runs}</title><style>{_CSS}</style></head>
<body>
<h1>prunelens report</h1>
<p class="muted">Runs: {runs}. Generated {esc(stamp)} by prunelens {esc(c.version)}.</p>
<p class="muted">{_seeds(c)}</p>
<p><b>{int(counts.get("confirmed", 0))}</b> confirmed and <b>{int(counts.get("naive", 0))}</b> naive
sweet spots (<a href="#sweet-spots">rule and table</a>). Tables: {files}</p>
<nav><a href="#provenance">Runs</a>{nav}<a href="#claims">Claims</a><a href="#sweet-spots">Sweet spots</a>
<a href="#not-evaluated">Not evaluated</a></nav>
<section id="provenance"><h2>Runs: config and provenance</h2>{_provenance(c)}
<p class="muted">Every level's model and mask sha256 is in its pool table (hover for the full hash).
Results were read from <code>RUN_DIR/results/</code>, each file checked against its recorded sha256.
</p></section>
{"".join(_section(c, sec, suites) for sec, suites in shown)}
<section id="claims"><h2>Claims</h2>
<p class="muted">The papers' conclusions as statistics across pruning levels.</p>{_claims(c)}</section>
<section id="sweet-spots"><h2>Sweet spots</h2>{_rule()}{_spot_table(c.spots, c.confidence)}</section>
<section id="not-evaluated"><h2>Not evaluated, and why</h2>
{f"<ul>{not_eval}</ul>" if not_eval else "<p>Everything was evaluated.</p>"}</section>
</body></html>
"""
