"""What the report takes from a run folder besides its results, read through the one verified
reader (:class:`prunelens.runfolder.RunFolder`): seed groups, the level.json accuracy stand-in,
the paper's sparsity count, figures the suites drew themselves (``results/<suite>/*.png``), the
reference values their figures declare (:class:`prunelens.suite.FigureReference`) and why a suite
was skipped (``results/<suite>/skipped.json``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from prunelens.errors import ConfigError, PoolError
from prunelens.pruning.store import paper_sparsity
from prunelens.runfolder import RunFolder, check_name, read_json
from prunelens.suite import FigureReference, Suite, get_suite


def seed_groups(runs: Sequence[RunFolder]) -> dict[str, str]:
    """Run name → group label; runs with the same experiment hash (identity without the seed,
    :meth:`prunelens.config.RunConfig.experiment_hash`), the same classes (the dataset's location
    is not part of the identity) and different seeds share a label.

    A group of one keeps the run's name; a larger group is named after its first run plus its seeds,
    e.g. ``demo-cnn-s0 (seeds 0, 1, 2)``.
    """
    by_experiment: dict[tuple, list[RunFolder]] = {}
    for run in runs:
        by_experiment.setdefault((run.experiment_hash, tuple(run.class_names or ())), []).append(run)
    labels = {}
    for members in by_experiment.values():
        seeds = [r.config.seed for r in members]
        if len(members) > 1 and len(set(seeds)) == len(members):
            label = f"{members[0].name} (seeds {', '.join(map(str, seeds))})"
        else:
            label = None  # identical seeds: not replicates, keep them apart
        for run in members:
            labels[run.name] = label or run.name
    return labels


def pool_table(run: RunFolder) -> pd.DataFrame:
    """The pool table of a run (:meth:`RunFolder.table`) as a DataFrame, with the paper's sparsity
    count (``sparsity_paper``, :func:`prunelens.pruning.store.paper_sparsity`; NaN when the
    architecture cannot be built) after prunelens's two."""
    paper = paper_sparsity(run)
    rows = [{**row, "sparsity_paper": paper.get(row["level"], math.nan)} for row in run.table()]
    return pd.DataFrame(rows)


def pool_accuracy_rows(run: RunFolder) -> pd.DataFrame:
    """``level.json`` test accuracy as aggregate accuracy records (stand-in when the accuracy suite
    has no results: one value per level, hence no CI)."""
    rows = [{"run": run.name, "model": run.config.model.name, "level": lv.index,
             "sparsity": lv.sparsity, "suite": "accuracy", "metric": "accuracy",
             "method": "", "dataset": "test", "condition": "", "item": "",
             "value": float(lv.metrics.get("test_acc", float("nan")))}
            for lv in run.levels]
    return pd.DataFrame(rows)


