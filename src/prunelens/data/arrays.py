"""Shared pieces of the array-file datasets (downsampled ImageNet, CIFAR, scikit-learn digits).

* :func:`safe_unpickle` — these datasets ship as Python pickles. A pickle can run any code when
  loaded, so they are read with an unpickler that only builds numpy arrays, lists, ints and strings
  and refuses every other object with a :class:`~prunelens.errors.DataError`.
* :class:`ArrayImages` — one split held as a uint8 tensor (N, C, H, W) plus labels.
* Task variants of Pellegrini & Biroli (2022, Sec. 5 "the role of data and tasks"):
  ``superclasses`` (original class ``c`` → ``c mod K``, a mapping file, or a map shipped in
  ``data/superclass_maps/`` by name, e.g. ``superclasses: imagenet_sifting10``) and ``data_ratio``
  (train on a fraction of the training set). Classes a map leaves out (id −1) are dropped.
"""
from __future__ import annotations

import codecs
import functools
import json
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prunelens.data.registry import DatasetOptions
from prunelens.errors import DataError


# ---- safe unpickling -----------------------------------------------------------------------------
def _latin1_encode(text, encoding="utf-8"):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``; only text codecs are allowed."""
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class _ArraysOnlyUnpickler(pickle.Unpickler):
    _allowed = None

    def find_class(self, module: str, name: str):
        if _ArraysOnlyUnpickler._allowed is None:
            _ArraysOnlyUnpickler._allowed = _allowed_globals()
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


def _to_text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def _check_value(path: Path, key: str, value) -> object:
    """Admit numpy arrays of numbers, and lists/ints/strings; decode bytes to str."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise DataError(f"{path}: key '{key}' holds an array of Python objects; prunelens only "
                            "reads numeric arrays from dataset batches (is this the right file?)")
        return value
    if isinstance(value, (bytes, str, int, np.integer)) and not isinstance(value, bool):
        return _to_text(value)
    if isinstance(value, list):
        items = [_to_text(v) for v in value]
        if not all(isinstance(v, (str, int, np.integer)) and not isinstance(v, bool) for v in items):
            kinds = sorted({type(v).__name__ for v in items})
            raise DataError(f"{path}: key '{key}' is a list of {', '.join(kinds)}; expected ints or "
                            "strings (is this the right file?)")
        return items
    raise DataError(f"{path}: key '{key}' holds a {type(value).__name__}; expected a numpy array, "
                    "a list, an int or a string (is this the right file?)")


def safe_unpickle(path: str | Path, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    """Read a pickled ``dict`` of arrays/lists/ints/strings from ``path`` without running code.

    Keys (bytes or str in the file) come back as str; ``required`` keys must all be present, and
    keys outside ``required`` ∪ ``optional`` are refused, as is any pickled object other than
    numpy arrays and built-in containers/numbers/strings.
    """
    path = Path(path)
    required, optional = set(required), set(optional)
    try:
        with open(path, "rb") as f:
            raw = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"dataset file {path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, ImportError) as exc:
        raise DataError(f"{path} is not a dataset batch prunelens can read safely: {exc}. These "
                        "files must be the original pickled dicts of numpy arrays, lists and "
                        "strings; anything else is refused") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} holds a pickled {type(raw).__name__}, not the dict of a dataset batch")
    names = [k for k in raw if not isinstance(k, (str, bytes))]
    if names:
        raise DataError(f"{path} has a key {names[0]!r} that is not a name (the keys of a dataset "
                        "batch are names such as 'data' and 'labels'): it is not an original batch "
                        "file; replace it with one")
    out = {_to_text(k): v for k, v in raw.items()}
    unexpected = sorted(set(out) - required - optional)
    missing = sorted(required - set(out))
    if unexpected or missing:
        what = "; ".join(p for p in (f"missing keys {missing}" if missing else "",
                                     f"unexpected keys {unexpected}" if unexpected else "") if p)
        raise DataError(f"{path} is not a batch of the expected format ({what}); expected keys "
                        f"{sorted(required)} (optionally {sorted(optional)})")
    return {k: _check_value(path, k, v) for k, v in out.items()}


