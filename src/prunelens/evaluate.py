"""Evaluation: suites × levels → the results store.

A *suite* is one evaluation axis. It receives a :class:`LevelContext` (the level's model on its
device, the spec, the run's data, its own validated options, a folder for artifacts) and yields
:class:`~prunelens.results.Record` rows. The driver (:func:`evaluate_run`) handles levels, device,
resume (a (suite, level) whose results file is intact and was made with the same options and the
same level files is skipped) and writing.

Writing a suite::

    class Options(SuiteOptions):
        n_images: int = 64

    @register_suite
    class MySuite(Suite):
        name = "mysuite"
        Options = Options

        def skip_reason(self, ctx: RunContext) -> str | None:   # optional
            return None if ctx.spec.has_spatial_features else "needs a spatial feature map"

        def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
            ...

        def after_levels(self, ctx: RunContext) -> None:        # optional: figures across levels
            ...
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from prunelens.errors import ConfigError
from prunelens.results import Record

# suite name -> module that registers it (imported on first use)
SUITE_MODULES = {
    "accuracy": "prunelens.evaluate",
    "interpretability": "prunelens.explain.suite",
    "discovery": "prunelens.discovery.suite",
    "alignment": "prunelens.alignment.suite",
    "connectivity": "prunelens.analysis.suites",
    "psp": "prunelens.analysis.suites",
    "sharpness": "prunelens.analysis.suites",
}


class SuiteOptions(BaseModel):
    """Base of every suite's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class RunContext:
    """What a suite sees of a run."""

    run_dir: Path
    pool: object                 # prunelens.pool.Pool
    config: object               # prunelens.config.RunConfig of the run
    options: SuiteOptions        # this suite's validated options
    device: torch.device
    data: object                 # prunelens.data.provider.RunData: the run's datasets, cached
    spec: object                 # prunelens.models.ArchSpec of the run's architecture
    artifacts: Path              # RUN_DIR/results/<suite>/ : for figures across levels
    batch_size: int = 64


@dataclass
class LevelContext(RunContext):
    """A run context plus one level: its model (eval mode, on ``device``) and masks."""

    level: object = None          # prunelens.pool.Level
    model: nn.Module = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    level_artifacts: Path = None  # RUN_DIR/results/<suite>/level_XX/


class Suite:
    name: ClassVar[str]
    Options: ClassVar[type[SuiteOptions]] = SuiteOptions

    def skip_reason(self, ctx: RunContext) -> str | None:
        """Why this suite does not apply to this run (None: it applies)."""
        return None

    def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
        raise NotImplementedError

    def after_levels(self, ctx: RunContext) -> None:
        """Called once all levels are evaluated (figures across levels)."""


_REGISTRY: dict[str, type[Suite]] = {}


def register_suite(cls: type[Suite]) -> type[Suite]:
    _REGISTRY[cls.name] = cls
    return cls


def available_suites() -> list[str]:
    return list(SUITE_MODULES)


def get_suite(name: str) -> type[Suite]:
    if name not in _REGISTRY:
        module = SUITE_MODULES.get(name)
        if module is None:
            raise ConfigError(f"unknown suite '{name}'; available: {', '.join(available_suites())}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            raise ConfigError(f"suite '{name}' is not available in this version of prunelens") from None
    return _REGISTRY[name]