def suite_pngs(run: RunFolder) -> dict[str, list[Path]]:
    """Figures the suites drew themselves into ``results/<suite>/`` (not per-level artifacts)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(run.layout.results.glob("*/*.png")):
        found.setdefault(check_name(path.parent.name, "suite folder"), []).append(path)
    return found


_REWRITE = "delete it and re-run `prunelens evaluate` on the run folder to write it again"


def evaluated_suites(run: RunFolder, frame: pd.DataFrame) -> Iterator[tuple[str, type[Suite]]]:
    """(name, suite) of every suite with results of ``run`` in ``frame`` that this version knows,
    by name."""
    for name in sorted(set(frame.loc[frame["run"] == run.name, "suite"])):
        try:
            yield name, get_suite(name)
        except ConfigError:
            continue


def figure_references(runs: Sequence[RunFolder], groups: dict[str, str], frame: pd.DataFrame
                      ) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """The reference values the figures of each run's evaluated suites declare
    (:class:`prunelens.suite.FigureReference`), as rows ``figure, group, key, value`` (key: the
    value of the reference's ``match`` column), and ``(suite, what, why)`` for each one a run
    lacks. A damaged file is a PoolError naming it."""
    rows, missing = [], []
    for run in runs:
        for name, suite in evaluated_suites(run, frame):
            for spec in suite.figures:
                ref = spec.reference
                if ref is None:
                    continue
                what = f"{ref.label} in figure '{spec.name}' of {run.name}"
                path = run.layout.suite(name) / ref.file
                if not path.is_file():
                    when = f" ({ref.written_when})" if ref.written_when else ""
                    missing.append((name, what, f"suite '{name}' wrote no {ref.file} for this run{when}"))
                    continue
                table = _reference_table(path, ref)
                if table.empty:
                    missing.append((name, what, f"{path} has no '{ref.metric}' rows (written by an "
                                    f"earlier prunelens): {_REWRITE}"))
                rows += [{"figure": spec.name, "group": groups.get(run.name, run.name), "key": key,
                          "value": value} for key, value in zip(table[ref.match], table["value"])]
    return pd.DataFrame(rows, columns=["figure", "group", "key", "value"]), missing


def _reference_table(path: Path, ref: FigureReference) -> pd.DataFrame:
    """The ``ref.metric`` rows of a reference CSV (columns ``ref.match``, ``metric``, ``value``)."""
    try:
        table = pd.read_csv(path, dtype={ref.match: str, "metric": str})
        table = table[table["metric"] == ref.metric][[ref.match, "value"]]
        table["value"] = table["value"].astype(float)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
        raise PoolError(f"{path} is not a table of {ref.match}, metric and value ({exc}): "
                        f"{_REWRITE}") from None
    return table


def _suite_folders(run: RunFolder) -> list[str]:
    return [check_name(p.name, "suite folder") for p in sorted(run.layout.results.glob("*")) if p.is_dir()]


def not_applicable(run: RunFolder) -> dict[str, dict[str, str]]:
    """Suite → {part: why} for the parts of a suite that did not apply (``not_applicable.json``);
    a damaged file is a PoolError naming it."""
    found = {}
    for suite in _suite_folders(run):
        path = run.layout.not_applicable(suite)
        if path.is_file():
            parts = read_json(path, _REWRITE)
            if not all(isinstance(v, str) for v in parts.values()):
                raise PoolError(f"{path} does not map each part to a reason (edited or damaged): {_REWRITE}")
            found[suite] = dict(parts)
    return found


def skip_reasons(run: RunFolder) -> dict[str, str]:
    """Suite → why it was skipped, from ``results/<suite>/skipped.json`` where the driver wrote one;
    a damaged file is a PoolError naming it."""
    reasons = {}
    for suite in _suite_folders(run):
        path = run.layout.skipped(suite)
        if path.is_file():
            reason = read_json(path, _REWRITE).get("reason")
            if not isinstance(reason, str):
                raise PoolError(f"{path} records no reason (edited or damaged): {_REWRITE}")
            reasons[suite] = reason
    return reasons


def figures_not_drawn(run: RunFolder, frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(suite, what, why) for each figure a suite with results declares (:attr:`Suite.drawn_figures`)
    that is not in its artifacts folder: why its ``after_levels`` did not draw it
    (``results/<suite>/drawn.json``), or that it was never drawn; a damaged file is a PoolError."""
    out = []
    for name, suite in evaluated_suites(run, frame):
        if not suite.drawn_figures:
            continue
        rerun = f"run `prunelens evaluate {run.run_dir} --suite {name}`"
        path = run.layout.drawn(name)
        if not path.is_file():
            out.append((name, f"figures across levels of suite '{name}' on {run.name}",
                        f"not drawn (its results were computed before they existed, or evaluate "
                        f"stopped before drawing them): {rerun}"))
            continue
        not_drawn = read_json(path, _REWRITE).get("not_drawn")
        if not isinstance(not_drawn, dict) or not all(isinstance(v, str) for v in not_drawn.values()):
            raise PoolError(f"{path} does not map each figure not drawn to a reason (edited or "
                            f"damaged): {_REWRITE}")
        for figure in suite.drawn_figures:
            what = f"figure '{figure.title}' of suite '{name}' on {run.name}"
            if figure.name in not_drawn:
                out.append((name, what, not_drawn[figure.name]))
            elif not all(p.is_file() for p in figure.files(run.layout.suite(name))):
                out.append((name, what, f"its files are missing: {rerun}"))
    return out
