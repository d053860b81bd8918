"""Suite ``discovery`` (RQ2): LOST boxes from each level's features, scored by CorLoc and best IoU.

Data: the run's synthetic split (one object per image, its mask's box; 64 images by default) or
Pascal VOC07/VOC12 (``voc_root``; every image of ``image_set`` by default, or of each of several
sets: ``image_set: [trainval, val]``). Per level it yields, per image, ``corloc`` (0/1) and ``iou``
(best IoU with any ground-truth box), ``method="lost"``, ``dataset`` = ``synthetic`` / ``voc07`` /
``voc12``, ``condition`` = the VOC image set (with ``-no_hard``) or empty; writes the boxes
(``boxes.csv``, a ``condition`` column naming the set) and CorLoc with its 95 % bootstrap CI
(``summary.json``: one set's at the top level, several under ``image_sets``) to the level's
artifacts folder; after the last level, a figure of the boxes of sample images of the first set
across levels (``boxes_across_levels.png``).
"""
from __future__ import annotations

import io
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn
from tqdm.auto import tqdm

from prunelens.discovery.corloc import (BoxDataset, SyntheticBoxes, best_iou, corloc_hits,
                                        pad_boxes, summarize_corloc)
from prunelens.discovery.features import LayerNormMode, patch_features
from prunelens.discovery.lost import SeedInBackgroundError, TieBreak, lost
from prunelens.errors import DataError
from prunelens.suite import (FigureSpec, LevelContext, Metric, ReportSection, RunContext, Suite,
                             SuiteOptions, data_folder_error, register_suite,
                             require_folder)
from prunelens.io import atomic_write_bytes, atomic_write_json
from prunelens.results import Record
from prunelens.runfolder import Layout, saved_per_level

SYNTHETIC_DEFAULT_IMAGES = 64
#: the suite's own files: each level's predicted boxes, and the figure across levels
BOXES_FILE = "boxes.csv"
ACROSS_LEVELS_FILE = "boxes_across_levels.png"
BOX_COLUMNS = ["item", "xmin", "ymin", "xmax", "ymax", "seed", "seed_row", "seed_col", "grid_h",
               "grid_w", "stride_y", "stride_x", "image_h", "image_w", "n_gt", "found", "iou", "corloc"]


