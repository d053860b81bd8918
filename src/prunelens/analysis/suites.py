"""The ``connectivity``, ``psp`` and ``sharpness`` suites of ``prunelens evaluate``.

Records (:class:`prunelens.results.Record`): ``method`` is the layer (module name, or the parameter name
when it is not a module's ``weight``), ``item`` the unit / neuron / draw / image, ``dataset`` and
``condition`` empty except for the ablation (``condition`` = which units were removed).
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from prunelens.analysis import across_levels
from prunelens.analysis import connectivity as conn
from prunelens.analysis import figures
from prunelens.analysis.psp_entropy import psp_entropy
from prunelens.analysis.selectivity import pair_weight_similarity, selectivity_records
from prunelens.analysis.sharpness import hessian_top_eigenvalue, loss_increase
from prunelens.suite import (ACCURACY, Claim, FigureSpec, LevelContext, Metric, Quantity,
                             ReportSection, RunContext, Suite, SuiteOptions, register_suite)
from prunelens.io import atomic_save_tensors, atomic_write_json
from prunelens.results import Record, load_results


# ---- helpers shared by the suites ----------------------------------------------------------------
def layer_name(param: str) -> str:
    """``layers.fc1.weight`` → ``layers.fc1``; other parameter names are kept whole."""
    return param.removesuffix(".weight")


def level_mask(masks: dict[str, torch.Tensor], name: str, weight: torch.Tensor) -> torch.Tensor:
    """The level's mask of a parameter; where the pool has none, its non-zero weights."""
    mask = masks.get(name) if masks else None
    return (mask if mask is not None else weight != 0).detach().bool().cpu()


def missing_split(ctx: RunContext, split: str, key: str) -> str | None:
    """Why ``split`` cannot be read from the run's dataset (None when it can)."""
    splits = tuple(ctx.data.entry.splits)
    if split in splits:
        return None
    return (f"dataset '{ctx.data.config.name}' has no '{split}' split (it has {', '.join(splits)}); "
            f"set {key} to one of them")


def sample_images(ctx: RunContext, split: str, n: int) -> torch.utils.data.Dataset:
    """``n`` images of ``split``, evenly spaced, without random augmentation: the same at every level."""
    return ctx.data.sample(split, n)


def item_ids(dataset) -> list[str]:
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    ids = getattr(base, "item_ids", None)
    if isinstance(dataset, torch.utils.data.Subset):
        index = list(dataset.indices)
        return [ids[i] for i in index] if ids is not None else [str(i) for i in index]
    return list(ids) if ids is not None else [str(i) for i in range(len(dataset))]


