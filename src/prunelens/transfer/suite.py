"""The ``transfer`` suite: linear and few-shot probes on a frozen backbone's penultimate features.

Records (``suite = "transfer"``, ``dataset`` = the downstream task):

* ``probe_accuracy`` (method ``linear``): 0/1 per downstream test image (``item`` = its id), so the
  level's mean is the probe's test accuracy and bootstrap CIs apply;
* ``probe_regularization`` (method ``linear``): the C chosen by cross-validation (one value);
* ``fewshot_accuracy`` (method ``k=<k>``): one record per seeded draw (``item`` = the draw index),
  the test accuracy of a probe fitted on k train images per class; the draws are the same at every
  level, so levels compare paired over draws.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

from pydantic import Field, field_validator, model_validator

from prunelens.io import atomic_write_json
from prunelens.suite import (FigureSpec, LevelContext, Metric, Record, ReportSection, RunContext, Suite,
                             SuiteOptions, register_suite)
from prunelens.transfer import downstream as ds
from prunelens.transfer.features import extract_features
from prunelens.transfer.probe import (DEFAULT_C_GRID, fewshot_accuracy, fewshot_indices, fit_probe,
                                      probe_correct)


class TransferOptions(SuiteOptions):
    dataset: Literal[ds.SYNTHETIC_TASKS + ds.FOLDER_TASKS] = Field(
        "texture", description="downstream task (texture, novel_shapes: synthetic runs only; "
                               "fashion_mnist: the task for a backbone trained on MNIST)")
    root: str | None = Field(None, description=(
        f"folder of a {' / '.join(ds.FOLDER_TASKS)} dataset (read locally, never downloaded)"))
    dataset_options: dict = Field(default_factory=dict,
                                  description="further options of that dataset, e.g. {label_type: coarse}")
    n_train: int = Field(2000, ge=2, description="downstream train images (the probe's fit)")
    n_test: int = Field(1000, ge=1, description="downstream test images")
    c_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_C_GRID),
                                description="inverse L2 strengths searched by cross-validation")
    folds: int = Field(5, ge=2)
    max_iter: int = Field(1000, ge=10)
    shots: list[int] = Field(default_factory=lambda: [1, 5, 10], description="k images per class")
    n_draws: int = Field(5, ge=1, description="seeded few-shot draws per k")
    fewshot_c: float = Field(1.0, gt=0, description="C of the few-shot probes (too few images to cross-validate)")
    seed: int = 0

    @field_validator("c_grid")
    @classmethod
    def _positive_grid(cls, grid: list[float]) -> list[float]:
        if not grid or min(grid) <= 0:
            raise ValueError(f"must be a non-empty list of positive numbers, got {grid}")
        return grid

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, shots: list[int]) -> list[int]:
        if min(shots, default=1) < 1:
            raise ValueError(f"k must be >= 1, got {shots}")
        return shots

    @model_validator(mode="after")
    def _root_where_needed(self) -> TransferOptions:
        if self.dataset in ds.FOLDER_TASKS and not self.root:
            raise ValueError(f"dataset {self.dataset} reads a local folder: set evaluate.transfer.root "
                             "to it (or use dataset: texture on a synthetic run)")
        if self.dataset in ds.SYNTHETIC_TASKS and (self.root or self.dataset_options):
            raise ValueError(f"root and dataset_options apply to {' / '.join(ds.FOLDER_TASKS)}, "
                             f"not to the synthetic task '{self.dataset}'")
        return self


def input_shape(ctx: RunContext) -> tuple[int, ...]:
    """(C, H, W) of the run's own images: downstream images are brought to it."""
    return tuple(ctx.data.split(ctx.data.eval_split)[0][0].shape)


