"""The suite contract: what an evaluation suite is, declares and receives, and the registry.

A *suite* is one evaluation axis. It declares its options, its metrics (name, direction, unit, the
figure it is drawn in), its figures and the report section it belongs to; the driver
(:mod:`prunelens.evaluate`) hands it a :class:`LevelContext` per level and writes the
:class:`~prunelens.results.Record` rows it yields; the report, the sweet spots, the CLI help and
the schedule comparison read its declarations. Adding a suite is one new module plus one line in
:data:`SUITE_MODULES` (see ``docs/architecture.md``)::

    class ToyOptions(SuiteOptions):
        n_images: int = 64

    @register_suite
    class ToySuite(Suite):
        name = "toy"
        title = "what the toy suite measures"
        Options = ToyOptions
        section = ReportSection("toy", "Toy", "Does pruning change the toy score?", order=70)
        metrics = (Metric("score", "higher", "a higher score is better", unit="fraction",
                          figure="toy"),)
        figures = (FigureSpec("toy", "Toy score vs sparsity", panels=("metric",), lines=("group",)),)

        def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
            yield Record("toy", "score", 0.5, item="img-0")

This module is the leaf every suite imports: it imports the layers below it (config, run folder,
results records, data, models) and nothing above.
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from prunelens.config import RunConfig, validate_section
from prunelens.data.provider import RunData
from prunelens.errors import ConfigError, DataError
from prunelens.models.spec import ArchSpec
from prunelens.options import DATA_ROOTS, Options, data_root_flag
from prunelens.results import Record
from prunelens.runfolder import Level, PoolNote, RunFolder

__all__ = ["ACCURACY", "SUITE_MODULES", "Claim", "DrawnFigure", "FigureReference", "FigureSpec", "Quantity", "SPARSITY", "LevelContext", "Metric", "Record", "ReportSection",
           "RunContext", "Suite", "SuiteOptions", "all_suites", "available_suites", "check_evaluate",
           "get_suite", "load_configs", "metric_of", "register_suite", "resolved_suite_options",
           "suite_options"]

Direction = Literal["higher", "lower", "none"]
Statistic = Literal["spearman", "pearson", "slope", "final_mean", "min_gap"]
Unit = Literal["levels", "images"]


class SuiteOptions(Options):
    """Base of every suite's options: unknown keys are errors, integers and booleans strict."""


@dataclass(frozen=True)
class ReportSection:
    """A section of the report: the question it answers; sections appear in ``order``."""

    id: str
    title: str
    question: str
    order: int = 100


@dataclass(frozen=True)
class Metric:
    """A metric a suite records.

    ``direction``: whether a higher or a lower value is better, or ``none`` for a descriptive
    quantity (only metrics with a direction can make a sweet spot); ``why`` says why, in the report.
    ``figure`` names the suite figure(s) it is drawn in (None: a generic figure of the suite).
    """

    name: str
    direction: Direction
    why: str
    unit: str = ""
    figure: str | tuple[str, ...] | None = None

    @property
    def figures(self) -> tuple[str, ...]:
        return (self.figure,) if isinstance(self.figure, str) else tuple(self.figure or ())


@dataclass(frozen=True)
class FigureReference:
    """Reference values a suite writes beside its results, drawn in a figure only when the report
    is asked for them (``prunelens report --references``): the rows of ``metric`` in the CSV
    ``file`` of the suite's artifacts folder (``RUN_DIR/results/<suite>/``, columns ``match``,
    ``metric``, ``value``), one dashed line per figure line whose ``match`` column has that
    row's value, labelled ``label`` (e.g. the humans' accuracy per model-vs-human dataset).
    ``written_when`` says when the suite writes the file (for the report's note when it did not)."""

    file: str
    metric: str
    label: str
    match: str = "dataset"
    written_when: str = ""


