"""The paper's Figure 2: heatmaps of the same images across pruning levels.

Rows are (image, level) pairs — for each image, one row per level, labelled with the level's
sparsity and predicted class; columns are the image and each method's heatmap over it. Heatmaps are
drawn as saved by the interpretability suite (pooled, non-negative), each min-max scaled on its
own for display.
"""
from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prunelens.errors import ConfigError, DataError, PoolError
from prunelens.explain.pipeline import ATTRIBUTION_METHODS, applicable_methods, explain_batch
from prunelens.io import atomic_write_bytes, load_tensors

#: the file, in each level's artifacts folder of the interpretability suite, holding the heatmaps
#: of its first images (what this figure is drawn from)
HEATMAPS_FILE = "heatmaps.safetensors"



@dataclass
class FigureRow:
    image: torch.Tensor               # (3, H, W) uint8, or float in [0, 1]
    heatmaps: dict[str, torch.Tensor]  # method → (H, W) non-negative
    label: str


def draw_figure2(rows: Sequence[FigureRow], methods: Sequence[str], path: str | Path, *,
                 title: str | None = None, alpha: float = 0.55, cmap: str = "jet") -> Path:
    """Draw the grid (rows × [image, *methods]) and write it atomically as PNG to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise DataError("Figure 2 needs at least one row (a level with saved heatmaps)")
    ncols = 1 + len(methods)
    fig = Figure(figsize=(1.9 * ncols, 1.9 * len(rows) + (0.4 if title else 0)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        image = _as_hwc01(row.image)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(image)
            if c > 0 and methods[c - 1] in row.heatmaps:
                h = row.heatmaps[methods[c - 1]].detach().float().cpu()
                h = (h - h.min()) / (h.max() - h.min()).clamp(min=1e-12)
                ax.imshow(h.numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            if r == 0:
                ax.set_title("image" if c == 0 else _title(methods[c - 1]), fontsize=9)
        axes[r][0].set_ylabel(row.label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _title(method: str) -> str:
    known = ATTRIBUTION_METHODS.get(method)
    return known.title if known else method


def _as_hwc01(image: torch.Tensor):
    image = image.detach().cpu()
    image = image.float() / 255 if image.dtype == torch.uint8 else image.float().clamp(0, 1)
    return image.permute(1, 2, 0).numpy()


def _row_label(level, sparsity, prediction: int, class_names: Sequence[str]) -> str:
    name = class_names[prediction] if 0 <= prediction < len(class_names) else f"class {prediction}"
    try:
        sparse = f"{float(sparsity):.1%} sparse"
    except (TypeError, ValueError):
        sparse = ""
    return "\n".join(p for p in (f"level {level}", sparse, f"pred: {name}") if p)


def figure_from_artifacts(suite_dir: str | Path, out: str | Path, *, images: Sequence[str] | None = None,
                          methods: Sequence[str] | None = None, levels: Sequence[int] | None = None) -> Path:
    """Figure 2 from the heatmaps the interpretability suite saved in ``suite_dir/level_XX/``.

    ``images`` (item ids) default to every saved image, ``methods`` to every saved method,
    ``levels`` to every level with saved heatmaps.
    """
    from prunelens.runfolder import saved_per_level

    suite_dir = Path(suite_dir)
    files = saved_per_level(suite_dir, HEATMAPS_FILE)
    if not files:
        raise PoolError(f"no saved heatmaps ({HEATMAPS_FILE}) under {suite_dir}; run "
                        "`prunelens evaluate RUN_DIR --suite interpretability` first")
    saved = []
    for level, file in files.items():
        if levels is None or level in levels:
            saved.append((level, *_saved_heatmaps(file)))
    if not saved:
        raise PoolError(f"none of the levels {list(levels)} has saved heatmaps under {suite_dir}")
    methods = list(methods or saved[0][2]["methods"])
    wanted = list(images or saved[0][2]["item_ids"])
    rows = []
    for item in wanted:
        for level, tensors, meta in saved:
            ids = meta["item_ids"]
            if item not in ids:
                raise DataError(f"image '{item}' has no saved heatmaps at level {level} (saved: "
                                f"{', '.join(ids)}); use `prunelens explain` to compute others")
            i = ids.index(item)
            maps = {m: tensors[f"map/{m}"][i] for m in methods if f"map/{m}" in tensors}
            label = _row_label(level, meta["sparsity"], int(tensors["prediction"][i]), meta["class_names"])
            rows.append(FigureRow(tensors["image"][i], maps, f"{item}\n{label}"))
    return draw_figure2(rows, methods, out)


def _saved_heatmaps(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and decoded metadata of a level's heatmaps file, or a PoolError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        tensors = load_tensors(path)
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
        meta = {"methods": json.loads(raw["methods"]), "item_ids": json.loads(raw["item_ids"]),
                "class_names": json.loads(raw.get("class_names", "[]")), "sparsity": raw.get("sparsity")}
        for key in ("image", "prediction", *(f"map/{m}" for m in meta["methods"])):
            tensors[key]  # noqa: B018 - every part the figure draws is there
    except (OSError, ValueError, KeyError, RecursionError, SafetensorError) as exc:
        raise PoolError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:80]}): re-run `prunelens "
                        "evaluate RUN_DIR --suite interpretability --force` to write it again") from None
    return tensors, meta


def explain_levels(levels: Sequence, images01: torch.Tensor, item_ids: Sequence[str], *,
                   methods: Sequence[str] | None = None, device: str | torch.device = "cpu",
                   class_names: Sequence[str] = (), ig=None) -> tuple[list[FigureRow], list[str]]:
    """Rows of Figure 2 computed afresh: ``levels`` are pool levels (``.index``, ``.sparsity``,
    ``.load_model()``), ``images01`` (B, 3, H, W) in [0, 1]. Returns the rows and the methods drawn."""
    from prunelens.models import spec_for

    per_level = []
    drawn: list[str] | None = None
    for level in levels:
        model = level.load_model().to(device).eval()
        spec = spec_for(model)
        applicable = applicable_methods(model, spec)
        left_out = [m for m in methods or () if m not in applicable]
        if left_out and drawn is None:
            warnings.warn(f"attribution method(s) {', '.join(left_out)} do not apply to "
                          f"{type(model).__name__} (it applies: {', '.join(applicable)}): left out",
                          stacklevel=2)
        use = [m for m in (methods or applicable) if m in applicable]
        drawn = use if drawn is None else [m for m in drawn if m in use]
        result = explain_batch(model, spec.normalize(images01.to(device)), use, spec=spec, ig=ig)
        per_level.append((level, result))
    rows = []
    for i, item in enumerate(item_ids):
        for level, result in per_level:
            label = _row_label(level.index, level.sparsity, int(result.predictions[i]), class_names)
            rows.append(FigureRow(images01[i], {m: result.pooled(m)[i] for m in drawn},
                                  f"{item}\n{label}"))
    return rows, drawn or []


def explain_run(run_dir: str | Path, images: Sequence[str], out: str | Path | None = None, *,
                levels: Sequence[int] | None = None, methods: Sequence[str] | None = None,
                device: str = "cpu", voc_root: str | None = None, voc_split: str = "val",
                image_size: int = 224) -> Path:
    """``prunelens explain RUN_DIR --images …``: Figure 2 for the given images of the run's test split
    (item ids such as ``test-00003``) or, with ``voc_root``, VOC image ids."""
    from prunelens.data.provider import RunData
    from prunelens.data.segmentation import SyntheticSegmentation
    from prunelens.data.voc import VOCSegmentation
    from prunelens.runfolder import RunFolder

    from prunelens.pruning.train import resolve_device

    unknown = [m for m in methods or () if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise ConfigError(f"unknown attribution method(s) {', '.join(unknown)}: choose from "
                          f"{', '.join(ATTRIBUTION_METHODS)}")
    device = resolve_device(device)
    pool = RunFolder(run_dir)
    chosen = [lv for lv in pool.levels if levels is None or lv.index in levels]
    if not chosen:
        raise PoolError(f"run {run_dir} has no levels {list(levels or [])}")
    data = RunData(pool.config.data, pool.config.seed)
    segset = (VOCSegmentation(voc_root, voc_split, image_size=image_size) if voc_root
              else SyntheticSegmentation(data.split("test")))
    missing = [i for i in images if i not in segset.item_ids]
    if missing:
        raise DataError(f"unknown image id(s) {missing}; ids look like {segset.item_ids[0]!r}")
    batch = segset.batch([segset.item_ids.index(i) for i in images])
    rows, drawn = explain_levels(chosen, batch.images01(), batch.item_ids, methods=methods,
                                 device=device, class_names=[] if voc_root else data.class_names)
    out = Path(out) if out is not None else pool.layout.suite("interpretability") / "figure2_explain.png"
    return draw_figure2(rows, drawn, out, title=pool.name)
