"""The architectures: one registry entry each (how to build it, the class its models are, its
spec), ``create_model(name, num_classes, weights=None, **kw)`` and ``spec_for(model)``.

Weights are a local file (safetensors, or a tensor-only ``.pth`` read with ``weights_only=True``)
or a torchvision weights name whose file is already in the torch hub cache: prunelens never
downloads anything. Adding an architecture: a spec in :mod:`prunelens.models.spec` (if no family's
fits) and one :class:`Architecture` entry here (``docs/architecture.md``).
"""
from __future__ import annotations

import inspect
import pickle
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelens._compat import torchvision
from prunelens.errors import ModelError
from prunelens.models import builtins, timm_models
from prunelens.models.spec import ArchSpec, FCNSpec, LeNetSpec, ResNetSpec, SwinSpec, ViTSpec
from prunelens.options import _union_members, strict_scalar_error


@dataclass(frozen=True)
class Architecture:
    """A registry entry: ``builder()`` gives the function that builds a model (its parameters but
    ``num_classes`` are the config's model options), ``model_class()`` the class its models are
    instances of, ``spec`` the spec of its family. torchvision's builders forward ``**kwargs`` to
    their class, so their options cannot be listed (``torchvision=True``)."""

    name: str
    builder: Callable[[], Callable[..., nn.Module]]
    model_class: Callable[[], type]
    spec: type[ArchSpec]
    torchvision: bool = False


def _tv(attribute: str) -> Callable[[], object]:
    return lambda: getattr(torchvision().models, attribute)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("resnet18", _tv("resnet18"), _tv("ResNet"), ResNetSpec, torchvision=True),
    Architecture("resnet50", _tv("resnet50"), _tv("ResNet"), ResNetSpec, torchvision=True),
    Architecture("vit_b_32", _tv("vit_b_32"), _tv("VisionTransformer"), ViTSpec, torchvision=True),
    Architecture("swin_v2_t", _tv("swin_v2_t"), _tv("SwinTransformer"), SwinSpec, torchvision=True),
    Architecture("fcn", lambda: builtins.FCN, lambda: builtins.FCN, FCNSpec),
    Architecture("lenet5", lambda: builtins.LeNet5, lambda: builtins.LeNet5, LeNetSpec),
    Architecture("small_resnet", lambda: builtins.SmallResNet, lambda: builtins.SmallResNet, ResNetSpec),
    Architecture("small_vit", lambda: builtins.small_vit, _tv("VisionTransformer"), ViTSpec),
)}


def list_models() -> list[str]:
    """The registered architectures (besides them, any timm model as ``timm:<name>``)."""
    return sorted(ARCHITECTURES)


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown model '{name}'; available: {', '.join(list_models())}, or any "
                         "timm model as timm:<name>")
    return ARCHITECTURES[name]


def _builder(name: str) -> Callable[..., nn.Module]:
    if timm_models.is_timm_name(name):
        timm_models.timm_name(name)  # timm installed, and the name is one of its models
        return lambda num_classes, **options: timm_models.build(name, num_classes, **options)
    return architecture(name).builder()


def spec_of(name: str, options: dict | None = None) -> ArchSpec:
    """The spec of architecture ``name`` (no model needed; a timm model's spec is read from a
    model built with ``options`` on the meta device)."""
    if timm_models.is_timm_name(name):
        return timm_models.spec_of_name(name, options)
    return architecture(name).spec()


