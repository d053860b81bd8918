"""The report: sweet spots with bootstrap CIs, figures across pruning levels, one HTML folder.

``build_report(run_dirs, out_dir)`` reads one or several run folders (their pool manifests and the
tidy results of :func:`prunelens.results.load_results`) and writes ``out_dir/index.html`` with
``figures/`` (PNG + SVG), ``suites/`` (figures the suites drew themselves) and the tables it shows as
CSV. Runs whose configs differ only by ``seed`` are pooled into one group (seeds become a level of
the bootstrap). The folder is built aside and swapped in whole.
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
from prunelens.errors import ConfigError, PrunelensError
from prunelens.io import atomic_write_bytes, current_umask
from prunelens.report.claims import evaluate_claims, run_facts
from prunelens.report.figures import draw_figures
from prunelens.report.html import ReportContent, render
from prunelens.report.runs import (not_applicable, pool_accuracy_rows, pool_table, seed_groups,
                                   skip_reasons, suite_pngs)
from prunelens.report.sweet_spots import ACCURACY, accuracy_rows, compare_to_dense, sweet_spots

from prunelens.runfolder import RunFolder, RunLock
from prunelens.stats import summarize
from prunelens.results import options_used
from prunelens.suite import available_suites, get_suite, metric_of

__all__ = ["build_report", "write_report", "seed_groups", "compare_to_dense", "sweet_spots",
           "draw_figures", "build_claims", "evaluate_claims"]

MARKER = ".prunelens-report"


def build_report(run_dirs: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
                 *, n_boot: int | None = None, confidence: float = 0.95) -> Path:
    """Write the report of ``run_dirs`` into ``out_dir`` (default ``RUN_DIR/report`` of the first
    run) and return the path of its ``index.html``. ``n_boot`` defaults to the first run's
    ``evaluate.n_boot``."""
    from prunelens.results import load_results

    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    runs = [RunFolder(d) for d in run_dirs]
    frame = load_results([r.run_dir for r in runs])
    return write_report(runs, frame, out_dir, n_boot=n_boot, confidence=confidence)


def build_claims(run_dirs: str | Path | Sequence[str | Path], *, n_boot: int | None = None,
                 confidence: float = 0.95) -> pd.DataFrame:
    """The claims table of ``run_dirs`` (:func:`prunelens.report.claims.evaluate_claims`), as the
    report computes it: seeds of one experiment pooled, level.json accuracy where the accuracy suite
    has no results."""
    from prunelens.results import load_results

    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    runs = [RunFolder(d) for d in run_dirs]
    frame = _with_pool_accuracy(load_results([r.run_dir for r in runs]), runs)
    n_boot = runs[0].config.evaluate.n_boot if n_boot is None else n_boot
    return evaluate_claims(frame, seed_groups(runs), n_boot, confidence, facts=run_facts(runs))


def write_report(runs: Sequence[RunFolder], frame: pd.DataFrame, out_dir: str | Path | None = None,
                 *, n_boot: int | None = None, confidence: float = 0.95) -> Path:
    """:func:`build_report` on runs already read and their results frame (columns of
    :func:`prunelens.results.load_results`)."""
    if not runs:
        raise PrunelensError("report: give at least one run folder")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise PrunelensError(f"report: runs must have different names, got {names}; rename one "
                             "(the `name` key of its config) or report them separately")
    out_dir = Path(out_dir) if out_dir is not None else runs[0].run_dir / "report"
    if n_boot is None:
        n_boot = runs[0].config.evaluate.n_boot
    groups = seed_groups(runs)
    frame = _with_pool_accuracy(frame, runs)

    comparisons = compare_to_dense(frame, groups, n_boot, confidence)
    spots = sweet_spots(comparisons)
    not_evaluated = _not_evaluated(runs, frame, comparisons)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir.parent, out_dir.parent / f".{out_dir.name}.lock", f"report folder {out_dir}"):
        _check_out_dir(out_dir)
        return _build(runs, frame, out_dir, groups, comparisons, spots, not_evaluated, n_boot, confidence)


def _build(runs: Sequence[RunFolder], frame: pd.DataFrame, out_dir: Path, groups, comparisons, spots,
           not_evaluated, n_boot: int, confidence: float) -> Path:
    """Build the report aside and swap it in (the caller holds the report folder's lock)."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.build-"))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        summary = summarize(frame, groups, n_boot, confidence)
        claims = evaluate_claims(frame, groups, n_boot, confidence, facts=run_facts(runs))
        figures, skipped = draw_figures(frame, tmp / "figures", groups, spots, summary, n_boot,
                                        confidence)
        not_evaluated += [(suite, f"figure '{name}'", why) for suite, name, why in skipped]
        files = {
            "per-level summary (CSV)": _write_csv(tmp / "summary.csv", summary),
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
        atomic_write_bytes(tmp / "index.html", render(content).encode())
        atomic_write_bytes(tmp / MARKER, json.dumps({"prunelens": prunelens.__version__}).encode())
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_leftovers(out_dir)
    return out_dir / "index.html"


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
                out.append((suite, f"suite '{suite}' on {run.name}", reasons.get(
                    suite, f"no results in {run.run_dir / 'results' / suite} — run `prunelens "
                    f"evaluate {run.run_dir} --suite {suite}`")))
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
        for name in sorted(set(frame.loc[frame["run"] == run.name, "suite"])):
            try:
                suite = get_suite(name)
            except ConfigError:
                continue
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


def _copy_suite_images(runs: Sequence[RunFolder], dest: Path) -> dict[str, list[tuple[str, Path]]]:
    images: dict[str, list[tuple[str, Path]]] = {}
    for run in runs:
        for suite, paths in suite_pngs(run).items():
            for path in paths:
                target = dest / run.name / suite / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                images.setdefault(suite, []).append((run.name, target.relative_to(dest.parent)))
    return images


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir())
                                                       or (out_dir / MARKER).is_file())):
        raise PrunelensError(f"report: {out_dir} exists and is not a prunelens report folder; "
                             "choose another -o folder (the report replaces its folder whole)")


def _remove_leftovers(out_dir: Path) -> None:
    """Build and old-report folders that interrupted reports of ``out_dir`` left beside it."""
    for pattern in (f".{out_dir.name}.build-*", f".{out_dir.name}.old-*"):
        for path in out_dir.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp`` (old report moved aside first, then deleted)."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        out_dir.rename(old / "report")
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