class DiscoveryOptions(SuiteOptions):
    n_images: int | None = Field(None, ge=1, description=(
        f"first n images; default {SYNTHETIC_DEFAULT_IMAGES} synthetic images, every VOC image"))
    voc_root: str | None = Field(None, description="Pascal VOC folder (VOCdevkit/VOC2007 or a parent)")
    voc_year: Literal[2007, 2012] | None = Field(None, description="default: from the folder name")
    image_set: str | list[str] = Field("trainval", description=(
        "VOC ImageSets/Main/<image_set>.txt; a list evaluates each set in turn, the records' "
        "condition naming it (the paper's run_lost_pruning_iterations.sh: [trainval, val])"))
    no_hard: bool = Field(False, description="drop truncated/difficult VOC objects (LOST --no_hard)")
    synthetic_split: str | None = Field(None, description="split of the run's dataset whose boxes are "
                                        "used (default: its evaluation split)")
    k_patches: int = Field(100, ge=1, description="LOST: candidates for the seed expansion")
    layernorm: Literal["auto", "map", "channels", "none"] = Field("auto", description=(
        "auto: over the whole feature map for CNNs (as LOST's code), none for ViT keys / Swin tokens"))
    tie_break: Literal["reference", "index"] = "reference"
    seed_in_background: Literal["error", "miss"] = Field("miss", description=(
        "score the image as a miss (IoU 0; counted in summary.json) or stop with an error as the "
        "reference does — a deeply pruned level can have dead feature maps"))
    figure_images: int = Field(6, ge=0, le=32)
    figure_levels: int = Field(8, ge=2, le=32)

    @field_validator("image_set")
    @classmethod
    def _some_sets_once_each(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError(f"a list of image sets names each set once, and at least one; got {value}")
        return value

    @property
    def image_sets(self) -> list[str]:
        """The VOC image sets evaluated, in order."""
        return [self.image_set] if isinstance(self.image_set, str) else list(self.image_set)


def _padded_grid(image: torch.Tensor, stride: int) -> tuple[int, int]:
    return (-(-image.shape[-2] // stride), -(-image.shape[-1] // stride))


def _groups(images: dict[int, torch.Tensor], stride: int, batch_size: int) -> Iterable[list[int]]:
    """Indices of images sharing a padded size, in batches of at most ``batch_size``."""
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, img in images.items():
        by_size[_padded_grid(img, stride)].append(i)
    for members in by_size.values():
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size]


def discover(model: nn.Module, dataset: BoxDataset, *, spec=None, n_images: int | None = None,
             batch_size: int = 32, device: torch.device | str | None = None, k_patches: int = 100,
             layernorm: LayerNormMode = "auto", tie_break: TieBreak = "reference",
             seed_in_background: Literal["error", "miss"] = "error") -> pd.DataFrame:
    """LOST boxes and their best IoU / CorLoc for the first ``n_images`` of ``dataset``.

    Images of one padded size are batched together. Returns one row per image (``BOX_COLUMNS``).
    """
    from prunelens.models import spec_for

    spec = spec if spec is not None else spec_for(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    stride = int(spec.stride(model))
    n = len(dataset) if n_images is None else min(n_images, len(dataset))
    rows: dict[int, dict] = {}
    chunk = max(batch_size * 4, 1)
    with tqdm(total=n, desc="LOST", unit="img", disable=None, leave=False) as bar:
        for start in range(0, n, chunk):
            images = {i: dataset.image(i) for i in range(start, min(n, start + chunk))}
            for batch in _groups(images, stride, batch_size):
                rows.update(_discover_batch(model, spec, dataset, images, batch, device, k_patches,
                                            layernorm, tie_break, seed_in_background))
                bar.update(len(batch))
    return pd.DataFrame([rows[i] for i in range(n)], columns=BOX_COLUMNS)


def _discover_batch(model, spec, dataset, images, batch, device, k_patches, layernorm, tie_break,
                    seed_in_background) -> dict[int, dict]:
    sizes = torch.tensor([list(images[i].shape[-2:]) for i in batch])
    h_max, w_max = (int(v) for v in sizes.amax(0))
    x = torch.zeros(len(batch), 3, h_max, w_max)
    for j, i in enumerate(batch):
        x[j, :, :sizes[j, 0], :sizes[j, 1]] = images[i]
    feats = patch_features(model, x.to(device), spec=spec, layernorm=layernorm,
                           image_hw=sizes.to(device))
    try:
        result = lost(feats.features, feats.grid_hw, feats.stride, sizes.to(device), k_patches,
                      tie_break=tie_break,
                      on_background="raise" if seed_in_background == "error" else "nan")
    except SeedInBackgroundError as err:
        raise SeedInBackgroundError([dataset.item_ids[batch[j]] for j in err.images]) from None
    boxes, seeds = result.boxes.cpu(), result.seeds.cpu().tolist()
    gt, valid = pad_boxes([dataset.boxes(i) for i in batch])
    ious = best_iou(boxes, gt, valid)
    hits = corloc_hits(ious)
    (grid_h, grid_w), (stride_y, stride_x) = feats.grid_hw, feats.stride
    rows = {}
    for j, i in enumerate(batch):
        xmin, ymin, xmax, ymax = boxes[j].tolist()
        rows[i] = dict(item=dataset.item_ids[i], xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax,
                       seed=seeds[j], seed_row=seeds[j] // grid_w, seed_col=seeds[j] % grid_w,
                       grid_h=grid_h, grid_w=grid_w, stride_y=stride_y, stride_x=stride_x,
                       image_h=int(sizes[j, 0]), image_w=int(sizes[j, 1]), n_gt=int(valid[j].sum()),
                       found=bool(torch.isfinite(boxes[j]).all()), iou=float(ious[j]),
                       corloc=float(hits[j]))
    return rows


@register_suite
class DiscoverySuite(Suite):
    name = "discovery"
    title = "RQ2: unsupervised object discovery with LOST, scored by CorLoc"
    Options = DiscoveryOptions
    section = ReportSection("rq2", "RQ2 — Unsupervised object discovery",
                            "Do the features of pruned models localise objects better without labels "
                            "(LOST, CorLoc)?", order=20)
    metrics = (
        Metric("corloc", "higher", "share of images whose LOST box overlaps an object with IoU ≥ 0.5",
               unit="fraction", figure="discovery"),
        Metric("iou", "higher", "overlap of the discovered box with the best-matching object",
               unit="IoU", figure="discovery"),
    )
    figures = (FigureSpec("discovery", "LOST object discovery vs sparsity per model (Cassano et al. "
                          "Fig. 5)", panels=("metric", "dataset"), lines=("group", "method")),)

    def __init__(self) -> None:
        self._datasets: dict[tuple, BoxDataset] = {}

    # ---- data --------------------------------------------------------------------------------
    def datasets(self, ctx: RunContext) -> list[BoxDataset]:
        """The box datasets the options name, one per VOC image set (built once per suite
        instance); the run's synthetic split alone without ``voc_root``."""
        opts: DiscoveryOptions = ctx.options
        if opts.voc_root is None:
            return [self._dataset(ctx, None)]
        return [self._dataset(ctx, image_set) for image_set in opts.image_sets]

    def dataset(self, ctx: RunContext) -> BoxDataset:
        """The first of :meth:`datasets` (the one whose boxes are drawn across levels)."""
        return self.datasets(ctx)[0]

    def _dataset(self, ctx: RunContext, image_set: str | None) -> BoxDataset:
        opts: DiscoveryOptions = ctx.options
        split = None if opts.voc_root is not None else opts.synthetic_split or ctx.data.eval_split
        key = (opts.voc_root, opts.voc_year, image_set, opts.no_hard, split)
        if key not in self._datasets:
            if opts.voc_root is not None:
                from prunelens.data.voc_annotations import VOCBoxes
                self._datasets[key] = VOCBoxes(opts.voc_root, opts.voc_year, image_set, opts.no_hard)
            else:
                self._datasets[key] = SyntheticBoxes(ctx.data.split(split))
        return self._datasets[key]

    @staticmethod
    def n_images(opts: DiscoveryOptions) -> int | None:
        if opts.n_images is not None:
            return opts.n_images
        return None if opts.voc_root is not None else SYNTHETIC_DEFAULT_IMAGES

    @staticmethod
    def condition(opts: DiscoveryOptions, image_set: str | None = None) -> str:
        """The records' condition: the VOC image set (the first by default), empty for synthetic data."""
        if opts.voc_root is None:
            return ""
        return (image_set or opts.image_sets[0]) + ("-no_hard" if opts.no_hard else "")

    @classmethod
    def check_data(cls, options: DiscoveryOptions) -> None:
        """VOC: ``voc_root`` holds a VOC<year>/Annotations folder and every image set's list."""
        if options.voc_root is None:
            return
        from prunelens.data.voc_annotations import resolve_voc_dir
        require_folder(cls, "voc_root", options.voc_root)
        try:
            voc, _ = resolve_voc_dir(options.voc_root, options.voc_year)
        except DataError as exc:
            raise data_folder_error(cls, "voc_root", str(exc)) from None
        missing = [s for s in options.image_sets if not (voc / "ImageSets" / "Main" / f"{s}.txt").is_file()]
        if missing:
            raise DataError(f"evaluate.{cls.name}.image_set: no list file for {', '.join(missing)} in "
                            f"{voc / 'ImageSets' / 'Main'}; VOC image sets are train, val, trainval "
                            "(and test for VOC2007)")

    def skip_reason(self, ctx: RunContext) -> str | None:
        if not ctx.spec.has_spatial_features:
            return f"LOST needs a spatial feature map; the '{ctx.spec.family}' architecture has none"
        opts: DiscoveryOptions = ctx.options
        if opts.voc_root is None:
            split = opts.synthetic_split or ctx.data.eval_split
            if split not in ctx.data.entry.splits:
                return (f"the run's dataset has no '{split}' split; set evaluate.discovery.synthetic_split "
                        f"to one of {', '.join(ctx.data.entry.splits)}")
            if not hasattr(ctx.data.split(split), "boxes"):
                return ("the run's dataset has no object boxes; give a Pascal VOC folder as "
                        "evaluate.discovery.voc_root")
        return None

    # ---- per level ---------------------------------------------------------------------------
    def evaluate_level(self, ctx: LevelContext) -> list[Record]:
        opts: DiscoveryOptions = ctx.options
        image_sets = opts.image_sets if opts.voc_root is not None else [None]
        frames, summaries, records = [], [], []
        for image_set, dataset in zip(image_sets, self.datasets(ctx)):
            condition = self.condition(opts, image_set)
            frame = discover(ctx.model, dataset, spec=ctx.spec, n_images=self.n_images(opts),
                             batch_size=ctx.batch_size, device=ctx.device, k_patches=opts.k_patches,
                             layernorm=opts.layernorm, tie_break=opts.tie_break,
                             seed_in_background=opts.seed_in_background)
            key = (ctx.pool.name, self.name, "corloc", "lost", dataset.name, condition,
                   ctx.level.index)  # the bootstrap of prunelens.stats.summarize for this number
            summary = summarize_corloc(frame["corloc"], frame["iou"], dataset.n_skipped,
                                       n_boot=ctx.config.evaluate.n_boot, key=key)
            summaries.append(dict(summary.as_dict(), dataset=dataset.name, condition=condition,
                                  n_seed_in_background=int((~frame["found"]).sum())))
            frames.append(frame.assign(condition=condition))
            common = dict(suite=self.name, method="lost", dataset=dataset.name, condition=condition)
            for item, hit, iou in zip(frame["item"], frame["corloc"], frame["iou"]):
                records.append(Record(metric="corloc", value=float(hit), item=item, **common))
                records.append(Record(metric="iou", value=float(iou), item=item, **common))
        folder = Path(ctx.level_artifacts)
        atomic_write_bytes(folder / BOXES_FILE, pd.concat(frames).to_csv(index=False).encode())
        level = dict(level=ctx.level.index, sparsity=ctx.level.sparsity,
                     options=opts.model_dump(mode="json"))
        # one image set: its summary at the top level; several: one entry per set
        atomic_write_json(folder / Layout.LEVEL_SUMMARY, {**summaries[0], **level} if len(summaries) == 1
                          else {**level, "image_sets": summaries})
        return records

    # ---- across levels -----------------------------------------------------------------------
    def after_levels(self, ctx: RunContext) -> None:
        opts: DiscoveryOptions = ctx.options
        if opts.figure_images == 0:
            return
        dataset = self.dataset(ctx)
        condition = self.condition(opts)
        indices = {lv.index for lv in ctx.pool.levels}
        # only levels measured on this data and still in the pool (the first image set's boxes)
        levels = [(summary, boxes) for summary, boxes in _saved_levels(Path(ctx.artifacts), condition)
                  if summary.get("dataset") == dataset.name and summary.get("level") in indices]
        if not levels:
            return
        if len(levels) > opts.figure_levels:
            keep = np.unique(np.linspace(0, len(levels) - 1, opts.figure_levels).round().astype(int))
            levels = [levels[i] for i in keep]
        png = boxes_figure(dataset, levels, opts.figure_images)
        atomic_write_bytes(Path(ctx.artifacts) / ACROSS_LEVELS_FILE, png)


def _saved_levels(folder: Path, condition: str) -> list[tuple[dict, pd.DataFrame]]:
    """(summary, boxes) of image set ``condition`` for every level evaluated under ``folder``, by
    level index (the summary carries the level's index and sparsity)."""
    out = []
    for level, summary_file in saved_per_level(folder, Layout.LEVEL_SUMMARY).items():
        boxes_file = summary_file.with_name(BOXES_FILE)
        if boxes_file.is_file():
            try:
                summary = json.loads(summary_file.read_text())
                boxes = pd.read_csv(boxes_file, dtype={"item": str, "condition": str})
            except (ValueError, RecursionError, pd.errors.ParserError) as exc:
                warnings.warn(f"{summary_file.parent} is damaged ({type(exc).__name__}): level {level} "
                              "is left out of the boxes figure; re-run `prunelens evaluate --suite "
                              "discovery --force` to write it again", stacklevel=2)
                continue
            summary = _set_summary(summary if isinstance(summary, dict) else {}, condition)
            if summary is None:
                continue
            if "condition" in boxes:  # written by a version that evaluates several image sets
                boxes = boxes[boxes["condition"].fillna("") == condition]
            out.append((summary, boxes))
    return out


def _set_summary(summary: dict, condition: str) -> dict | None:
    """One image set's summary from a level's summary.json (one set at the top level, several
    under ``image_sets``), with the level's index and sparsity; None when that set is not in it."""
    if "image_sets" not in summary:
        return summary if summary.get("condition", "") == condition else None
    found = [s for s in summary["image_sets"] if isinstance(s, dict) and s.get("condition") == condition]
    return {**found[0], "level": summary.get("level"), "sparsity": summary.get("sparsity")} if found else None


def boxes_figure(dataset: BoxDataset, levels: list[tuple[dict, pd.DataFrame]], n_images: int) -> bytes:
    """PNG: sample images (rows) × levels (columns); ground truth in green, LOST's box in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    position = {item: i for i, item in enumerate(dataset.item_ids)}
    common = set.intersection(*(set(frame["item"]) for _, frame in levels))
    items = [item for item in dataset.item_ids if item in common][:n_images]
    fig = Figure(figsize=(2.0 * len(levels), 2.0 * max(len(items), 1) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(items), 1), len(levels), squeeze=False)
    for col, (summary, frame) in enumerate(levels):
        rows = frame.set_index("item")
        sparsity = summary.get("sparsity")
        title = f"level {summary.get('level')}"
        if sparsity is not None:
            title += f" ({100 * sparsity:.0f}% pruned)"
        axes[0, col].set_title(f"{title}\nCorLoc {summary['corloc']:.2f}", fontsize=8)
        for row, item in enumerate(items):
            ax = axes[row, col]
            i = position[item]
            ax.imshow(dataset.image(i).permute(1, 2, 0).numpy())
            for gt in dataset.boxes(i).tolist():
                ax.add_patch(Rectangle((gt[0], gt[1]), gt[2] - gt[0], gt[3] - gt[1], fill=False,
                                       edgecolor="lime", linewidth=1.5))
            r = rows.loc[item]
            if bool(r["found"]) and not math.isnan(r["xmin"]):
                ax.add_patch(Rectangle((r["xmin"], r["ymin"]), r["xmax"] - r["xmin"],
                                       r["ymax"] - r["ymin"], fill=False, edgecolor="red",
                                       linewidth=1.5, linestyle="--", clip_on=False))
                ax.add_patch(Rectangle((r["seed_col"] * r["stride_x"], r["seed_row"] * r["stride_y"]),
                                       r["stride_x"], r["stride_y"], color="yellow", alpha=0.6))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(item, fontsize=7)
    fig.suptitle("LOST boxes (red, seed in yellow) vs ground truth (green)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