def spec_for(model: nn.Module, generic: bool = False) -> ArchSpec:
    """The spec of a model's architecture (DDP/compiled wrappers are looked through). A model of no
    registered architecture gets the base :class:`ArchSpec` (plain Conv/Linear stacks) with
    ``generic``, else a ModelError."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner) if type(inner).__name__ == "DistributedDataParallel" else inner
    if timm_models.is_timm_model(inner):
        return timm_models.TimmSpec(inner)
    for entry in ARCHITECTURES.values():
        if isinstance(inner, entry.model_class()):
            return entry.spec()
    if generic:
        return ArchSpec()
    raise ModelError(f"prunelens has no architecture spec for {type(inner).__name__}; add a registry "
                     "entry in prunelens/models/registry.py (docs/architecture.md)")


def accepted_options(name: str) -> dict[str, inspect.Parameter] | None:
    """The options architecture ``name`` takes (its builder's parameters but ``num_classes``), or
    None where they cannot be listed (torchvision builders forward ``**kwargs``; timm's
    ``create_model`` forwards them to the model's class)."""
    if timm_models.is_timm_name(name) or architecture(name).torchvision:
        return None
    params = inspect.signature(_builder(name)).parameters
    return {p: v for p, v in params.items() if p != "num_classes"}


def option_defaults(name: str) -> dict:
    """The default value of every option of architecture ``name`` that has one (none for
    torchvision's, whose defaults live in their classes)."""
    try:
        accepted = accepted_options(name) or {}
    except ModelError:
        return {}
    return {p: v.default for p, v in accepted.items() if v.default is not inspect.Parameter.empty}


def _check_options(name: str, build: Callable[..., nn.Module], options: dict) -> None:
    accepted = accepted_options(name)
    if accepted is None:
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ModelError(f"model '{name}' has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(accepted)}")
    annotations = {p: v.annotation for p, v in inspect.signature(build, eval_str=True).parameters.items()}
    for option, value in options.items():
        annotation = annotations.get(option)
        if typing.get_origin(annotation) is typing.Literal:
            allowed = typing.get_args(annotation)
            if value not in allowed:
                raise ModelError(f"option '{option}' of model '{name}' must be one of "
                                 f"{', '.join(map(repr, allowed))}, not {value!r}")
            continue
        kinds = set(_union_members(annotation))
        if str not in kinds and kinds & {int, bool, float}:
            problem = strict_scalar_error(value, int in kinds, bool in kinds, float in kinds)
            if problem:
                raise ModelError(f"option '{option}' of model '{name}' {problem}")


def create_model(name: str, num_classes: int, weights: str | Path | None = None,
                 **options) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs, optionally loading ``weights``."""
    build = _builder(name)
    _check_options(name, build, options)
    try:
        model = build(num_classes=num_classes, **options)
    except (TypeError, ValueError, IndexError, RuntimeError, AssertionError) as exc:  # option values it cannot take
        raise ModelError(f"cannot build model '{name}' with options {options}: {exc}") from None
    if weights is not None:
        load_state_dict_strict(model, read_weights(name, weights), f"weights '{weights}'")
    return model


def read_weights(name: str, weights: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file or a cached torchvision weights entry."""
    path = Path(weights).expanduser()
    if timm_models.is_timm_name(name) and not path.is_file():
        if str(weights) != timm_models.TIMM_WEIGHTS:
            raise ModelError(f"weights '{weights}' of model '{name}' is neither an existing file nor "
                             f"'{timm_models.TIMM_WEIGHTS}' (timm's pretrained weights, from the local "
                             "Hugging Face cache)")
        path = timm_models.cached_weights(name)
    elif not path.is_file():
        path = _cached_torchvision_weights(name, str(weights))
    return _read_state_dict_file(path)


def _cached_torchvision_weights(name: str, weights: str) -> Path:
    if not architecture(name).torchvision:
        raise ModelError(f"weights file '{weights}' does not exist")
    enum = torchvision().models.get_model_weights(name)
    entry_name = weights.split(".")[-1]
    available = [w.name for w in enum] + ["DEFAULT"]
    if entry_name not in available:
        raise ModelError(f"weights '{weights}' is neither an existing file nor a torchvision weights "
                         f"name for {name} (available: {', '.join(available)})")
    entry = enum[entry_name] if entry_name != "DEFAULT" else enum.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    if not cached.is_file():
        raise ModelError(f"weights {enum.__name__}.{entry.name} are not on this machine and prunelens "
                         f"never downloads them: put the file from {entry.url} at {cached}, "
                         "or give a local file path as weights")
    return cached


def _read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # no object refused: not a torch file at all
            raise ModelError(f"cannot read weights file {path}: it is not a safetensors or torch "
                             "file, or it is damaged: give a safetensors file or a tensor-only "
                             ".pth") from None
        # weights_only refused an object: never retried without it
        raise ModelError(f"weights file {path} holds pickled Python objects besides tensors, which "
                         "prunelens never loads: save its state dict as safetensors (or a tensor-only "
                         ".pth) where it was made, and give that file") from None
    except Exception as exc:  # corrupt file: the user's to fix
        raise ModelError(f"cannot read weights file {path} ({_first_line(exc)}): give a safetensors "
                         "file or a tensor-only .pth") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with a message that names the mismatching keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise ModelError(f"{what} do not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
