"""The ``interpretability`` suite (RQ1): how well do explanations sit on the object, level by level?

For every level it explains each evaluation image's predicted class with every applicable method
and scores the heatmap against the ground-truth mask with Relevance Mass / Rank Accuracy. Data: the
run's synthetic test split (its masks) by default, or VOC2012 segmentation when ``voc_root`` is given
(``prunelens evaluate RUN_DIR --voc-root PATH``); runs on other datasets need VOC and are skipped
without it.

Records: ``rma`` and ``rra`` per image (NaN when the mask is empty, or when the heatmap is all zero
and ``blank_maps`` is ``nan``, the default preset's choice), method
= attribution method, dataset = ``synthetic`` / ``voc12`` (``voc07`` when given a VOC2007 folder),
condition = the scoring preset (``paper`` / ``default``) when ``preset`` lists several, else empty.
Default channel pooling per method: :data:`prunelens.explain.pipeline.ATTRIBUTION_METHODS`.

Artifacts per level (``level_XX/``): ``heatmaps.safetensors`` — the pooled heatmaps, images and
predictions of the first ``figure_images`` images, so Figure 2 can be drawn across levels without
recomputing — and ``summary.json`` (NaN counts per method, IG completeness gaps). After all
levels, ``figure2.png``.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
from pydantic import Field, field_validator, model_validator

from prunelens.data.segmentation import SegmentationBatch, SyntheticSegmentation, iter_batches
from prunelens.data.voc import VOC_CLASSES, VOCSegmentation, find_voc2012, read_split
from prunelens.errors import DataError, PrunelensError
from prunelens.suite import (ACCURACY, Claim, FigureSpec, LevelContext, Metric, Quantity,
                             ReportSection, RunContext, Suite, SuiteOptions, data_folder_error,
                             require_folder,
                             register_suite)
from prunelens.explain._common import forward
from prunelens.explain.figure import HEATMAPS_FILE, figure_from_artifacts
from prunelens.runfolder import Layout, saved_per_level
from prunelens.explain.integrated import RULES
from prunelens.explain.metrics import BLANK_MAPS, POOLINGS, TIE_RULES, localisation_scores
from prunelens.explain.pipeline import (ATTRIBUTION_METHODS, METHODS, IGSettings, applicable_methods,
                                       explain_batch)
from prunelens.io import atomic_save_tensors, atomic_write_json
from prunelens.models.spec import WINDOW_ATTENTION_MAPS
from prunelens.results import Record

log = logging.getLogger(__name__)
FIGURE_FILE = "figure2.png"


class Scoring(NamedTuple):
    """How heatmaps are made and scored where the paper's code and a principled choice differ."""

    normalize_maps: str   # none | minmax (one-channel maps: GradCAM, attention, rollout)
    ig_baseline: str      # black (pixel space) | zero (normalised space)
    guide_gelu: bool      # guided backprop rule on GELU
    rra_ties: str         # expected | index | paper
    blank_maps: str       # nan | score (metrics.BLANK_MAPS)
    ig_noise_samples: int  # SmoothGrad copies around IG (0: plain IG)
    swin_attention: str   # received | paper_first_window (models.spec.WINDOW_ATTENTION_MAPS)


#: ``default``: scores that do not depend on an arbitrary floor, baseline, pixel order or noise;
#: ``paper``: the choices of Cassano et al.'s code (EIDOSLAB/pruning-for-vision-representation,
#: commit 77e7758, explainations_evaluation_metrics.py): GradCAM/attention min-max normalised
#: (``evaluate_single`` L262-266), Captum's defaults for IG (baseline 0 in normalised space) and
#: GuidedBackprop (GELU left alone), RRA ties ranked by ``np.argsort(h)[::-1]`` — the later pixel
#: first (L295; *not* Quantus' ``index``, which ranks the earlier first), blank maps scored RMA 0
#: and kept in the mean (the eps of L290, L297), and IG wrapped in SmoothGrad with 2 noisy copies
#: (``integrated_gradients``: ``NoiseTunnel(ig).attribute(..., nt_samples=2, nt_type='smoothgrad')``,
#: Captum's default ``stdevs=1.0`` = ``ig_noise_std``'s default); Swin's attention map is their
#: first window's first query row (``build_attention_image``, SwinSpec.first_window_map), not the
#: attention tokens receive
PRESETS = {"default": Scoring("none", "black", True, "expected", "nan", 0, "received"),
           "paper": Scoring("minmax", "zero", False, "paper", "score", 2, "paper_first_window")}
