"""Suite ``alignment`` (RQ3): do pruned models see more like humans?

Per level of the pool:

* offline (every run; the embedded demo's synthetic counterpart of model-vs-human): the first
  ``n_images`` of the run's test split through every distortion and condition of
  :data:`prunelens.data.distortions.DISTORTIONS` (datasets ``<data>-colour``, ``<data>-contrast``,
  …) and, for datasets that have them, the silhouette / edge / cue-conflict variants of the same
  objects (``<data>-silhouette`` …); decisions by class name (or the ``decision_mapping`` option);
* with ``mvh_root``: the 17 model-vs-human datasets read from that folder, decided by the
  benchmark's 16-class rule (1000-class ImageNet models) or ``mvh_decision_mapping``, and compared
  with the real human trials (accuracy difference, observed and error consistency).

Records (see :class:`prunelens.results.Record`): ``accuracy`` per image (item = image id,
condition = the trial's condition), ``ood_accuracy`` per dataset, ``shape_bias`` per cue-conflict
dataset and the human metrics per model-vs-human dataset. Each dataset's responses are saved in the
benchmark's CSV format under ``level_artifacts/<dataset>/<dataset>_<observer>_session-1.csv``; with
``mvh_root``, the humans' own values in :data:`HUMAN_REFERENCE_FILE`.

Figure 6 of Cassano et al. (``alignment_datasets``) is the per-image ``accuracy`` pooled by
dataset over every condition, the toolbox's per-dataset accuracy
(:func:`prunelens.alignment.metrics.dataset_accuracy`), one line per dataset and one panel per
model against the pruning level; ``prunelens report --references`` adds the humans' accuracy.
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from collections.abc import Iterable, Iterator

import pandas as pd
import torch
from pydantic import Field, field_validator
from tqdm import tqdm

from prunelens.alignment.decision import DecisionMapping
from prunelens.alignment.metrics import (HUMAN_METRICS, correct, human_benchmark, human_reference,
                                         ood_accuracy, shape_bias)
from prunelens.alignment.trials import read_human_trials, write_trials
from prunelens.data.distortions import DISTORTIONS, REFERENCE_SIZE, distort
from prunelens.data.model_vs_human import (CATEGORIES, DATASETS, ModelVsHumanDataset, find_datasets,
                                           image_id)
from prunelens.errors import ConfigError, DataError
from prunelens.suite import (SPARSITY, Claim, FigureReference, FigureSpec, LevelContext, Metric,
                             Quantity, ReportSection, RunContext, Suite, SuiteOptions,
                             data_folder_error, register_suite, require_folder)
from prunelens.io import atomic_write_bytes
from prunelens.results import Record

SUITE = "alignment"
#: the humans' values of the metrics per model-vs-human dataset (``after_levels``, with ``mvh_root``)
HUMAN_REFERENCE_FILE = "human_reference.csv"
#: variants of the run's dataset that stand for model-vs-human datasets (synthetic data has them)
VARIANTS = {"silhouette": "silhouette", "edge": "edge", "cue_conflict": "cue-conflict"}


class AlignmentOptions(SuiteOptions):
    n_images: int = Field(100, ge=0, description="test images for the offline counterpart (0: off)")
    distortions: list[str] = Field(default_factory=lambda: list(DISTORTIONS))
    variants: bool = Field(True, description="silhouette/edge/cue-conflict variants, when the dataset has them")
    scale_filters: bool = Field(True, description="filter widths × image size / 224")
    seed: int = 0
    decision_mapping: dict[str, list[str | int]] | None = Field(
        None, description="category -> model classes for the run's own data (default: by class name)")
    mvh_root: str | None = Field(None, description="folder with the model-vs-human datasets")
    mvh_datasets: list[str] | None = Field(None, description="default: all 17")
    mvh_decision_mapping: dict[str, list[str | int]] | None = Field(
        None, description="16-category -> model classes (default: ImageNet-1k rule)")
    num_workers: int = Field(0, ge=0)

    @field_validator("distortions")
    @classmethod
    def _known_distortions(cls, value: list[str]) -> list[str]:
        unknown = [d for d in value if d not in DISTORTIONS]
        if unknown:
            raise ValueError(f"unknown distortion(s) {unknown}; available: {', '.join(DISTORTIONS)}")
        return value

    @field_validator("mvh_datasets")
    @classmethod
    def _known_datasets(cls, value: list[str] | None) -> list[str] | None:
        unknown = [d for d in value or [] if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown model-vs-human dataset(s) {unknown}; available: {', '.join(DATASETS)}")
        return value

    @field_validator("mvh_decision_mapping")
    @classmethod
    def _sixteen_categories(cls, value):
        unknown = [c for c in value or {} if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"categories {unknown} are not model-vs-human categories ({', '.join(CATEGORIES)})")
        return value


def observer_name(ctx: LevelContext) -> str:
    """The ``subj`` of a level's trials: ``<model>-level-XX`` (no ``_``, as in the benchmark)."""
    return f"{ctx.config.model.name}-level-{ctx.level.index:02d}".replace("_", "-")