@register_suite
class TransferSuite(Suite):
    """Frozen penultimate features → linear probe (C by CV) and few-shot probes, on a downstream task."""

    name = "transfer"
    title = "downstream generalisation: linear and few-shot probes on frozen penultimate features"
    Options = TransferOptions
    section = ReportSection("transfer", "Transfer",
                            "Do the features of pruned models transfer better to a new task (a linear "
                            "probe on frozen penultimate features; few-shot probes)?", order=35)
    metrics = (
        Metric("probe_accuracy", "higher", "downstream test accuracy of a linear probe on the frozen "
               "features: how well they serve a task they were not trained for", unit="fraction",
               figure="transfer"),
        Metric("fewshot_accuracy", "higher", "the same with k images per class", unit="fraction",
               figure="transfer"),
        Metric("probe_regularization", "none", "the L2 strength cross-validation chose: descriptive",
               unit="C", figure="transfer_c"),
    )
    figures = (
        FigureSpec("transfer", "Linear and few-shot probe accuracy on the downstream task vs sparsity",
                   panels=("metric", "dataset"), lines=("group", "method")),
        FigureSpec("transfer_c", "Probe regularisation chosen by cross-validation vs sparsity",
                   panels=("metric",), lines=("group",), accuracy_axis=False),
    )

    in_schedule_comparison = True  # the abstract's transfer claim (Tartaglione et al.)

    def __init__(self) -> None:
        self._tasks: dict[str, ds.Downstream] = {}

    @classmethod
    def check_data(cls, options: TransferOptions) -> None:
        """A folder task's ``root`` is a folder and its dataset options validate, as its loader
        checks them (:func:`~prunelens.transfer.downstream.folder_options`); no image is read."""
        if options.dataset in ds.FOLDER_TASKS:
            ds.folder_options(options.dataset, options.root, options.dataset_options)

    def skip_reason(self, ctx: RunContext) -> str | None:
        opts: TransferOptions = ctx.options
        run_data = ctx.data.config.name
        if opts.dataset in ds.SYNTHETIC_TASKS and not ctx.data.provides("textures"):
            return (f"downstream task '{opts.dataset}' is built from the synthetic dataset, and this run "
                    f"trains on '{run_data}': set evaluate.transfer.dataset to one of "
                    f"{', '.join(ds.FOLDER_TASKS)} with evaluate.transfer.root")
        if opts.dataset == "novel_shapes" and len(ds.SHAPES) - ctx.data.options.num_classes < 2:
            return "the run trains on (nearly) every synthetic shape: no shape is left for novel_shapes"
        if opts.dataset in ds.FOLDER_TASKS:
            ds.check_root(opts.dataset, opts.root)  # raises: a missing folder is an error, not a skip
        return None

    def task(self, ctx: RunContext) -> ds.Downstream:
        """The downstream splits (built once per suite instance and options)."""
        opts: TransferOptions = ctx.options
        key = json.dumps(opts.model_dump(mode="json"), sort_keys=True)
        if key not in self._tasks:
            seed = int(ctx.data.seed)
            if opts.dataset == "texture":
                task = ds.texture_task(ctx.data.options, seed, opts.n_train, opts.n_test)
            elif opts.dataset == "novel_shapes":
                task = ds.novel_shapes_task(ctx.data.options, seed, opts.n_train, opts.n_test)
            else:
                task = ds.folder_task(opts.dataset, opts.root, opts.dataset_options, seed,
                                      opts.n_train, opts.n_test)
            self._tasks[key] = task
        return self._tasks[key]

    def evaluate_level(self, ctx: LevelContext) -> Iterator[Record]:
        opts: TransferOptions = ctx.options
        task = self.task(ctx)
        shape = input_shape(ctx)
        ctx.model.eval()
        train_x, train_y = extract_features(ctx.model, ctx.spec, task.train, ctx.batch_size, ctx.device,
                                            shape, loader=ctx.loader(task.train))
        test_x, test_y = extract_features(ctx.model, ctx.spec, task.test, ctx.batch_size, ctx.device,
                                          shape, loader=ctx.loader(task.test))
        train_x, train_y, test_x, test_y = (t.numpy() for t in (train_x, train_y, test_x, test_y))
        fit = fit_probe(train_x, train_y, opts.c_grid, opts.folds, opts.max_iter)
        correct = probe_correct(fit, test_x, test_y)
        for item, c in zip(task.test_ids, correct.tolist()):
            yield Record(self.name, "probe_accuracy", float(c), method="linear", dataset=task.name, item=item)
        yield Record(self.name, "probe_regularization", fit.C, method="linear", dataset=task.name)
        fewshot = {}
        for k in opts.shots:
            draws = fewshot_indices(train_y, k, opts.n_draws, opts.seed)
            fewshot[k] = [fewshot_accuracy(train_x, train_y, test_x, test_y, index, opts.fewshot_c,
                                           opts.max_iter) for index in draws]
            for d, acc in enumerate(fewshot[k]):
                yield Record(self.name, "fewshot_accuracy", acc, method=f"k={k}", dataset=task.name,
                             item=str(d))
        if ctx.level_artifacts is not None:
            atomic_write_json(ctx.level_artifacts / "probe.json", {
                "dataset": task.name, "train_images": int(len(train_y)), "test_images": int(len(test_y)),
                "feature_dim": int(train_x.shape[1]), "C": fit.C, "cv_accuracy": fit.cv_accuracy,
                "test_accuracy": float(correct.mean()) if len(correct) else None,
                "fewshot_mean": {f"k={k}": sum(v) / len(v) for k, v in fewshot.items()}})