Preset = Literal[tuple(PRESETS)]

#: options an earlier version stored before ``blank_maps`` existed meant these choices when left
#: unset (``Suite.options_from`` pins them, so such results count as made with other options)
_BEFORE_BLANK_MAPS = {"default": {}, "paper": {"rra_ties": "index", "blank_maps": "nan"}}
#: how the report's note names each Swin attention map
_SWIN_MAPS = {"received": "received (every window, shifts undone)",
              "paper_first_window": "of the first window (the paper)"}
#: and before ``swin_attention`` existed, every preset mapped the attention Swin's tokens receive
_BEFORE_SWIN_ATTENTION = "received"


class InterpretabilityOptions(SuiteOptions):
    methods: list[Literal[METHODS]] | None = Field(None, description="default: all that apply")
    data: Literal["synthetic", "voc"] | None = Field(
        None, description="default: voc when voc_root is given, else the run's synthetic test split")
    voc_root: str | None = Field(None, description="folder with VOCdevkit/VOC2012 (prunelens evaluate --voc-root)")
    voc_split: str = "val"
    n_images: int = Field(32, ge=1, description="first N images of the test split / VOC split")
    image_size: int = Field(224, ge=8, description="VOC: side after resize")
    resize: Literal["shorter_crop", "none"] = "shorter_crop"
    ground_truth: Literal["object", "class"] = Field(
        "object", description="object: all object pixels (the paper); class: the explained class's")
    class_map: dict[int, str] | None = Field(
        None, description="VOC + ground_truth: class — model class index → VOC class name")
    ig_steps: int = Field(50, ge=1)
    ig_rule: Literal[RULES] = "gausslegendre"
    ig_noise_samples: int | None = Field(None, ge=0, description=(
        "SmoothGrad copies around IG; default: the preset's (default 0, paper 2)"))
    ig_noise_std: float = Field(1.0, ge=0, description=(
        "SmoothGrad noise std in model-input (normalised) space, as Captum NoiseTunnel's stdevs "
        "(default 1.0, which the paper's code used)"))
    ig_memory_cap_mb: float = Field(1024.0, gt=0)
    pooling: dict[Literal[METHODS], Literal[POOLINGS]] = Field(default_factory=dict)
    batch_size: int = Field(16, ge=1, description="images per batch (GradCAM and guided backprop "
                            "keep a whole batch's activations; IG is chunked by ig_memory_cap_mb)")
    figure_images: int = Field(4, ge=0, description="images whose heatmaps are saved for Figure 2")
    seed: int = 0
    preset: Preset | list[Preset] = Field("default", description=(
        "scoring choices: default (principled) or paper (those of Cassano et al.'s code), or a "
        "list of both (e.g. [paper, default]) to score every image with each, side by side: the "
        "records then carry the preset as their condition and the report overlays them; "
        "ig_noise_samples and the five options below override single choices of every preset"))
    normalize_maps: Literal["none", "minmax"] | None = Field(
        None, description="min-max normalise one-channel maps (GradCAM, attention) before RMA/RRA")
    ig_baseline: Literal["black", "zero"] | None = Field(
        None, description="black: a black image in pixel space; zero: 0 in normalised input space")
    guide_gelu: bool | None = Field(None, description="guided backprop also guides GELU (Captum: no)")
    rra_ties: Literal[TIE_RULES] | None = Field(
        None, description=("RRA ties: expected value under random tie-breaking, pixel index with the "
                           "earlier pixel first (index, Quantus) or the later first (paper)"))
    blank_maps: Literal[BLANK_MAPS] | None = Field(
        None, description=("an all-zero map (after min-max): nan, or score (RMA 0 and RRA by the tie "
                           "rule, kept in the mean, as the paper's eps terms do)"))
    swin_attention: Literal[WINDOW_ATTENTION_MAPS] | None = Field(
        None, description=("Swin's attention map: received (attention each token receives, shifts "
                           "undone) or paper_first_window (the paper's first window's first query, "
                           "summed over heads, stretched over the image)"))

    @field_validator("preset")
    @classmethod
    def _presets_once_each(cls, value):
        if isinstance(value, list):
            if not value or len(set(value)) != len(value):
                raise ValueError(f"a list of presets names each of {', '.join(PRESETS)} at most once "
                                 f"and at least one, got {value}")
            if len(value) == 1:  # the same run as the plain name: same records, same options
                return value[0]
        return value

    @property
    def presets(self) -> tuple[str, ...]:
        """The presets the suite scores with, in the order given."""
        return tuple(self.preset) if isinstance(self.preset, list) else (self.preset,)

    @property
    def scorings(self) -> dict[str, Scoring]:
        """Preset -> its choices with the options given explicitly in their place."""
        chosen = {k: getattr(self, k) for k in Scoring._fields if getattr(self, k) is not None}
        return {p: PRESETS[p]._replace(**chosen) for p in self.presets}

    @property
    def scoring(self) -> Scoring:
        """The choices of the one preset (:attr:`scorings` when a list of presets is given)."""
        if len(self.presets) > 1:
            raise ValueError(f"preset {list(self.presets)}: several presets, see scorings")
        return self.scorings[self.preset]

    @property
    def source(self) -> str:
        """Where the images and masks come from: ``voc`` or ``synthetic``."""
        return self.data or ("voc" if self.voc_root else "synthetic")

    @model_validator(mode="after")
    def _check(self) -> InterpretabilityOptions:
        if self.data == "voc" and not self.voc_root:
            raise ValueError("data: voc needs voc_root (the folder holding VOCdevkit/VOC2012)")
        if self.class_map:
            bad = sorted(set(self.class_map.values()) - set(VOC_CLASSES[1:]))
            if bad:
                raise ValueError(f"class_map names {bad} are not VOC classes ({', '.join(VOC_CLASSES[1:])})")
        if self.source == "voc" and self.ground_truth == "class" and not self.class_map:
            raise ValueError("ground_truth: class on VOC needs class_map (model class index → VOC class name)")
        return self