@torch.inference_mode()
def classify(model: torch.nn.Module, spec, batches: Iterable[torch.Tensor], mapping: DecisionMapping,
             device: torch.device, option: str) -> torch.Tensor:
    """Category index (into ``mapping.categories``) of every image of ``batches`` (x in [0, 1])."""
    out = []
    for x in batches:
        logits = spec.forward(model, spec.normalize(x.to(device, non_blocking=True)))
        if logits.shape[-1] != mapping.num_outputs:
            raise ConfigError(f"evaluate.alignment.{option}: the decision mapping expects "
                              f"{mapping.num_outputs} model outputs, the model gives {logits.shape[-1]}")
        out.append(mapping(logits).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _batches(images: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    return iter(images.split(size))


# ---- offline counterpart ---------------------------------------------------------------------------
def _test_images(ctx: LevelContext, n: int, variant: str = "standard"):
    """(images, labels, item ids, texture labels or None, class names) of ``n`` test images,
    or None if the run's dataset has no such variant.

    Datasets that can generate a split of ``n`` images (synthetic) do so, so that every variant
    shows the same objects; of other datasets, ``n`` images evenly spaced over the test split
    (whose order may be by class) are used.
    """
    accepted = inspect.signature(ctx.data.entry.build).parameters
    kwargs = {"n": n} if "n" in accepted else {}
    if variant != "standard":
        if "variant" not in accepted:
            return None
        kwargs["variant"] = variant
    split = ctx.data.split(ctx.data.eval_split, **kwargs)
    count = min(n, len(split))
    picks = torch.linspace(0, len(split) - 1, count).round().long().tolist() if count else []
    items = [split[i] for i in picks]
    images = torch.stack([img for img, _ in items])
    labels = torch.tensor([int(lab) for _, lab in items])
    names = getattr(split, "item_ids", None)
    ids = [names[i] if names is not None else f"test-{i:05d}" for i in picks]
    texture = getattr(split, "texture_labels", None)
    return (images, labels, ids, texture[picks] if texture is not None else None,
            list(split.class_names))


class Observer:
    """A level's model as an observer: images → trials in the benchmark's format."""

    def __init__(self, ctx: LevelContext, mapping: DecisionMapping, subj: str, option: str) -> None:
        self.ctx, self.mapping, self.subj, self.option = ctx, mapping, subj, option

    def decide(self, batches: Iterable[torch.Tensor]) -> list[str]:
        idx = classify(self.ctx.model, self.ctx.spec, batches, self.mapping, self.ctx.device,
                       self.option)
        return [self.mapping.categories[k] for k in idx.tolist()]

    def trials(self, dataset: str, conditions: list[str], categories: list[str],
               responses: list[str], imagenames: list[str], items: list[str]) -> pd.DataFrame:
        n = len(imagenames)
        return pd.DataFrame({
            "subj": self.subj, "session": "1", "trial": [str(i + 1) for i in range(n)], "rt": "NaN",
            "object_response": responses, "category": categories, "condition": conditions,
            "imagename": imagenames, "dataset": dataset, "item": items,
            "image_id": [image_id(name) for name in imagenames]})


def offline_trials(ctx: LevelContext, subj: str) -> list[pd.DataFrame]:
    """Trials of the offline counterpart: distortions and variants of the run's test split."""
    opts: AlignmentOptions = ctx.options
    images, labels, items, _, class_names = _test_images(ctx, opts.n_images)
    mapping = (DecisionMapping.from_groups(opts.decision_mapping, class_names,
                                           "evaluate.alignment.decision_mapping")
               if opts.decision_mapping else DecisionMapping.identity(class_names))
    observer = Observer(ctx, mapping, subj, "decision_mapping")
    to_category = mapping.class_to_category()  # images of classes in no category are not trials
    names = mapping.categories
    prefix = ctx.config.data.name.replace("_", "-")  # trial files split their names at "_"
    scale = images.shape[-1] / REFERENCE_SIZE if opts.scale_filters else 1.0

    keep = to_category[labels] >= 0
    kept = keep.nonzero().flatten().tolist()
    images = images[keep]
    categories = [names[to_category[labels[i]]] for i in kept]
    frames = []
    seen: dict[bytes, list[str]] = {}  # control conditions repeat across datasets (e.g. greyscale)
    for distortion in tqdm(opts.distortions, desc="alignment: distortions", leave=False, disable=None):
        dataset = f"{prefix}-{distortion}"
        conds = DISTORTIONS[distortion].conditions
        responses, conditions = [], []
        for cond in conds:
            x = distort(images, distortion, cond, seed=opts.seed, pixel_scale=scale)
            key = hashlib.sha1(x.numpy().tobytes()).digest()
            if key not in seen:
                seen[key] = observer.decide(_batches(x, ctx.batch_size))
            responses += seen[key]
            conditions += [cond] * len(kept)
        frames.append(observer.trials(
            dataset, conditions, categories * len(conds), responses,
            [f"{t + 1:04d}_{prefix}_dnn_{c}_{cat}_00_{items[i]}.png" for t, (c, cat, i) in
             enumerate(zip(conditions, categories * len(conds), kept * len(conds)))],
            [items[i] for i in kept] * len(conds)))
    if opts.variants:
        for variant, mvh_name in VARIANTS.items():
            got = _test_images(ctx, opts.n_images, variant)
            if got is not None:
                frames.append(_variant_trials(observer, prefix, mvh_name, got, to_category))
    return frames


def _variant_trials(observer: Observer, prefix: str, mvh_name: str, split,
                    to_category: torch.Tensor) -> pd.DataFrame:
    """Trials on a silhouette / edge / cue-conflict variant (condition ``0``, as in the benchmark)."""
    images, labels, items, texture, _ = split
    names = observer.mapping.categories
    keep = to_category[labels] >= 0
    kept = keep.nonzero().flatten().tolist()
    responses = observer.decide(_batches(images[keep], observer.ctx.batch_size))
    shapes = [names[to_category[labels[i]]] for i in kept]
    tails = [f"{items[i]}.png" for i in kept]
    cue_conflict = mvh_name == "cue-conflict" and texture is not None
    if cue_conflict:  # named <shape><i>-<texture><i>.png, as the benchmark's cue-conflict images
        textures = [names[to_category[texture[i]]] if to_category[texture[i]] >= 0 else "none"
                    for i in kept]
        tails = [f"{s}{i}-{t}{i}.png" for s, t, i in zip(shapes, textures, kept)]
    frame = observer.trials(
        f"{prefix}-{mvh_name}", ["0"] * len(kept), shapes, responses,
        [f"{t + 1:04d}_{prefix}_dnn_0_{s}_00_{tail}" for t, (s, tail) in enumerate(zip(shapes, tails))],
        [items[i] for i in kept])
    if cue_conflict:
        frame["texture"] = textures
    return frame


# ---- the real model-vs-human datasets ---------------------------------------------------------------
def mvh_trials(ctx: LevelContext, subj: str) -> tuple[list[pd.DataFrame], list[str]]:
    """Trials on the model-vs-human datasets under ``mvh_root``, and notes on missing ones."""
    opts: AlignmentOptions = ctx.options
    present, notes = find_datasets(opts.mvh_root, opts.mvh_datasets)
    if opts.mvh_decision_mapping:
        mapping = DecisionMapping.from_groups(opts.mvh_decision_mapping, ctx.data.class_names,
                                              "evaluate.alignment.mvh_decision_mapping")
    elif ctx.data.provides("imagenet_classes"):
        mapping = DecisionMapping.imagenet16()  # torchvision's class order = sorted ImageNet wnids
    else:
        raise ConfigError(
            f"the model-vs-human decision rule maps torchvision's ImageNet class order to the 16 "
            f"categories; a model trained on '{ctx.config.data.name}' needs its own mapping: give "
            "evaluate.alignment.mvh_decision_mapping (category -> class names)")
    observer = Observer(ctx, mapping, subj, "mvh_decision_mapping")
    frames = []
    for name in tqdm(present, desc="alignment: model-vs-human", leave=False, disable=None):
        dataset = ModelVsHumanDataset(opts.mvh_root, name)
        loader = torch.utils.data.DataLoader(dataset, batch_size=ctx.batch_size,
                                             num_workers=opts.num_workers)
        responses = observer.decide(x for x, _ in loader)
        stimuli = dataset.stimuli
        frame = observer.trials(name, [s.condition for s in stimuli], [s.category for s in stimuli],
                                responses, [s.imagename for s in stimuli],
                                [s.imagename for s in stimuli])
        frame["session"] = [str(s.session) for s in stimuli]
        frames.append(frame)
    return frames, notes


# ---- records -------------------------------------------------------------------------------------------
def level_records(trials: pd.DataFrame, human: pd.DataFrame | None = None) -> Iterator[Record]:
    """Records of one dataset's trials: per-image accuracy, OOD accuracy, shape bias, human metrics."""
    dataset = trials["dataset"].iloc[0]
    hits = correct(trials).astype(float)
    for cond, item, hit in zip(trials["condition"], trials["item"], hits):
        yield Record(SUITE, "accuracy", hit, dataset=dataset, condition=cond, item=item)
    yield Record(SUITE, "ood_accuracy", float(ood_accuracy(trials).iloc[0]), dataset=dataset)
    if dataset.endswith("cue-conflict"):
        texture = trials["texture"] if "texture" in trials.columns else None
        yield Record(SUITE, "shape_bias", shape_bias(trials, texture), dataset=dataset)
    if human is not None:
        bench = human_benchmark(trials, human)
        for metric in HUMAN_METRICS:
            value = bench.loc[bench["metric"] == metric, "value"].iloc[0]
            yield Record(SUITE, metric, float(value), dataset=dataset)


@register_suite
class AlignmentSuite(Suite):
    """Accuracy under distortions, OOD accuracy, shape bias and human-likeness per level."""

    name = SUITE
    title = "RQ3: out-of-distribution accuracy, shape bias and consistency with human decisions"
    Options = AlignmentOptions
    section = ReportSection("rq3", "RQ3 — Human alignment",
                            "Do pruned models generalise out of distribution and err more like humans "
                            "(model-vs-human: OOD accuracy, shape bias, error consistency)?", order=30)
    metrics = (
        Metric("accuracy", "higher", "share of out-of-distribution images classified correctly",
               unit="fraction", figure=("alignment_ood", "alignment_datasets")),
        Metric("ood_accuracy", "higher", "share of out-of-distribution images classified correctly",
               unit="fraction", figure="alignment_ood"),
        Metric("shape_bias", "higher", "humans decide by shape (≈ 0.96, Geirhos et al.): higher is "
               "more human-like", unit="fraction", figure="shape_bias"),
        Metric("accuracy_difference", "lower", "gap between model and human accuracy: 0 is human level",
               figure="consistency"),
        Metric("observed_consistency", "higher", "share of trials where model and humans are both "
               "right or both wrong", unit="fraction", figure="consistency"),
        Metric("error_consistency", "higher", "Cohen's κ of trial-wise errors against humans: more "
               "human-like errors", unit="κ", figure="consistency"),
    )
    figures = (
        FigureSpec("alignment_ood", "Accuracy per out-of-distribution dataset vs sparsity: runs "
                   "overlaid", panels=("dataset",), lines=("group",), first_present=True),
        # mvh_performance_plot.py: one line per dataset (its 17 rows of the toolbox's CSV), ylim 0..1
        FigureSpec("alignment_datasets", "Cassano et al. Fig. 6: accuracy per model-vs-human dataset "
                   "(16-class decision, all conditions) vs pruning level", panels=("group",),
                   lines=("dataset",), x="level", styles=(), ylim=(0.0, 1.0), accuracy_axis=False, max_lines=len(DATASETS),
                   prefer=("dataset", DATASETS),
                   reference=FigureReference(HUMAN_REFERENCE_FILE, "dataset_accuracy", "humans",
                                             written_when="with evaluate.alignment.mvh_root")),
        FigureSpec("shape_bias", "Shape bias vs sparsity (cue-conflict)", panels=("metric",),
                   lines=("group", "dataset")),
        FigureSpec("consistency", "Consistency with human decisions vs sparsity", panels=("metric",),
                   lines=("group", "dataset")),
    )
    claims = (
        Claim("rq3_ood_slope",
              "Cassano et al. (RQ3): smaller models degrade less at high sparsity — the slope of "
              "out-of-distribution accuracy (every distortion and variant, per image) on sparsity",
              y=Quantity(SUITE, ("accuracy",)), x=SPARSITY, statistic="slope", expected=None,
              unit="levels", between="size", between_expected=1),
    )

    @classmethod
    def check_data(cls, options: AlignmentOptions) -> None:
        """``mvh_root`` is a folder holding at least one of the datasets asked for (a missing one
        is a note when the level is evaluated)."""
        if options.mvh_root is None:
            return
        require_folder(cls, "mvh_root", options.mvh_root)
        try:
            present, _ = find_datasets(options.mvh_root, options.mvh_datasets)
        except DataError as exc:
            raise data_folder_error(cls, "mvh_root", str(exc)) from None
        if not present:
            wanted = options.mvh_datasets or DATASETS
            raise data_folder_error(cls, "mvh_root", (
                f"none of the model-vs-human datasets {', '.join(wanted)} is a folder under "
                f"{options.mvh_root}; it must hold the toolbox's datasets/ folders (colour/, edge/, …)"))

    def evaluate_level(self, ctx: LevelContext) -> Iterable[Record]:
        opts: AlignmentOptions = ctx.options
        subj = observer_name(ctx)
        frames = offline_trials(ctx, subj) if opts.n_images > 0 else []
        real: list[pd.DataFrame] = []
        if opts.mvh_root is not None:
            real, notes = mvh_trials(ctx, subj)
            for note in notes:
                warnings.warn(note, stacklevel=2)
        records: list[Record] = []
        for trials in frames:
            _save(ctx, trials, subj)
            records += level_records(trials)
        for trials in real:
            _save(ctx, trials, subj)
            records += level_records(trials, read_human_trials(trials["dataset"].iloc[0]))
        return records

    def after_levels(self, ctx: RunContext) -> None:
        """With ``mvh_root``: the humans' own values of the metrics (``human_reference.csv``), the
        reference line for the report."""
        opts: AlignmentOptions = ctx.options
        if opts.mvh_root is None:
            return
        present, _ = find_datasets(opts.mvh_root, opts.mvh_datasets)
        if present:
            ref = pd.concat([human_reference(read_human_trials(d)) for d in present], ignore_index=True)
            atomic_write_bytes(ctx.artifacts / HUMAN_REFERENCE_FILE, ref.to_csv(index=False).encode())


def _save(ctx: LevelContext, trials: pd.DataFrame, subj: str) -> None:
    dataset = trials["dataset"].iloc[0]
    write_trials(ctx.level_artifacts / dataset / f"{dataset}_{subj}_session-1.csv", trials)