@dataclass(frozen=True)
class FigureSpec:
    """A figure across pruning levels: one panel per value of the ``panels`` columns, one line per
    value of the ``lines`` columns (columns in neither are pooled); its metrics are the suite's
    metrics that name it."""

    name: str
    title: str
    panels: tuple[str, ...] = ("metric",)
    lines: tuple[str, ...] = ("group",)
    first_present: bool = False    # draw only the first of its metrics that has rows
    accuracy_axis: bool = True     # test accuracy on a twin axis (panels holding one run group)
    multi_group_only: bool = False  # an overlay that only makes sense for several run groups
    #: the x-axis: sparsity, or the pruning level (step; the sparsity of its levels on a top axis)
    x: Literal["sparsity", "level"] = "sparsity"
    #: columns whose value picks a line's style; the other ``lines`` columns pick its colour
    styles: tuple[str, ...] = ("group",)
    ylim: tuple[float, float] | None = None  # fixed y-range (None: matplotlib's)
    max_lines: int | None = None   # lines per panel before the busiest line column moves into the
    #                                panels (None: the report's default)
    #: (column, values): draw only the rows with those values when there are any, else all rows
    prefer: tuple[str, tuple[str, ...]] | None = None
    reference: FigureReference | None = None  # drawn when the report is asked for references


@dataclass(frozen=True)
class DrawnFigure:
    """A figure a suite draws itself from its saved artifacts once all levels are evaluated
    (:meth:`Suite.after_levels`): ``results/<suite>/<name>.png``, with the numbers it shows beside
    it as ``<name>.csv``. The report shows the declared figures of a run in its section, in the
    order declared, with this title and caption, and links their data."""

    name: str
    title: str
    caption: str

    def files(self, folder: Path) -> tuple[Path, Path]:
        """The figure and its data in a suite's artifacts folder ``folder``."""
        return folder / f"{self.name}.png", folder / f"{self.name}.csv"


@dataclass(frozen=True)
class Quantity:
    """Records a claim reads: ``metrics`` of ``suite`` (``dataset``: only that dataset; None: every
    dataset, pooled). Per level, a quantity is the mean of its records; its items are resampled."""

    suite: str
    metrics: tuple[str, ...]
    dataset: str | None = None

    def __str__(self) -> str:
        return f"{self.suite}/{'|'.join(self.metrics)}" + (f"[{self.dataset}]" if self.dataset else "")


#: the x-quantity of a claim about sparsity itself (one value per level, never resampled)
SPARSITY = "sparsity"
#: the x-quantity of a claim about accuracy: the accuracy suite's per-image test accuracy
ACCURACY = Quantity("accuracy", ("accuracy",))


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a statistic across pruning levels, declared by the suite that owns its
    y-quantity (the report and ``prunelens claims`` evaluate it; see :mod:`prunelens.report.claims`).

    ``statistic`` of ``y`` against ``x`` over the levels of a run (``spearman``/``pearson``: the
    correlation of the per-level means, ``slope``: the least-squares slope of y on x;
    ``final_mean``: the mean of y at the run's last level, x unused; ``min_gap``: between a pool
    and its control only, the smallest difference of the level means over the pruned levels), one
    test per value of the ``by`` columns of y's records (e.g. ``("metric", "method")``).

    ``expected``: the sign the claim predicts (+1 / -1; None: no prediction, the row is descriptive),
    or per architecture family or design (``family_expected``, e.g. ``(("convolutional", -1),
    ("transformer", 1))``, keyed by a spec's ``family`` or ``design``), which then wins. ``unit``: what is resampled besides images (and seeds): ``levels`` (levels with
    replacement, then images in each) or ``images`` (levels fixed). ``between``: also compare runs:
    ``family`` — runs whose families predict different signs, expected sign of stat(A) − stat(B)
    = sign(expected(A) − expected(B)); ``size`` — stat(smaller) − stat(larger) (prunable
    parameters), expected sign ``between_expected``; ``schedule`` — one-shot − gradual pools
    (``prune.schedule``) that end at the same sparsity, expected sign ``between_expected``;
    ``control`` — a pool − its ``control_kind`` control (``prune.control``).
    """

    id: str
    statement: str
    y: Quantity
    x: Quantity | str = SPARSITY
    statistic: Statistic = "spearman"
    expected: int | None = None
    family_expected: tuple[tuple[str, int], ...] = ()
    unit: Unit = "levels"
    by: tuple[str, ...] = ()
    between: Literal["family", "size", "schedule", "control"] | None = None
    between_expected: int = 1
    control_kind: str = "random_mask"

    def __post_init__(self) -> None:
        signs = [self.expected, self.between_expected, *(s for _, s in self.family_expected)]
        if any(s not in (None, 1, -1) for s in signs):
            raise ValueError(f"claim {self.id}: expected signs are +1, -1 or None, got {signs}")
        if not isinstance(self.x, Quantity) and self.x != SPARSITY:
            raise ValueError(f"claim {self.id}: x is a Quantity or '{SPARSITY}', got {self.x!r}")
        bad = set(self.by) - {"metric", "method", "dataset", "condition"}
        if bad:
            raise ValueError(f"claim {self.id}: by names unknown record columns {sorted(bad)}")

    def expected_for(self, family: str | None, design: str | None = None) -> int | None:
        """The sign the claim predicts for a run of architecture ``family`` (a spec's ``family``,
        or else its ``design``: convolutional, transformer …)."""
        if self.family_expected:
            table = dict(self.family_expected)
            return table.get(family or "", table.get(design or ""))
        return self.expected


@dataclass
class RunContext:
    """What a suite sees of a run."""

    pool: RunFolder
    config: RunConfig             # the run's config (with evaluate overrides applied)
    options: SuiteOptions         # this suite's validated options
    device: torch.device
    data: RunData                 # the run's datasets, built on first use and cached
    spec: ArchSpec                # the architecture's facts
    artifacts: Path               # RUN_DIR/results/<suite>/ : for figures across levels
    batch_size: int = 64
    amp: bool = False             # bf16 autocast for the suite's model passes (evaluate.amp)
    channels_last: bool = False   # channels-last model and images (evaluate.channels_last)

    @property
    def run_dir(self) -> Path:
        return self.pool.run_dir

    def loader(self, dataset: torch.utils.data.Dataset, batch_size: int | None = None):
        """An evaluation loader of ``dataset`` (in order) with the run's workers, kept across the
        levels of one ``evaluate`` for the run's own splits (:meth:`RunData.loader`)."""
        return self.data.loader(dataset, batch_size or self.batch_size)

    def architecture(self) -> nn.Module:
        """An untrained model of the run's architecture: what it is, not what it learned."""
        from prunelens.models import create_model
        return create_model(self.config.model.name, self.pool.num_classes, **self.config.model.options)