@register_suite
class InterpretabilitySuite(Suite):
    name = "interpretability"
    title = "RQ1: attributions scored against object masks (Relevance Mass / Rank Accuracy)"
    Options = InterpretabilityOptions
    section = ReportSection("rq1", "RQ1 — Interpretability",
                            "Do attributions of pruned models concentrate more on the object (Relevance "
                            "Mass and Rank Accuracy against object masks)?", order=10)
    metrics = (
        Metric("rma", "higher", "share of attribution mass inside the object mask (Arras et al.)",
               unit="fraction", figure=("interpretability", "interpretability_overlay")),
        Metric("rra", "higher", "share of the top-|mask| attributed pixels that fall inside the mask",
               unit="fraction", figure=("interpretability", "interpretability_overlay")),
    )
    figures = (
        FigureSpec("interpretability", "Relevance Mass / Rank Accuracy vs sparsity per attribution "
                   "method (Cassano et al. Fig. 3/4)", panels=("group", "dataset", "metric"),
                   lines=("method", "condition"), styles=("condition",)),  # condition: the preset
        FigureSpec("interpretability_overlay", "Relevance Mass / Rank Accuracy vs sparsity: runs "
                   "overlaid", panels=("dataset", "metric", "method"), lines=("group", "condition"),
                   accuracy_axis=False, multi_group_only=True),
    )
    claims = (
        Claim("rq1_attribution_vs_accuracy",
              "Cassano et al. (RQ1): as accuracy falls with pruning, CNNs' interpretability scores stay "
              "or rise (negative correlation with accuracy), ViTs' fall with it (positive)",
              y=Quantity("interpretability", ("rma", "rra")), x=ACCURACY, statistic="spearman",
              family_expected=(("convolutional", -1), ("transformer", 1)),
              unit="levels", by=("metric", "method", "dataset", "condition"), between="family"),
    )

    def __init__(self) -> None:
        self._data_key: tuple | None = None
        self._data = None

    @classmethod
    def check_data(cls, options: InterpretabilityOptions) -> None:
        """VOC: ``voc_root`` holds VOC2012's JPEGImages/ and SegmentationClass/, and ``voc_split``'s
        list file exists."""
        if options.source != "voc":
            return
        require_folder(cls, "voc_root", options.voc_root)
        try:
            voc = find_voc2012(options.voc_root)
        except DataError as exc:
            raise data_folder_error(cls, "voc_root", str(exc)) from None
        try:
            read_split(voc, options.voc_split)
        except DataError as exc:
            raise DataError(f"evaluate.{cls.name}.voc_split: {exc}") from None

    def skip_reason(self, ctx: RunContext) -> str | None:
        if ctx.options.source == "synthetic" and not ctx.data.provides("masks"):
            return (f"the run's dataset '{ctx.data.config.name}' has no segmentation masks: give "
                    "VOC2012 with `prunelens evaluate RUN_DIR --voc-root PATH` (or "
                    "evaluate.interpretability.voc_root)")
        wanted = ctx.options.methods or list(METHODS)
        if not ctx.spec.has_spatial_features and set(wanted) <= {"gradcam", "guided_gradcam"}:
            return f"{', '.join(wanted)} need a spatial feature map, which this architecture lacks"
        return None

    def not_applicable(self, ctx: RunContext) -> dict[str, str]:
        model = ctx.architecture()
        wanted = ctx.options.methods or list(METHODS)
        reasons = {m: ATTRIBUTION_METHODS[m].why_not(model, ctx.spec) for m in wanted}
        return {f"method '{m}'": why for m, why in reasons.items() if why}

    # ---- data -----------------------------------------------------------------------------------
    def dataset(self, ctx: RunContext):
        """The evaluation images with masks (built once, reused by every level)."""
        o = ctx.options
        key = (o.source, o.voc_root, o.voc_split, o.n_images, o.image_size, o.resize)
        if self._data_key != key:
            if o.source == "voc":
                self._data = VOCSegmentation(o.voc_root, o.voc_split, o.n_images, o.image_size, o.resize)
            else:
                self._data = SyntheticSegmentation(ctx.data.split("test"), o.n_images)
            self._data_key = key
        return self._data

    def _ground_truth(self, batch: SegmentationBatch, targets: torch.Tensor, opts) -> torch.Tensor:
        if opts.ground_truth == "object":
            return batch.object_masks()
        if opts.source == "voc":
            lookup = torch.full((max(opts.class_map) + 1,), -1, dtype=torch.long)
            for index, name in opts.class_map.items():
                lookup[index] = VOC_CLASSES.index(name)
            t = targets.cpu()
            classes = torch.where(t < len(lookup), lookup[t.clamp(max=len(lookup) - 1)], -1)
        else:
            classes = targets.cpu() + 1  # synthetic label map stores shape label + 1
        return batch.class_masks(classes)

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate_level(self, ctx: LevelContext) -> Iterator[Record]:
        opts = ctx.options
        data = self.dataset(ctx)
        methods = [m for m in (opts.methods or METHODS) if m in applicable_methods(ctx.model, ctx.spec)]
        dataset_name = data.name if opts.source == "voc" else ctx.data.config.name
        scorings = opts.scorings
        # each preset draws its SmoothGrad noise from its own generator: the values of a preset
        # scored beside another equal those of a run with that preset alone
        igs = {preset: IGSettings(opts.ig_steps, opts.ig_rule, s.ig_noise_samples, opts.ig_noise_std,
                                  opts.ig_memory_cap_mb, generator=torch.Generator().manual_seed(opts.seed),
                                  baseline=s.ig_baseline) for preset, s in scorings.items()}
        sizes = data.sizes() if hasattr(data, "sizes") and opts.resize == "none" else None
        tallies = {p: {m: {"n": 0, "nan_rma": 0, "nan_rra": 0} for m in methods} for p in scorings}
        gaps, relative_gaps, figure = [], [], []
        for batch in _progress(iter_batches(data, opts.batch_size, sizes), ctx):
            x = ctx.spec.normalize(batch.images01(ctx.device))
            _check_input_size(ctx.model, ctx.spec, x, opts)
            ignore = batch.ignore.to(ctx.device)
            first = None  # the first preset's explanations: Figure 2 and the IG diagnostics
            for preset, scoring in scorings.items():
                result = explain_batch(ctx.model, x, methods, spec=ctx.spec, ig=igs[preset],
                                       pooling=opts.pooling, amp=ctx.amp,
                                       channels_last=ctx.channels_last, guide_gelu=scoring.guide_gelu,
                                       window_attention=scoring.swin_attention)
                gt = self._ground_truth(batch, result.targets, opts).to(ctx.device)
                pooled = {m: result.pooled(m) for m in methods}
                condition = preset if len(scorings) > 1 else ""  # one preset: records as before
                yield from self._scores(batch, result, pooled, gt, ignore, scoring, condition,
                                        dataset_name, tallies[preset])
                first = first or (result, pooled)
            result, pooled = first
            if result.completeness_gap is not None:
                gaps += result.completeness_gap.tolist()
                scale = result.heatmaps["integrated_gradients"].flatten(1).abs().sum(1).clamp(min=1e-12)
                relative_gaps += (result.completeness_gap / scale).tolist()
            if (sum(len(f["items"]) for f in figure) < opts.figure_images
                    and (not figure or figure[0]["image"].shape[-2:] == batch.images.shape[-2:])):
                figure.append(_figure_slice(batch, result, pooled, opts.figure_images))  # one size only
        self._write_artifacts(ctx, methods, tallies, gaps, relative_gaps, figure)

    def _scores(self, batch: SegmentationBatch, result, pooled: dict[str, torch.Tensor],
                gt: torch.Tensor, ignore: torch.Tensor, scoring: Scoring, condition: str,
                dataset: str, tally: dict) -> Iterator[Record]:
        """RMA and RRA of every method's maps of one batch, scored as ``scoring`` says."""
        for method, maps in pooled.items():
            minmax = scoring.normalize_maps == "minmax" and result.pooling[method] == "none"
            scores = localisation_scores(maps, gt, ignore, ties=scoring.rra_ties, minmax=minmax,
                                         blank_maps=scoring.blank_maps)
            scores = {k: v.tolist() for k, v in scores.items()}
            for metric in ("rma", "rra"):
                for item, value in zip(batch.item_ids, scores[metric]):
                    yield Record(self.name, metric, value, method=method, dataset=dataset,
                                 condition=condition, item=item)
                tally[method][f"nan_{metric}"] += sum(math.isnan(v) for v in scores[metric])
            tally[method]["n"] += len(batch)

    def _write_artifacts(self, ctx: LevelContext, methods, tallies, gaps, relative_gaps, figure) -> None:
        """``tallies``: preset -> method -> NaN counts; summary.json keeps one preset's counts per
        method, as before presets could be listed, and several presets' per preset."""
        for preset, tally in tallies.items():
            for method, t in tally.items():
                if t["nan_rma"] or t["nan_rra"]:
                    log.warning("interpretability level %s, %s (preset %s): %d/%d RMA and %d/%d RRA "
                                "scores are NaN (empty mask, or all-zero heatmap with blank_maps: nan)",
                                _level_index(ctx), method, preset, t["nan_rma"], t["n"], t["nan_rra"], t["n"])
        summary = {"methods": methods,
                   "counts": next(iter(tallies.values())) if len(tallies) == 1 else tallies}
        if gaps:
            summary["ig_completeness_gap"] = {"mean": sum(gaps) / len(gaps), "max": max(gaps),
                                              "mean_relative": sum(relative_gaps) / len(relative_gaps)}
        out = ctx.level_artifacts
        atomic_write_json(out / Layout.LEVEL_SUMMARY, summary)
        if figure:
            n = ctx.options.figure_images
            tensors = {k: torch.cat([f[k] for f in figure])[:n]
                       for k in figure[0] if k != "items"}
            items = [i for f in figure for i in f["items"]][:n]
            meta = {"item_ids": json.dumps(items), "methods": json.dumps(methods),
                    "level": str(_level_index(ctx)), "sparsity": str(getattr(ctx.level, "sparsity", "")),
                    "class_names": json.dumps(_class_names(ctx))}
            atomic_save_tensors(out / HEATMAPS_FILE, tensors, metadata=meta)
        else:  # none asked for: drop those of an earlier evaluation with other options
            (out / HEATMAPS_FILE).unlink(missing_ok=True)

    @classmethod
    def describe(cls, options: InterpretabilityOptions) -> str:
        if len(options.presets) > 1:
            return ("presets scored side by side (each record's condition names its preset): "
                    + "; ".join(cls._describe_preset(p, s, options) for p, s in options.scorings.items()))
        return cls._describe_preset(options.preset, options.scoring, options)

    @staticmethod
    def _describe_preset(preset: str, s: Scoring, options: InterpretabilityOptions) -> str:
        ties = {"index": "by pixel index, earlier first (Quantus)",
                "paper": "by pixel index, later first (the paper's argsort)"}.get(s.rra_ties, "by expected value")
        noise = (f"SmoothGrad over {s.ig_noise_samples} copies (std {options.ig_noise_std:g})"
                 if s.ig_noise_samples else "no SmoothGrad")
        return (f"scoring preset '{preset}': one-channel maps "
                f"{'min-max normalised' if s.normalize_maps == 'minmax' else 'as computed'}, "
                f"IG baseline {'0 in normalised space' if s.ig_baseline == 'zero' else 'black'}, "
                f"IG {noise}, "
                f"guided backprop {'also guides' if s.guide_gelu else 'leaves'} GELU, "
                f"RRA ties {ties}, "
                f"blank maps {'scored RMA 0 and kept in the mean' if s.blank_maps == 'score' else 'NaN'}, "
                f"Swin attention {_SWIN_MAPS[s.swin_attention]}")

    @classmethod
    def resolved_options(cls, options: InterpretabilityOptions) -> dict:
        """The options with the preset's choices in place of the ones left unset (with several
        presets, each choice as ``{preset: value}``)."""
        scorings = options.scorings
        if len(scorings) == 1:
            return {**options.model_dump(mode="json"), **options.scoring._asdict()}
        return {**options.model_dump(mode="json"),
                **{k: {p: getattr(s, k) for p, s in scorings.items()} for k in Scoring._fields}}

    @classmethod
    def options_from(cls, stored: dict) -> InterpretabilityOptions | None:
        """As :meth:`Suite.options_from`; options stored before ``blank_maps`` existed are read
        with the meaning they had then: ``ig_noise_samples`` was a plain number (0 by default) and
        the ``paper`` preset ranked ties by ``index`` and gave blank maps NaN; options stored before
        ``swin_attention`` existed mapped Swin's attention received, whatever the preset."""
        if isinstance(stored, dict) and "swin_attention" not in stored:
            presets = stored.get("preset", "default")
            presets = presets if isinstance(presets, list) else [presets]
            if any(PRESETS[p].swin_attention != _BEFORE_SWIN_ATTENTION  # the paper preset's changed
                   for p in presets if isinstance(p, str) and p in PRESETS):
                stored = {**stored, "swin_attention": _BEFORE_SWIN_ATTENTION}
        if isinstance(stored, dict) and "blank_maps" not in stored:
            stored = dict(stored)
            preset = stored.get("preset", "default")
            for key, value in _BEFORE_BLANK_MAPS.get(preset, {}).items():
                if stored.get(key) is None:
                    stored[key] = value
            noise = stored.get("ig_noise_samples", 0)
            stored["ig_noise_samples"] = (None if noise == PRESETS.get(preset, PRESETS["default"])
                                          .ig_noise_samples else noise)
        return super().options_from(stored)

    @classmethod
    def options_for(cls, options: InterpretabilityOptions, spec) -> InterpretabilityOptions:
        """Swin's attention map choice acts only on architectures with window attention."""
        if spec.has_window_attention:
            return options
        return options.model_copy(update={"swin_attention": None})

    def after_levels(self, ctx: RunContext) -> None:
        if saved_per_level(ctx.artifacts, HEATMAPS_FILE):
            figure_from_artifacts(ctx.artifacts, ctx.artifacts / FIGURE_FILE)


