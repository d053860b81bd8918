"""The base of every options model a user writes (config sections, dataset and suite options).

Unknown keys are errors, floats must be finite, and numbers and booleans are strict: YAML's
``true`` is not the number 1 and ``3.0`` is not an integer count, so ``train.epochs: true`` or
``train.lr: true`` is refused instead of silently becoming 1. Other types keep pydantic's usual
parsing (a float written ``1e-3``, which YAML reads as a string, is still a float).
"""
from __future__ import annotations

import collections.abc
import functools
import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator


#: the largest seed: numpy's and the datasets' generators take 32-bit seeds
MAX_SEED = 2**31 - 1
#: the most bootstrap resamples: beyond this the percentile intervals move by less than their
#: own rounding, and the time grows without bound
MAX_N_BOOT = 100_000

#: the suites' data-folder options that ``prunelens run``, ``evaluate`` and ``config`` also take as
#: a flag (:func:`data_root_flag`): option -> (the suites whose option it sets, what the folder
#: holds). Kept here, light to import, so the command line builds its flags without importing the
#: suites (tests/test_paper_run.py checks each is an option of those suites).
DATA_ROOTS = {
    "voc_root": (("interpretability", "discovery"),
                 "PASCAL VOC folder (VOCdevkit or VOC2012/VOC2007) for the interpretability and "
                 "discovery suites"),
    "mvh_root": (("alignment",), "model-vs-human datasets folder for the alignment suite"),
}


#: the controls a pool can be (``prune.control``, ``prunelens prune --control``): random masks with
#: each layer's sparsity of the source's level, or the source's masks on fresh initial weights
CONTROLS = ("random_mask", "random_reinit")


def data_root_flag(option: str) -> str:
    """The command-line flag of a data-folder option (``voc_root`` → ``--voc-root``)."""
    return "--" + option.replace("_", "-")


@functools.lru_cache(maxsize=None)
def _strict_kinds(cls: type[BaseModel]) -> dict[str, tuple[bool, bool, bool, bool]]:
    """Field name -> (takes an int, takes a bool, takes a float, is a list of them) for fields
    whose type is int, float or bool (or an optional one, or a list or tuple of one) and not also
    str."""
    out = {}
    for name, field in cls.model_fields.items():
        members = _union_members(field.annotation)
        elements = [e for m in members if typing.get_origin(m) in _SEQUENCES
                    for e in typing.get_args(m) if e is not Ellipsis]
        args = set(members) | {m for e in elements for m in _union_members(e)}
        if str in args:
            continue
        takes_int, takes_bool, takes_float = int in args, bool in args, float in args
        if takes_int or takes_bool or takes_float:
            out[name] = (takes_int, takes_bool, takes_float, bool(elements))
    return out


_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _union_members(annotation) -> tuple:
    if typing.get_origin(annotation) is typing.Annotated:
        return _union_members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(m for a in typing.get_args(annotation) for m in _union_members(a))
    return (annotation,)


def strict_scalar_error(value: Any, takes_int: bool, takes_bool: bool,
                        takes_float: bool = False) -> str | None:
    """Why ``value`` is not acceptable for an int/float/bool field (None when it is). A float field
    takes any number but a boolean (and what pydantic parses, such as the text ``1e-3``)."""
    if value is None or (takes_bool and isinstance(value, bool)):
        return None
    if takes_int and isinstance(value, int) and not isinstance(value, bool):
        return None
    if takes_float and not isinstance(value, bool):
        return None
    wanted = " or ".join(w for w, on in (("a whole number", takes_int and not takes_float),
                                         ("a number", takes_float), ("true or false", takes_bool)) if on)
    return f"must be {wanted}, not {value!r}"


class Options(BaseModel):
    """Strict options: unknown keys, non-finite floats and loose ints/bools are errors.

    ``RENAMED`` lists keys a later version renamed (old → new keys): a config that still uses the
    old name is told the new one; a config stored by an earlier version is read with
    :meth:`migrated`.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: what else a user of a renamed key must know (appended to the message)
    RENAME_NOTES: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for old, new in cls.RENAMED.items():
                if old in raw:
                    raise ValueError(f"'{old}' is now {' and '.join(map(repr, new))}: rename the key"
                                     f"{cls.RENAME_NOTES.get(old, '')}")
        return raw

    @classmethod
    def migrated(cls, raw: dict) -> dict:
        """``raw`` with every renamed key under its new name(s) (for configs an earlier version
        stored)."""
        out = dict(raw)
        for old, new in cls.RENAMED.items():
            if old in out:
                value = out.pop(old)
                for key in new:
                    out.setdefault(key, value)
        return out

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = _strict_kinds(cls).get(info.field_name)
        if not kinds:
            return value
        *scalar, sequence = kinds
        items = value if sequence and isinstance(value, (list, tuple)) else [value]
        for item in items:
            problem = strict_scalar_error(item, *scalar)
            if problem:
                raise ValueError(problem if len(items) == 1 and item is value else f"each item {problem}")
        return value
