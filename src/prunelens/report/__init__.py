"""The report: sweet spots with bootstrap CIs, figures across pruning levels, one HTML folder.

``build_report(run_dirs, out_dir)`` reads one or several run folders (their pool manifests and the
tidy results of :func:`prunelens.results.load_results`) and writes ``out_dir/index.html`` with
``figures/`` (PNG + SVG), ``suites/`` (figures the suites drew themselves) and the tables it shows as
CSV. Runs whose configs differ only by ``seed`` are pooled into one group (seeds become a level of
the bootstrap).

Everything the report writes stays inside ``out_dir``: its lock (``.lock``), its marker (which
records what the report was built from), and the build folder, which is assembled inside and
swapped in entry by entry, ``index.html`` last. A report whose inputs (the runs' manifests and
results files, the report options, prunelens's version) are unchanged is not rebuilt.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

import prunelens
from prunelens.errors import PrunelensError
from prunelens.io import atomic_write_bytes, current_umask, naming
from prunelens.report.claims import evaluate_claims, run_facts
from prunelens.report.figures import draw_figures
from prunelens.report.html import ReportContent, render
from prunelens.report.runs import (evaluated_suites, figure_references, figures_not_drawn,
                                   not_applicable, pool_accuracy_rows, pool_table, seed_groups,
                                   skip_reasons, suite_pngs)
from prunelens.report.sweet_spots import ACCURACY, accuracy_rows, compare_to_dense, sweet_spots

from prunelens.runfolder import Layout, RunFolder, RunLock, distinct_runs
from prunelens.stats import summarize
from prunelens.results import options_used
from prunelens.suite import available_suites, metric_of

__all__ = ["build_report", "write_report", "seed_groups", "compare_to_dense", "sweet_spots",
           "draw_figures", "build_claims", "evaluate_claims"]

MARKER = ".prunelens-report"
LOCK = ".lock"
INDEX = "index.html"


def build_report(run_dirs: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
                 *, n_boot: int | None = None, confidence: float = 0.95, references: bool = False,
                 log=print) -> Path:
    """Write the report of ``run_dirs`` into ``out_dir`` (default ``RUN_DIR/report`` of the first
    run) and return the path of its ``index.html``. ``n_boot`` defaults to the first run's
    ``evaluate.n_boot``. ``references``: also draw the reference values the suites' figures declare
    (:class:`prunelens.suite.FigureReference`: the humans' accuracy per dataset in Figure 6). A
    report already built from the same inputs is kept as it is (and ``log`` says so)."""
    from prunelens.results import load_results

    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    runs = distinct_runs(run_dirs)
    for run in runs:
        run.levels  # noqa: B018 - every level.json verified before a report, built or kept, stands
    out_dir = _out_dir(runs, out_dir)
    n_boot = runs[0].config.evaluate.n_boot if n_boot is None else n_boot
    inputs = report_inputs(runs, n_boot, confidence, references)
    if _marker(out_dir).get("inputs") == inputs and (out_dir / INDEX).is_file():
        log(f"report: {out_dir / INDEX} is up to date (same runs, results and options): not rebuilt")
        return out_dir / INDEX
    frame = load_results([r.run_dir for r in runs])
    return write_report(runs, frame, out_dir, n_boot=n_boot, confidence=confidence,
                        references=references, inputs=inputs)


def report_inputs(runs: Sequence[RunFolder], n_boot: int, confidence: float,
                  references: bool = False) -> str:
    """A digest of everything a report is built from: prunelens's version, the options, and for
    each run its folder, its manifest's sha256 (which covers every level.json) and the sha256 of
    every file the report reads from its results (tables, sidecars, suite figures, skip reasons)."""
    from prunelens.config import digest
    from prunelens.io import sha256_file

    parts = []
    for run in runs:
        files = {str(p.relative_to(run.layout.results)): sha256_file(p)
                 for p in sorted(run.layout.results.glob("*/*")) if p.is_file()}
        parts.append({"run": str(run.run_dir.resolve()), "manifest": run.info["manifest_sha256"],
                      "results": files})
    return digest({"prunelens": prunelens.__version__, "n_boot": n_boot, "confidence": confidence,
                   "references": references, "runs": parts})


def _out_dir(runs: Sequence[RunFolder], out_dir: str | Path | None) -> Path:
    return Path(out_dir) if out_dir is not None else runs[0].layout.report


def _marker(out_dir: Path) -> dict:
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return marker if isinstance(marker, dict) else {}


def build_claims(run_dirs: str | Path | Sequence[str | Path], *, n_boot: int | None = None,
                 confidence: float = 0.95) -> pd.DataFrame:
    """The claims table of ``run_dirs`` (:func:`prunelens.report.claims.evaluate_claims`), as the
    report computes it: seeds of one experiment pooled, level.json accuracy where the accuracy suite
    has no results."""
    from prunelens.results import load_results

    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    runs = distinct_runs(run_dirs)
    frame = _with_pool_accuracy(load_results([r.run_dir for r in runs]), runs)
    n_boot = runs[0].config.evaluate.n_boot if n_boot is None else n_boot
    return evaluate_claims(frame, seed_groups(runs), n_boot, confidence, facts=run_facts(runs))


def write_report(runs: Sequence[RunFolder], frame: pd.DataFrame, out_dir: str | Path | None = None,
                 *, n_boot: int | None = None, confidence: float = 0.95, references: bool = False,
                 inputs: str | None = None) -> Path:
    """:func:`build_report` on runs already read and their results frame (columns of
    :func:`prunelens.results.load_results`); ``inputs`` (:func:`report_inputs`) is recorded in the
    marker, so a later :func:`build_report` of the same inputs keeps this report."""
    if not runs:
        raise PrunelensError("report: give at least one run folder")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise PrunelensError(f"report: runs must have different names, got {names}; rename one "
                             "(the `name` key of its config) or report them separately")
    out_dir = _out_dir(runs, out_dir)
    if n_boot is None:
        n_boot = runs[0].config.evaluate.n_boot
    groups = seed_groups(runs)
    frame = _with_pool_accuracy(frame, runs)

    comparisons = compare_to_dense(frame, groups, n_boot, confidence)
    spots = sweet_spots(comparisons)
    not_evaluated = _not_evaluated(runs, frame, comparisons)

    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir, out_dir / LOCK, f"report folder {out_dir}"):
        _check_out_dir(out_dir)
        return _build(runs, frame, out_dir, groups, comparisons, spots, not_evaluated, n_boot,
                      confidence, inputs, references)


def _build(runs: Sequence[RunFolder], frame: pd.DataFrame, out_dir: Path, groups, comparisons, spots,
           not_evaluated, n_boot: int, confidence: float, inputs: str | None,
           references: bool = False) -> Path:
    """Build the report inside ``out_dir`` and swap it in (the caller holds its lock)."""
    _remove_leftovers(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".build-"))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        summary = summarize(frame, groups, n_boot, confidence)
        claims = evaluate_claims(frame, groups, n_boot, confidence, facts=run_facts(runs))
        refs = None
        if references:
            refs, lacking = figure_references(runs, groups, frame)
            not_evaluated += lacking
        figures, skipped = draw_figures(frame, tmp / "figures", groups, spots, summary, n_boot,
                                        confidence, refs)
        not_evaluated += [(suite, f"figure '{name}'", why) for suite, name, why in skipped]
        files = {
            "per-level summary (CSV)": _write_csv(tmp / Layout.SUMMARY_CSV, summary),
            "every level vs dense (CSV)": _write_csv(tmp / "level_vs_dense.csv", comparisons),
            "sweet spots (CSV)": _write_csv(tmp / "sweet_spots.csv", spots),
            "claims (CSV)": _write_csv(tmp / "claims.csv", claims),
        }
        content = ReportContent(
            runs=runs, groups=groups, pools={r.name: pool_table(r) for r in runs}, figures=figures,
            suite_images=_copy_suite_images(runs, tmp / "suites"), spots=spots,
            not_evaluated=not_evaluated, files=files, confidence=confidence,
            version=prunelens.__version__, evaluated_suites=set(frame["suite"]),
            settings=_settings(runs, frame), claims=claims)
        atomic_write_bytes(tmp / INDEX, render(content).encode())
        _swap_in(tmp, out_dir, inputs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_leftovers(out_dir)
    return out_dir / INDEX


# ---- inputs the results do not hold --------------------------------------------------------------
def _with_pool_accuracy(frame: pd.DataFrame, runs: Sequence[RunFolder]) -> pd.DataFrame:
    """Add ``level.json`` test accuracy for runs without accuracy-suite results."""
    have = set(accuracy_rows(frame)["run"])
    extra = [pool_accuracy_rows(r) for r in runs if r.name not in have and r.levels]
    return pd.concat([frame, *extra], ignore_index=True) if extra else frame


def _not_evaluated(runs: Sequence[RunFolder], frame: pd.DataFrame, comparisons: pd.DataFrame
                   ) -> list[tuple[str, str, str]]:
    """(suite, what, why) for every suite, level and metric the report cannot show."""
    out = []
    for run in runs:
        if not run.complete:
            out.append(("", f"pool of {run.name}", "incomplete (pruning stopped or still running): "
                        f"only levels {_levels([lv.index for lv in run.levels])} exist"))
        rows = frame[frame["run"] == run.name]
        reasons = skip_reasons(run)
        for suite, parts in not_applicable(run).items():
            out += [(suite, f"{part} of suite '{suite}' on {run.name}", why) for part, why in parts.items()]
        pool_levels = {lv.index for lv in run.levels}
        for suite in available_suites():
            measured = rows[rows["suite"] == suite]
            if measured.empty:
                listed = run.config.evaluate.suites
                why = (f"not in evaluate.suites of its config ({', '.join(listed)})"
                       if listed is not None and suite not in listed else
                       f"no results in {run.run_dir / 'results' / suite}")
                out.append((suite, f"suite '{suite}' on {run.name}", reasons.get(
                    suite, f"{why} — run `prunelens evaluate {run.run_dir} --suite {suite}`")))
            elif suite == ACCURACY["suite"] and (measured["item"] == "").all():
                out.append((suite, f"per-image accuracy on {run.name}", "the accuracy suite has no "
                            "results; level.json test accuracy is used, one value per level, so no "
                            "sweet spot of this run can be confirmed"))
            else:
                missing = sorted(pool_levels - set(measured["level"].astype(int)))
                if missing:
                    out.append((suite, f"suite '{suite}' on {run.name}, levels {_levels(missing)}",
                                "no results for these levels yet (run `prunelens evaluate`)"))
                if 0 not in set(measured["level"].astype(int)):
                    out.append((suite, f"sweet spots of suite '{suite}' on {run.name}",
                                "the dense level 0 has no results to compare with"))
        out += figures_not_drawn(run, rows)
    pairs = frame[["suite", "metric"]].drop_duplicates().itertuples(index=False)
    for suite, metric in pairs:
        if metric_of(suite, metric) is None:
            out.append((suite, f"sweet spots of metric '{metric}' ('{suite}')", f"suite '{suite}' "
                        "declares no such metric, so no direction (higher or lower is better) is "
                        "known for it"))
    if accuracy_rows(comparisons).empty:
        out.append(("", "sweet spots", "no accuracy of a pruned level to compare with the dense "
                    "level 0 (both are needed)"))
    return out


def _settings(runs: Sequence[RunFolder], frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(suite, run, description) of the settings each suite says a reader must know
    (:meth:`prunelens.suite.Suite.describe`), from the options its results were computed with."""
    out = []
    for run in runs:
        for name, suite in evaluated_suites(run, frame):
            for stored in options_used(run.run_dir, name):
                options = suite.options_from(stored)
                text = suite.describe(options) if options is not None else None
                if text:
                    out.append((name, run.name, text))
    return out


def _levels(levels) -> str:
    return ", ".join(str(int(lv)) for lv in sorted(levels)) or "none"


# ---- files ---------------------------------------------------------------------------------------
def _write_csv(path: Path, table: pd.DataFrame) -> Path:
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return Path(path.name)


def _copy_suite_images(runs: Sequence[RunFolder], dest: Path
                       ) -> dict[str, list[tuple[str, Path, Path | None]]]:
    """Copy the figures the suites drew (and the CSV of their data, where one lies beside them)
    into ``dest``: suite -> (run, figure, data or None), paths inside the report."""
    def copy(source: Path, folder: Path) -> Path:
        target = folder / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with naming(target):
            shutil.copyfile(source, target)
        return target.relative_to(dest.parent)

    images: dict[str, list[tuple[str, Path, Path | None]]] = {}
    for run in runs:
        for suite, paths in suite_pngs(run).items():
            for path in paths:
                folder, data = dest / run.name / suite, path.with_suffix(".csv")
                images.setdefault(suite, []).append(
                    (run.name, copy(path, folder), copy(data, folder) if data.is_file() else None))
    return images


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and (
            (out_dir / MARKER).is_file() or {p.name for p in out_dir.iterdir()} <= {LOCK})):
        raise PrunelensError(f"report: {out_dir} exists and is not a prunelens report folder; "
                             "choose another -o folder (the report replaces what its folder holds)")