def _check_input_size(model, spec, x: torch.Tensor, opts) -> None:
    """A model that cannot take this image size (e.g. a ViT's fixed input) is the user's to fix."""
    try:
        with torch.no_grad():
            forward(model, x[:1], spec)
    except (AssertionError, RuntimeError, ValueError) as exc:
        where = ("evaluate.interpretability.image_size (and resize: shorter_crop)" if opts.source == "voc"
                 else "the run's data.image_size")
        raise DataError(f"the model cannot take {x.shape[-2]}x{x.shape[-1]} images ({exc}); set {where} "
                        "to the model's input size") from None


def _figure_slice(batch: SegmentationBatch, result, pooled: dict[str, torch.Tensor], n: int) -> dict:
    k = min(n, len(batch))
    out = {"image": batch.images[:k], "label_map": batch.label_map[:k],
           "prediction": result.predictions[:k].cpu(), "target": result.targets[:k].cpu(),
           "items": batch.item_ids[:k]}
    out.update({f"map/{m}": v[:k].float().cpu() for m, v in pooled.items()})
    return out


def _level_index(ctx: LevelContext):
    return getattr(ctx.level, "index", "")


def _class_names(ctx: RunContext) -> list[str]:
    try:
        return list(ctx.data.class_names)
    except (AttributeError, TypeError, PrunelensError):  # no names: labels show class indices
        return []


def _progress(batches, ctx: LevelContext):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return batches
    return tqdm(batches, desc=f"interpretability level {_level_index(ctx)}", leave=False,
                disable=not sys.stderr.isatty())