def images_from_rows(path: Path, data: np.ndarray, channels: int = 3) -> torch.Tensor:
    """(N, C·H·W) uint8 rows in channel-row-column order → uint8 tensor (N, C, H, W)."""
    if data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {channels}·H·W), got "
                        f"{data.dtype} {tuple(data.shape)}")
    side = int(round((data.shape[1] / channels) ** 0.5))
    if channels * side * side != data.shape[1]:
        raise DataError(f"{path}: rows of {data.shape[1]} values are not {channels} square channels")
    return torch.from_numpy(np.ascontiguousarray(data)).view(-1, channels, side, side)


def labels_tensor(path: Path, labels, num_classes: int, offset: int = 0) -> torch.Tensor:
    """Labels (list or array) shifted by ``-offset`` and checked to lie in [0, num_classes)."""
    out = torch.as_tensor(np.asarray(labels, dtype=np.int64)) - offset
    if out.ndim != 1:
        raise DataError(f"{path}: labels must be a flat list, got shape {tuple(out.shape)}")
    if len(out) and (int(out.min()) < 0 or int(out.max()) >= num_classes):
        raise DataError(f"{path}: labels must lie in [{offset}, {num_classes - 1 + offset}], found "
                        f"[{int(out.min()) + offset}, {int(out.max()) + offset}]")
    return out