def _remove_leftovers(out_dir: Path) -> None:
    """Build and old-report folders that interrupted reports left inside ``out_dir``, and what
    prunelens 0.2 left beside it (its lock and its build and old-report folders)."""
    for pattern in (".build-*", ".old-*"):
        for path in out_dir.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
    for pattern in (f".{out_dir.name}.build-*", f".{out_dir.name}.old-*"):
        for path in out_dir.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
    (out_dir.parent / f".{out_dir.name}.lock").unlink(missing_ok=True)


def _swap_in(tmp: Path, out_dir: Path, inputs: str | None) -> None:
    """Replace the report in ``out_dir`` by the one built in ``tmp``: the marker first says the
    folder is being rewritten, the old entries move aside, the new ones move in with
    ``index.html`` last, and the marker then records the inputs."""
    write_marker = lambda recorded: atomic_write_bytes(  # noqa: E731
        out_dir / MARKER, json.dumps({"prunelens": prunelens.__version__, "inputs": recorded}).encode())
    write_marker(None)
    old = Path(tempfile.mkdtemp(dir=out_dir, prefix=".old-"))
    for entry in out_dir.iterdir():
        if entry.name not in (LOCK, MARKER) and entry != tmp and entry != old:
            entry.rename(old / entry.name)
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == INDEX):
        entry.rename(out_dir / entry.name)
    tmp.rmdir()
    shutil.rmtree(old, ignore_errors=True)
    write_marker(inputs)