@dataclass
class LevelContext(RunContext):
    """A run context plus one level: its model (eval mode, on ``device``) and masks."""

    level: Level | None = None
    model: nn.Module | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    level_artifacts: Path | None = None  # RUN_DIR/results/<suite>/level_XX/


class Suite:
    """One evaluation axis (see the module docstring)."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    Options: ClassVar[type[SuiteOptions]] = SuiteOptions
    section: ClassVar[ReportSection]
    metrics: ClassVar[tuple[Metric, ...]] = ()
    figures: ClassVar[tuple[FigureSpec, ...]] = ()
    #: figures across levels that :meth:`after_levels` draws from the suite's artifacts
    drawn_figures: ClassVar[tuple[DrawnFigure, ...]] = ()
    #: the papers' claims about this suite's metrics, tested by the report (:class:`Claim`)
    claims: ClassVar[tuple[Claim, ...]] = ()
    #: measured on the dense and final levels by ``prunelens compare-schedules``
    in_schedule_comparison: ClassVar[bool] = False

    def skip_reason(self, ctx: RunContext) -> str | None:
        """Why this suite does not apply to this run (None: it applies)."""
        return None

    @classmethod
    def check_data(cls, options: SuiteOptions) -> None:
        """Raise :class:`~prunelens.errors.DataError`, naming the option and the fix, when a data
        folder the options name is missing or not in its dataset's layout. Cheap (no image is
        read): :func:`check_suite_data` calls it before a run trains and before an evaluation."""

    def not_applicable(self, ctx: RunContext) -> dict[str, str]:
        """Parts of the suite that do not apply to this run (e.g. a method the architecture cannot
        have), each with the reason; the report lists them under what was not evaluated."""
        return {}

    def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
        raise NotImplementedError

    def after_levels(self, ctx: RunContext) -> dict[str, str] | None:
        """Called once all levels are evaluated: figures across levels (those the report shows
        are declared in :attr:`drawn_figures`). Returns the declared figures it did not draw, each
        with why and the fix (the report lists them under what was not evaluated)."""
        return None

    @classmethod
    def level_artifacts_needed(cls, options: SuiteOptions) -> tuple[str, ...]:
        """Files of a level's artifacts folder (``results/<suite>/level_XX/``) its results need
        with ``options``, e.g. what :meth:`after_levels` draws from. The driver records their
        hashes with the level's results; a level whose file is missing or changed since is
        computed again (that level only)."""
        return ()

    @classmethod
    def describe(cls, options: SuiteOptions) -> str | None:
        """One line on the settings a reader of the report must know to read its numbers (None:
        nothing to say)."""
        return None

    @classmethod
    def resolved_options(cls, options: SuiteOptions) -> dict:
        """``options`` as the suite will use them, as JSON-able values: every default filled in,
        and an option whose default is another's choice (e.g. a preset's) given that value."""
        return options.model_dump(mode="json")

    @classmethod
    def options_from(cls, stored: dict) -> SuiteOptions | None:
        """Options recorded by an evaluation (a results sidecar), read with this version: renamed
        keys migrated, unknown keys left out; None when they no longer validate."""
        if not isinstance(stored, dict):
            return None
        known = {k: v for k, v in cls.Options.migrated(stored).items() if k in cls.Options.model_fields}
        try:
            return cls.Options.model_validate(known)
        except ValueError:
            return None

    @classmethod
    def options_for(cls, options: SuiteOptions, spec: ArchSpec) -> SuiteOptions:
        """``options`` as they act on an architecture: an option that cannot change this
        architecture's results is set to its default, so that changing it (or a version that adds
        it) does not make them stale (e.g. Swin's attention map on a ResNet)."""
        return options

    @classmethod
    def metric(cls, name: str) -> Metric | None:
        return next((m for m in cls.metrics if m.name == name), None)

    @classmethod
    def figure_metrics(cls, figure: str) -> tuple[str, ...]:
        return tuple(m.name for m in cls.metrics if figure in m.figures)


# ---- the registry --------------------------------------------------------------------------------
#: suite name -> the module that registers it (imported on first use): a new suite's one line
SUITE_MODULES = {
    "accuracy": "prunelens.accuracy",
    "interpretability": "prunelens.explain.suite",
    "discovery": "prunelens.discovery.suite",
    "alignment": "prunelens.alignment.suite",
    "connectivity": "prunelens.analysis.suites",
    "psp": "prunelens.analysis.suites",
    "sharpness": "prunelens.analysis.suites",
    "transfer": "prunelens.transfer.suite",
}

_REGISTRY: dict[str, type[Suite]] = {}


def register_suite(cls: type[Suite]) -> type[Suite]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    for attribute in ("name", "section"):
        if not hasattr(cls, attribute):
            raise TypeError(f"suite {cls.__name__} declares no {attribute}")
    _REGISTRY[cls.name] = cls
    return cls


def available_suites() -> list[str]:
    return list(dict.fromkeys([*SUITE_MODULES, *_REGISTRY]))


def get_suite(name: str) -> type[Suite]:
    if name not in _REGISTRY:
        module = SUITE_MODULES.get(name)
        if module is None:
            raise ConfigError(f"unknown suite '{name}'; available: {', '.join(available_suites())}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not (module + ".").startswith(f"{exc.name}."):  # a missing dependency, not the module
                raise
            raise ConfigError(f"suite '{name}' is not available in this version of prunelens") from None
    return _REGISTRY[name]


def all_suites() -> list[type[Suite]]:
    """Every suite that can be imported (one that cannot, e.g. for a missing extra, is left out)."""
    out = []
    for name in available_suites():
        try:
            out.append(get_suite(name))
        except ConfigError:
            continue
    return out


def metric_of(suite: str, metric: str) -> Metric | None:
    """The declaration of ``metric`` of ``suite`` (None for a suite or metric nobody declared)."""
    try:
        return get_suite(suite).metric(metric)
    except ConfigError:
        return None


# ---- suite options in configs ----------------------------------------------------------------------
def suite_options(config: RunConfig, name: str) -> SuiteOptions:
    """Suite ``name``'s options from ``evaluate.<name>`` of ``config``, validated."""
    raw = (config.evaluate.model_extra or {}).get(name) or {}
    return validate_section(get_suite(name).Options, raw, f"evaluate.{name}")


def resolved_suite_options(config: RunConfig) -> dict[str, dict]:
    """Every registered suite's options in ``config``, resolved (:meth:`Suite.resolved_options`)."""
    return {suite.name: suite.resolved_options(suite_options(config, suite.name)) for suite in all_suites()}


class DataFolderError(DataError):
    """A data folder a suite's option names is missing or not in its dataset's layout."""

    def __init__(self, key: str, flag: str | None, problem: str) -> None:
        self.key, self.flag, self.problem = key, flag, problem
        how = (f"{flag} DIR (prunelens run / evaluate) or --set {key}=DIR" if flag
               else f"--set {key}=DIR")
        super().__init__(f"{key}: {problem}. Give the folder with {how}")


def data_folder_error(suite: type[Suite], option: str, problem: str) -> DataFolderError:
    """The one message for a data folder a suite's option names wrongly: the option, what is
    wrong, and how to give the folder (its flag, when the suite declares one)."""
    flag = data_root_flag(option) if suite.name in DATA_ROOTS.get(option, ((),))[0] else None
    return DataFolderError(f"evaluate.{suite.name}.{option}", flag, problem)


def require_folder(suite: type[Suite], option: str, root: str) -> None:
    """:func:`data_folder_error` unless ``root`` is a folder (e.g. a config's placeholder path)."""
    if not Path(root).expanduser().is_dir():
        raise data_folder_error(suite, option, f"folder '{root}' does not exist")


def check_suite_data(config: RunConfig, names: list[str] | None = None) -> None:
    """Check the data folders the options of suites ``names`` (default: the config's suites, or
    every suite) name, so that a missing VOC or model-vs-human folder stops a run before it trains,
    not hours later when the suite reads it. Every problem is named in one message."""
    problems: list[DataError] = []
    for name in names if names is not None else (config.evaluate.suites or available_suites()):
        try:
            get_suite(name).check_data(suite_options(config, name))
        except DataError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:  # one flag often fixes several options (--voc-root): group them
        grouped: dict[tuple[str, str], list[str]] = {}
        parts = []
        for exc in problems:
            if isinstance(exc, DataFolderError):
                grouped.setdefault((exc.flag, exc.problem), []).append(exc.key)
            else:
                parts.append(str(exc))
        parts[:0] = [f"{', '.join(keys)}: {problem} (give it with "
                     f"{f'{flag} DIR' if flag else f'--set {keys[0]}=DIR'})"
                     for (flag, problem), keys in grouped.items()]
        raise DataError("; ".join(parts) + ". The flags work with prunelens run and evaluate; "
                        "--set KEY=DIR sets one option")


def check_evaluate(config: RunConfig) -> RunConfig:
    """Validate the suite names and suite options of a config's ``evaluate`` section (done when a
    config is loaded, so a mistake is reported before any work starts)."""
    unknown = [s for s in config.evaluate.suites or [] if s not in available_suites()]
    if unknown:
        raise ConfigError(f"evaluate.suites: unknown suite(s) {unknown}; available: "
                          f"{', '.join(available_suites())}")
    for name in config.evaluate.model_extra or {}:
        if name not in available_suites():
            raise ConfigError(f"unknown key 'evaluate.{name}': neither an evaluate setting nor a "
                              f"suite ({', '.join(available_suites())})")
        suite_options(config, name)
    return config


def load_configs(path=None, overrides: list[str] | None = None) -> list[RunConfig]:
    """The run configs of a config file (the embedded demo when ``path`` is None), every section
    validated, the suites' options included: the one way a config file is read."""
    from prunelens.config import default_config_path, read_yaml, resolve_runs

    raw = read_yaml(path if path is not None else default_config_path())
    return [check_evaluate(c) for c in resolve_runs(raw, overrides)]


def without_unknown_options(config: RunConfig, where: str) -> RunConfig:
    """``config`` with the suite options this version does not know left out (a note says which):
    for configs stored by another version of prunelens."""
    extra = dict(config.evaluate.model_extra or {})
    dropped = []
    for name, raw in list(extra.items()):
        if name not in available_suites() or not isinstance(raw, dict):
            dropped.append(f"evaluate.{name}")
            extra.pop(name)
            continue
        known = get_suite(name).Options.model_fields
        dropped += [f"evaluate.{name}.{k}" for k in raw if k not in known]
        extra[name] = {k: v for k, v in raw.items() if k in known}
    if not dropped:
        return config
    warnings.warn(f"{where}: option(s) this version of prunelens does not have, left out: "
                  f"{', '.join(dropped)}", PoolNote, stacklevel=2)
    from prunelens.data.registry import folders_unchecked

    raw = config.model_dump(mode="json")
    raw["evaluate"] = {**{k: v for k, v in raw["evaluate"].items() if k not in config.evaluate.model_extra},
                       **extra}
    with folders_unchecked():
        return validate_section(RunConfig, raw, where)