def stacked(ctx: RunContext, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image and label of ``dataset`` as two tensors, read with the run's loader."""
    xs, ys = zip(*[(x, torch.as_tensor(y)) for x, y in ctx.loader(dataset)])
    return torch.cat(xs), torch.cat(ys)


def finite(value: float) -> float:
    return float(value) if value is not None else math.nan


# ---- connectivity --------------------------------------------------------------------------------
class ConnectivityOptions(SuiteOptions):
    radius: float = Field(2.0, gt=0, description="pairs with |d| <= radius (pixels) are local")
    min_kernel: int = Field(5, ge=2, description="smaller conv kernels get counts only, no locality")
    second_layer: bool = Field(True, description="FCN: also the second layer's effective mask M2·M1")
    n_shift_pairs: int = Field(256, ge=0, description="unit pairs for the translation analysis")
    ablation_fraction: float = Field(0.1, gt=0, le=1, description="fraction of connected units removed")
    n_images: int = Field(256, ge=0, description="images for the ablation (0: no ablation)")
    split: str | None = Field(None, description="ablation images; default: the evaluation split")
    gallery_units: int = Field(8, ge=0)
    selectivity_images: int = Field(512, ge=0, description=(
        "images for the class-independent response of first-layer units (0: off)"))
    selectivity_measure: Literal["eta2", "on_off_information"] = "eta2"
    n_permutations: int = Field(200, ge=10, description="shuffled-label baseline of the selectivity")
    independence_quantile: float = Field(0.95, gt=0, lt=1, description=(
        "a unit is class-independent when its selectivity is not above this quantile of its "
        "shuffled-label baseline"))
    translated_match: float = Field(0.9, gt=0, le=1, description=(
        "mask similarity at the best shift above which two units are translated copies"))
    figures: bool = Field(True, description=(
        "each level's mask galleries, counts and pair maps (PNGs in results/, not in the report)"))
    across_levels: bool = Field(True, description=(
        "Pellegrini & Biroli's figures across levels, shown in the report: each level saves its "
        "unit masks and best translated pairs; drawn once all levels are evaluated"))
    figure_levels: int = Field(8, ge=2, description="levels (columns) of the galleries at most")
    figure_pairs: int = Field(4, ge=1, description="translated-copy pairs shown per level")
    seed: int = 0


@dataclass
class LayerView:
    """A layer's masks as unit images (U, C, H, W), with masked weights and the module for ablation."""

    name: str
    units: torch.Tensor
    weights: torch.Tensor
    module: nn.Module | None
    spatial: bool


def layer_views(model: nn.Module, spec, masks: dict[str, torch.Tensor],
                options: ConnectivityOptions) -> tuple[list[LayerView], str | None]:
    """The first layer (FCN rows as C×H×W, or conv kernels) and, where the spec names one, the
    second layer's effective mask. Returns the views and why none could be made (None when there
    are some)."""
    prunable = spec.prunable(model)
    first = spec.first_layer(model)
    w1 = prunable[first].detach().cpu()
    m1 = level_mask(masks, first, w1)
    kind = spec.first_layer_units(model)
    if kind is None:
        return [], (f"first prunable layer {first}: the architecture spec gives no image view of it "
                    "(neither conv kernels nor a fully connected layer on a known input shape)")
    unit_masks = spec.first_layer_images(model, m1)
    spatial = kind == "rows" or min(unit_masks.shape[-2:]) >= options.min_kernel
    view = LayerView(layer_name(first), unit_masks, spec.first_layer_images(model, w1 * m1),
                     spec.first_layer_module(model), spatial)
    views = [view]
    second = spec.second_layer(model) if options.second_layer else None
    if second is not None:
        w2 = prunable[second].detach().cpu()
        m2 = level_mask(masks, second, w2)
        shape = view.units.shape[1:]
        eff = conn.effective_mask(m1.flatten(1), m2).reshape(w2.shape[0], *shape)
        eff_w = ((w2 * m2) @ (w1 * m1).flatten(1)).reshape(w2.shape[0], *shape)
        views.append(LayerView(f"{layer_name(second)} (effective)", eff, eff_w, None, True))
    return views, None


@register_suite
class ConnectivitySuite(Suite):
    """Connections per unit / input, locality vs a random mask, translation structure, second-layer
    effective masks and unit ablation (Pellegrini & Biroli 2022)."""

    name = "connectivity"
    title = "first-layer connectivity, locality and translation structure of the masks"
    Options = ConnectivityOptions
    section = ReportSection("connectivity", "Connectivity and locality",
                            "Does local connectivity emerge in the surviving weights (Pellegrini & "
                            "Biroli)?", order=40)
    metrics = tuple(Metric(name, direction, why, unit=unit, figure="connectivity") for name, direction, why, unit in (
        ("locality_score", "higher", "local receptive fields emerge with pruning and go with denoised "
         "features (Pellegrini & Biroli)", "× random"),
        ("locality_score_pooled", "higher", "locality score of all units' pairs pooled", "× random"),
        ("locality_score_dc", "higher", "locality score of pairs across colour channels", "× random"),
        ("local_pair_fraction", "none", "share of pairs within r: read against its random baseline",
         "fraction"),
        ("locality_baseline", "none", "locality of a random mask of the same density: a reference "
         "line, not a property of the model", "fraction"),
        ("inputs_connected_fraction", "none", "falls with sparsity by construction", "fraction"),
        ("connections_per_unit", "none", "falls with sparsity by construction", "connections"),
        ("alive_units_fraction", "none", "falls with sparsity by construction", "fraction"),
        ("shift_similarity", "none", "translation structure of the masks: descriptive", "fraction"),
        ("shift_similarity_random", "none", "the same for random masks: a reference line", "fraction"),
        ("ablation_accuracy", "none", "accuracy with chosen units zeroed: read as the accuracy drop",
         "fraction"),
        ("accuracy_drop", "none", "which units matter, not a quality of the level", "fraction"),
    )) + tuple(Metric(name, "none", why, unit=unit, figure="class_independence") for name, why, unit in (
        ("class_independent_fraction", "share of first-layer units whose response is no more "
         "class-specific than with shuffled labels (Pellegrini & Biroli: class-independent units)",
         "fraction"),
        ("class_selectivity", "how much of a unit's response variance the class explains", ""),
        ("class_selectivity_shuffled", "the same with shuffled labels: the chance level", ""),
        ("translated_weight_similarity", "cosine similarity of the weights of units whose masks are "
         "translated copies, at the shift that matches them", "cosine"),
        ("translated_weight_similarity_random", "the same for random pairs of units: the reference",
         "cosine"),
        ("translated_pair_fraction", "share of sampled unit pairs whose masks are translated copies",
         "fraction"),
    ))
    figures = (FigureSpec("connectivity", "Connectivity and locality of the surviving weights vs "
                          "sparsity", panels=("metric",), lines=("group", "method", "condition")),
               FigureSpec("class_independence", "Class-independent response and translated copies of "
                          "first-layer units vs sparsity", panels=("metric",),
                          lines=("group", "method", "condition")))
    drawn_figures = across_levels.FIGURES
    claims = (
        Claim("locality_vs_accuracy",
              "Pellegrini & Biroli: the local structure that pruning finds is related to the success "
              "of the task — rank correlation of the first layers' locality score with accuracy",
              y=Quantity("connectivity", ("locality_score",)), x=ACCURACY, statistic="spearman",
              expected=1, unit="levels", by=("method",)),
        Claim("locality_above_random_mask",
              "Pellegrini & Biroli: the locality pruning finds is not a matter of sparsity alone — "
              "the locality score is above its random-mask control's at every pruned level",
              y=Quantity("connectivity", ("locality_score",)), statistic="min_gap", unit="images",
              by=("method",), between="control", between_expected=1, control_kind="random_mask"),
    )

    def skip_reason(self, ctx: RunContext) -> str | None:
        if ctx.spec.first_layer_units(ctx.architecture()) is None:
            return (f"architecture family '{ctx.spec.family}' gives no image view of its first layer "
                    "(neither conv kernels nor a fully connected layer on a known input shape)")
        split = ctx.options.split
        return missing_split(ctx, split, "evaluate.connectivity.split") if split else None

    def evaluate_level(self, ctx: LevelContext) -> Iterator[Record]:
        opts: ConnectivityOptions = ctx.options
        for param, weight in ctx.spec.prunable(ctx.model).items():
            mask = level_mask(ctx.masks, param, weight)
            yield Record(self.name, "alive_units_fraction", conn.alive_units_fraction(mask),
                         method=layer_name(param))
        views, reason = layer_views(ctx.model, ctx.spec, ctx.masks, opts)
        if reason:
            warnings.warn(f"connectivity: {reason}", stacklevel=2)
        generator = torch.Generator().manual_seed(opts.seed)
        best_pairs = []
        for view in views:
            best_pairs.append((yield from self._layer(ctx, view, generator)))
        if views and opts.across_levels and ctx.level_artifacts is not None:
            # galleries of the views that have locality (as big as min_kernel); a level without
            # any saves an empty file, so that its results are known to have what they need
            first = views[0]
            across_levels.save_level(ctx.level_artifacts / across_levels.LEVEL_FILE,
                                     [(v.name, v.units) for v in views if v.spatial],
                                     self._translated_pairs(first, best_pairs[0], opts.figure_pairs)
                                     if first.spatial else None, first.weights)
        if views and views[0].module is not None and opts.n_images > 0:
            yield from self._ablation(ctx, views[0], generator)
        if views and opts.selectivity_images > 0:
            yield from self._class_independence(ctx)

    def _class_independence(self, ctx: LevelContext) -> Iterator[Record]:
        """Class-independent response and translated copies of first-layer units
        (:func:`prunelens.analysis.selectivity.selectivity_records`)."""
        opts: ConnectivityOptions = ctx.options
        x, y = stacked(ctx, sample_images(ctx, opts.split or ctx.data.eval_split,
                                          opts.selectivity_images))
        yield from selectivity_records(
            ctx.model, ctx.spec, ctx.masks, x.to(ctx.device), y, suite=self.name,
            num_classes=ctx.data.num_classes, batch_size=ctx.batch_size,
            n_permutations=opts.n_permutations, quantile=opts.independence_quantile,
            measure=opts.selectivity_measure, n_pairs=opts.n_shift_pairs, match=opts.translated_match,
            seed=opts.seed)

    @classmethod
    def level_artifacts_needed(cls, options: ConnectivityOptions) -> tuple[str, ...]:
        return (across_levels.LEVEL_FILE,) if options.across_levels else ()

    @classmethod
    def options_for(cls, options: ConnectivityOptions, spec) -> ConnectivityOptions:
        """Options that only change how the figures across levels are drawn (the galleries'
        columns, and their rows unless each level draws its own gallery, ``figures``) change
        neither a level's records nor its saved file: changing them redraws, recomputes nothing."""
        drawing = ("figure_levels",) if options.figures else ("figure_levels", "gallery_units")
        return options.model_copy(update={k: cls.Options.model_fields[k].default for k in drawing})

    def after_levels(self, ctx: RunContext) -> dict[str, str]:
        """Pellegrini & Biroli's figures across levels (:mod:`prunelens.analysis.across_levels`);
        returns those not drawn, with why."""
        opts: ConnectivityOptions = ctx.options
        if not opts.across_levels:
            return {f.name: "evaluate.connectivity.across_levels is off; set it to true and re-run "
                    f"`prunelens evaluate {ctx.run_dir} --suite connectivity`" for f in self.drawn_figures}
        return across_levels.draw(ctx.artifacts, {lv.index: lv.sparsity for lv in ctx.pool.levels},
                                  load_results(ctx.run_dir, self.name), n_units=opts.gallery_units,
                                  n_levels=opts.figure_levels, n_pairs=opts.figure_pairs,
                                  quantile=opts.independence_quantile)

    @staticmethod
    def _translated_pairs(view: LayerView, sampled: tuple[torch.Tensor, torch.Tensor] | None, n: int):
        """The ``n`` sampled pairs whose masks overlap most at their best shift (ties: in sampled
        order), with the cosine of their weights there."""
        if sampled is None:
            return None
        pairs, best = sampled
        top = torch.argsort(torch.nan_to_num(best, nan=-1.0), descending=True, stable=True)[:n]
        return pair_weight_similarity(view.units, view.weights, pairs[top])

    def _layer(self, ctx: LevelContext, view: LayerView, generator: torch.Generator
               ) -> Iterator[Record]:
        """The layer's records; returns its sampled unit pairs and their mask similarity at the
        best shift (None when it has no locality analysis or fewer than two connected units)."""
        opts: ConnectivityOptions = ctx.options
        counts = conn.connections_per_unit(view.units)
        per_input = conn.connections_per_input(view.units)
        method = view.name
        for u, k in enumerate(counts.tolist()):
            yield Record(self.name, "connections_per_unit", float(k), method=method, item=str(u))
        yield Record(self.name, "inputs_connected_fraction", float((per_input > 0).float().mean()),
                     method=method)
        art = ctx.level_artifacts
        slug = view.name.replace(" ", "_").replace("(", "").replace(")", "")
        if opts.figures and art is not None:
            figures.save(figures.connectivity_overview(method, counts, per_input),
                         art / f"connections_{slug}.png")
            if opts.gallery_units:
                figures.save(figures.mask_gallery(method, view.units, view.weights, counts,
                                                  opts.gallery_units), art / f"gallery_{slug}.png")
        if not view.spatial:
            return None
        loc = conn.locality(view.units, opts.radius)
        for u, score in enumerate(loc.unit_score.tolist()):
            yield Record(self.name, "locality_score", score, method=method, item=str(u))
        for metric, value in (("locality_score_pooled", loc.pooled_score),
                              ("local_pair_fraction", loc.pooled_fraction),
                              ("locality_baseline", loc.baseline_fraction),
                              ("locality_score_dc", loc.dc_score)):
            yield Record(self.name, metric, finite(value), method=method)
        if opts.figures and art is not None:
            figures.save(figures.displacement_maps(method, (loc.s_sc, loc.s_dc),
                                                   (loc.expected_sc, loc.expected_dc), opts.radius),
                         art / f"pairs_{slug}.png")
        alive = torch.nonzero(counts > 0).flatten()
        pairs = conn.sample_unit_pairs(alive, opts.n_shift_pairs, generator)
        if len(pairs):
            used, where = torch.unique(pairs, return_inverse=True)  # shuffle only the units in pairs
            shuffled = conn.random_masks_like(view.units[used], generator)
            best, _ = conn.shift_similarity(view.units[pairs[:, 0]], view.units[pairs[:, 1]])
            base, _ = conn.shift_similarity(shuffled[where[:, 0]], shuffled[where[:, 1]])
            for (i, j), s, b in zip(pairs.tolist(), best.tolist(), base.tolist()):
                yield Record(self.name, "shift_similarity", s, method=method, item=f"{i}-{j}")
                yield Record(self.name, "shift_similarity_random", b, method=method, item=f"{i}-{j}")
            return pairs, best
        return None

    def _ablation(self, ctx: LevelContext, view: LayerView, generator: torch.Generator
                  ) -> Iterator[Record]:
        opts: ConnectivityOptions = ctx.options
        data = sample_images(ctx, opts.split or ctx.data.eval_split, opts.n_images)
        ids = item_ids(data)
        batches = list(ctx.loader(data))
        chosen = {"none": torch.zeros(0, dtype=torch.long),
                  **conn.choose_units(conn.connections_per_unit(view.units), opts.ablation_fraction,
                                      generator)}
        accuracy = {}
        for condition, units in chosen.items():
            correct = conn.ablation_correct(ctx.model, view.module, units, batches, ctx.spec.normalize,
                                            unit_dim=ctx.spec.unit_dim(view.module))
            accuracy[condition] = float(correct.float().mean()) if len(correct) else math.nan
            for item, c in zip(ids, correct.tolist()):
                yield Record(self.name, "ablation_accuracy", float(c), method=view.name,
                             condition=condition, item=item)
        for condition in ("most", "least", "random"):
            yield Record(self.name, "accuracy_drop", accuracy["none"] - accuracy[condition],
                         method=view.name, condition=condition)



# ---- PSP-entropy ---------------------------------------------------------------------------------
#: PSP-entropy and sharpness answer one question of Tartaglione et al.
MINIMA = ReportSection("minima", "PSP-entropy and sharpness",
                       "Does pruning reach high-entropy, sharp minima (Tartaglione et al.)?", order=50)


#: what a neuron of a Conv layer is, as the report's settings line says it
NEURON_COUNTS = {
    "element": "every output element (channel × position) is one neuron, as the reference code "
               "(EIDOSLAB/PSP-entropy src/PSPentropy.py) counts",
    "channel": "one neuron per channel, its positions further samples of its state (not the "
               "reference code's count)",
}


class PSPOptions(SuiteOptions):
    split: str = Field("train", description="data whose class-conditional neuron states are measured")
    n_images: int = Field(500, ge=1)
    conv_neurons: Literal["channel", "element"] = Field("channel", description=(
        "what one neuron is: element — every output element of a layer (channel × position), as "
        "the reference code counts (EIDOSLAB/PSP-entropy src/PSPentropy.py, 0ab88b5, lines 25-27 "
        "and 38-39); channel — one per channel, its positions further samples of its state"))


@register_suite
class PSPSuite(Suite):
    """PSP-entropy of every Conv/Linear neuron (Tartaglione et al. 2020), one pass over the data."""

    name = "psp"
    title = "PSP-entropy of every neuron (Tartaglione et al.)"
    Options = PSPOptions
    section = MINIMA
    metrics = (Metric("psp_entropy", "none", "describes how class-specific the neurons' on/off states "
                      "are; Tartaglione et al. find high entropy with well-generalising gradual "
                      "pruning, a finding to read, not a criterion", unit="bits", figure="psp_entropy"),
               Metric("psp_entropy_per_class", "none", "the binary entropy H_ik of class k, averaged "
                      "over a layer's neurons (item = class): which classes the neurons' states "
                      "separate", unit="bits", figure="psp_entropy_per_class"))
    figures = (FigureSpec("psp_entropy", "PSP-entropy per layer vs sparsity", panels=("metric",),
                          lines=("group", "method")),
               FigureSpec("psp_entropy_per_class", "Per-class PSP-entropy per layer vs sparsity (band: "
                          "spread over classes)", panels=("metric",), lines=("group", "method")))
    in_schedule_comparison = True
    claims = (Claim("gradual_higher_entropy",
                    "Tartaglione et al.: gradual pruning finds higher-entropy minima than one-shot — "
                    "PSP-entropy per layer at the final level, one-shot − gradual at equal sparsity",
                    y=Quantity("psp", ("psp_entropy",)), statistic="final_mean", unit="images",
                    by=("method",), between="schedule", between_expected=-1),)

    def skip_reason(self, ctx: RunContext) -> str | None:
        return missing_split(ctx, ctx.options.split, "evaluate.psp.split")

    @classmethod
    def describe(cls, options: PSPOptions) -> str:
        neuron = NEURON_COUNTS[options.conv_neurons]
        return (f"neurons (evaluate.psp.conv_neurons: {options.conv_neurons}): {neuron}; "
                f"{options.n_images} images of split '{options.split}'")

    def evaluate_level(self, ctx: LevelContext) -> Iterator[Record]:
        opts: PSPOptions = ctx.options
        data = sample_images(ctx, opts.split, opts.n_images)
        base = data.dataset if isinstance(data, torch.utils.data.Subset) else data
        num_classes = int(getattr(base, "num_classes", None) or ctx.data.num_classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing classes are reported in the summary below
            result = psp_entropy(ctx.model, ctx.loader(data), num_classes,
                                 transform=ctx.spec.normalize, conv_neurons=opts.conv_neurons,
                                 spec=ctx.spec)
        names = list(getattr(base, "class_names", []) or [])
        for layer, values in result.per_neuron.items():
            for i, h in enumerate(values.tolist()):
                yield Record(self.name, "psp_entropy", h, method=layer, item=str(i))
        for layer, per_class in result.per_class.items():  # (neurons, classes present)
            for k, h in zip(result.classes, per_class.mean(0).tolist()):
                yield Record(self.name, "psp_entropy_per_class", h, method=layer,
                             item=names[k] if k < len(names) else str(k))
        if ctx.level_artifacts is not None:
            atomic_save_tensors(ctx.level_artifacts / "psp_per_class.safetensors", result.per_class,
                                metadata={"classes": json.dumps(result.classes)})
            atomic_write_json(ctx.level_artifacts / "psp_summary.json", {
                "layer_mean": result.layer_mean,
                "classes_present": result.classes,
                "missing_classes": [names[k] if k < len(names) else k for k in result.missing_classes],
                "layers_never_called": result.silent_layers,
                "images": len(data), "split": opts.split, "conv_neurons": opts.conv_neurons})
        if result.missing_classes:
            more = " …" if len(result.missing_classes) > 10 else ""
            warnings.warn(f"psp: {len(result.missing_classes)} classes have no image among the "
                          f"{len(data)} of split '{opts.split}' and are left out of the sum: "
                          f"{result.missing_classes[:10]}{more}; raise evaluate.psp.n_images",
                          stacklevel=2)



# ---- sharpness -----------------------------------------------------------------------------------
class SharpnessOptions(SuiteOptions):
    split: str = Field("train", description="data of the loss (the minimum is the training loss's)")
    n_images: int = Field(64, ge=1, description="images of the fixed loss batch")
    sigmas: list[float] = Field(default_factory=lambda: [0.02, 0.05])
    n_draws: int = Field(5, ge=1)
    hessian: bool = True
    hessian_images: int = Field(32, ge=1)
    hessian_iters: int = Field(10, ge=1)
    hessian_tol: float = Field(1e-2, gt=0)
    seed: int = 0


@register_suite
class SharpnessSuite(Suite):
    """Loss increase under relative weight noise and the top Hessian eigenvalue (Tartaglione et
    al. 2020). The same seed at every level gives the same noise draws: levels compare paired."""

    name = "sharpness"
    title = "sharpness of the minimum: loss increase under weight noise, top Hessian eigenvalue"
    Options = SharpnessOptions
    section = MINIMA
    metrics = tuple(Metric(name, "none", why, unit=unit, figure="sharpness") for name, why, unit in (
        ("loss_increase", "how sharp the minimum is; Tartaglione et al. argue that the good minima "
         "gradual pruning finds are sharp, so neither flatter nor sharper is asserted to be better",
         "nats"),
        ("hessian_top_eigenvalue", "curvature along the sharpest direction: descriptive, as "
         "loss_increase", ""),
        ("loss", "loss on the sharpness batch: the base of loss_increase", "nats"),
    ))
    figures = (FigureSpec("sharpness", "Sharpness of the minimum vs sparsity", panels=("metric",),
                          lines=("group", "method")),)
    in_schedule_comparison = True
    claims = (Claim("gradual_sharper_minima",
                    "Tartaglione et al.: gradual pruning finds sharper minima than one-shot — loss "
                    "increase under weight noise and top Hessian eigenvalue at the final level, "
                    "one-shot − gradual at equal sparsity",
                    y=Quantity("sharpness", ("loss_increase", "hessian_top_eigenvalue")),
                    statistic="final_mean", unit="images", by=("metric", "method"),
                    between="schedule", between_expected=-1),)

    def skip_reason(self, ctx: RunContext) -> str | None:
        return missing_split(ctx, ctx.options.split, "evaluate.sharpness.split")

    def evaluate_level(self, ctx: LevelContext) -> Iterator[Record]:
        opts: SharpnessOptions = ctx.options
        x, y = stacked(ctx, sample_images(ctx, opts.split, max(opts.n_images, opts.hessian_images)))
        params = list(ctx.spec.prunable(ctx.model))
        masks = {n: ctx.masks[n] for n in params if ctx.masks and n in ctx.masks}
        batches = [(x[i:i + ctx.batch_size], y[i:i + ctx.batch_size])
                   for i in range(0, min(len(y), opts.n_images), ctx.batch_size)]
        base = math.nan
        for sigma in opts.sigmas:
            base, increases = loss_increase(ctx.model, batches, sigma, opts.n_draws, masks=masks,
                                            params=params, transform=ctx.spec.normalize,
                                            seed=opts.seed)
            for draw, value in enumerate(increases.tolist()):
                yield Record(self.name, "loss_increase", value, method=f"sigma={sigma:g}",
                             item=str(draw))
        yield Record(self.name, "loss", base)
        if opts.hessian:
            top = hessian_top_eigenvalue(ctx.model, (x[:opts.hessian_images], y[:opts.hessian_images]),
                                         masks=masks, params=params, transform=ctx.spec.normalize,
                                         max_iter=opts.hessian_iters, tol=opts.hessian_tol,
                                         seed=opts.seed)
            yield Record(self.name, "hessian_top_eigenvalue", top.eigenvalue)
            if ctx.level_artifacts is not None:
                atomic_write_json(ctx.level_artifacts / "hessian.json",
                                  {"eigenvalue": top.eigenvalue, "iterations": top.iterations,
                                   "converged": top.converged, "images": opts.hessian_images})