# ---- the dataset ---------------------------------------------------------------------------------
class ArrayImages(torch.utils.data.Dataset):
    """A split held in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,).

    ``dataset[i]`` is ``(image, label)`` with ``image`` float (C, H, W) in [0, 1].
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                 item_ids: list[str] | None = None, scale: float = 255.0) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self._item_ids = item_ids
        self.scale = float(scale)

    @property
    def item_ids(self) -> list[str]:
        if self._item_ids is None:
            self._item_ids = [str(i) for i in range(len(self.labels))]
        return self._item_ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float() / self.scale, int(self.labels[i])

    def subset(self, index: torch.Tensor) -> ArrayImages:
        ids = None if self._item_ids is None else [self._item_ids[i] for i in index.tolist()]
        return ArrayImages(self.images[index], self.labels[index], self.class_names, ids, self.scale)


# ---- task variants -------------------------------------------------------------------------------
#: shipped maps, data/superclass_maps/<name>.json: ``imagenet_mixed10`` (MadryLab robustness'
#: mixed_10 WordNet groups, 276 of the 1000 classes; tools/make_imagenet_superclasses.py) and
#: ``imagenet_sifting10`` (Pellegrini & Biroli's hand-made partition of all 1000 classes:
#: phiandark/SiftingFeatures inputs/classes.dat, used by inputs/10cl_meaning.ini:8 through
#: src/Data.py:62-68; tools/make_imagenet_sifting10.py)
SUPERCLASS_MAPS = ("imagenet_mixed10", "imagenet_sifting10")


@functools.lru_cache(maxsize=None)
def named_superclass_map(name: str) -> dict:
    """A shipped superclass map (its JSON: source, superclasses, one entry per original class)."""
    from importlib import resources
    if name not in SUPERCLASS_MAPS:
        raise DataError(f"no superclass map named '{name}'; shipped: {', '.join(SUPERCLASS_MAPS)}")
    return json.loads((resources.files("prunelens") / "data" / "superclass_maps" / f"{name}.json")
                      .read_text(encoding="utf-8"))


class Superclasses(BaseModel):
    """``{modulo: K}``: class c → c mod K; ``{file: path}``: one superclass id per original class
    (integers separated by commas and/or whitespace, e.g. the sifting paper's ``classes.dat``; −1
    leaves a class out); ``{name: imagenet_sifting10}`` (or just the name): a shipped map
    (:data:`SUPERCLASS_MAPS`)."""

    model_config = ConfigDict(extra="forbid")
    modulo: int | None = Field(None, ge=2)
    file: str | None = None
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _shipped(cls, name: str | None) -> str | None:
        if name is not None and name not in SUPERCLASS_MAPS:
            raise ValueError(f"no superclass map named '{name}'; shipped maps: {', '.join(SUPERCLASS_MAPS)} "
                             "(or give {file: path} with one id per class)")
        return name

    @model_validator(mode="after")
    def _exactly_one(self) -> Superclasses:
        if sum(v is not None for v in (self.modulo, self.file, self.name)) != 1:
            raise ValueError("give exactly one of 'modulo' (e.g. {modulo: 10}), 'file' "
                             "(a superclass id per original class) or 'name' (a shipped map)")
        return self


class TaskOptions(DatasetOptions):
    """Options shared by the array datasets."""

    superclasses: Superclasses | None = None
    data_ratio: float = Field(1.0, gt=0, le=1, description="fraction of the training split kept")


def _named_table(name: str, num_classes: int) -> tuple[torch.Tensor, list[str]]:
    shipped = named_superclass_map(name)
    classes = shipped["classes"]
    if len(classes) != num_classes:
        raise DataError(f"superclass map '{name}' covers the {len(classes)} classes of ImageNet in "
                        f"downsampled-ImageNet label order; this dataset has {num_classes} classes: "
                        "use it with imagenet32")
    table = torch.tensor([-1 if sup is None else int(sup) for _, _, sup in classes])
    return table, [s["name"] for s in shipped["superclasses"]]


def superclass_map(spec: Superclasses, num_classes: int) -> tuple[torch.Tensor, list[str]]:
    """Lookup table original class → superclass (−1: left out), and the superclass names."""
    if spec.name is not None:
        return _named_table(spec.name, num_classes)
    if spec.modulo is not None:
        if spec.modulo > num_classes:
            raise DataError(f"superclasses.modulo={spec.modulo} exceeds the {num_classes} classes "
                            "of the dataset")
        table = torch.arange(num_classes) % spec.modulo
        return table, [f"classes = {k} mod {spec.modulo}" for k in range(spec.modulo)]
    path = Path(spec.file).expanduser()
    if not path.is_file():
        raise DataError(f"superclasses.file {path} does not exist")
    text = path.read_text().replace(",", " ").split()
    try:
        values = [int(t) for t in text]
    except ValueError:
        bad = next(t for t in text if not t.lstrip("-").isdigit())
        raise DataError(f"superclasses.file {path}: '{bad}' is not an integer superclass id") from None
    if len(values) != num_classes:
        raise DataError(f"superclasses.file {path} lists {len(values)} superclass ids; the dataset "
                        f"has {num_classes} classes and needs one id per class")
    table = torch.tensor(values)
    if int(table.min()) < -1 or int(table.max()) < 0:
        raise DataError(f"superclasses.file {path}: superclass ids must be >= 0 (or -1 to leave a "
                        "class out), with at least one class kept")
    k = int(table.max()) + 1
    return table, [f"superclass {j}" for j in range(k)]


def apply_task(dataset: ArrayImages, options: TaskOptions, split: str, seed: int) -> ArrayImages:
    """Superclass relabelling (every split) and ``data_ratio`` subsampling (train split only)."""
    if options.superclasses is not None:
        table, names = superclass_map(options.superclasses, dataset.num_classes)
        kept = table[dataset.labels] >= 0
        if not bool(kept.all()):  # images of classes the map leaves out
            dataset = dataset.subset(torch.nonzero(kept).flatten())
        dataset = ArrayImages(dataset.images, table[dataset.labels], names, dataset._item_ids,
                              dataset.scale)
    if split == "train" and options.data_ratio < 1.0:
        keep = max(1, int(round(options.data_ratio * len(dataset))))
        g = torch.Generator().manual_seed(int(seed))
        index = torch.randperm(len(dataset), generator=g)[:keep].sort().values
        dataset = dataset.subset(index)
    return dataset


def first_n(dataset: ArrayImages, n: int | None) -> ArrayImages:
    """The first ``n`` samples (the ``n`` override suites use for small evaluations)."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    return dataset.subset(torch.arange(n))


def find_files(root: Path, pattern: str, what: str) -> list[Path]:
    """Files matching ``pattern`` in ``root`` or in its immediate subfolders."""
    if not root.is_dir():
        raise DataError(f"{what}: folder {root} (data.root) does not exist; point data.root at "
                        "the folder that holds the extracted files")
    found = sorted(root.glob(pattern)) or sorted(root.glob(f"*/{pattern}"))
    return [p for p in found if p.is_file()]
