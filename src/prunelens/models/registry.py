"""``create_model(name, num_classes, weights=None, **kw)`` over a registry of architectures.

Weights are a local file (safetensors, or a tensor-only ``.pth`` read with ``weights_only=True``)
or a torchvision weights name whose file is already in the torch hub cache: prunelens never
downloads anything.
"""
from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunelens._compat import torchvision
from prunelens.errors import ModelError
from prunelens.models import builtins
from prunelens.options import _union_members, strict_scalar_error

_TORCHVISION = ("resnet18", "resnet50", "vit_b_32", "swin_v2_t")
_BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "fcn": builtins.FCN,
    "lenet5": builtins.LeNet5,
    "small_resnet": builtins.SmallResNet,
    "small_vit": builtins.small_vit,
}


def list_models() -> list[str]:
    return sorted((*_TORCHVISION, *_BUILTINS))


def _builder(name: str) -> Callable[..., nn.Module]:
    if name in _BUILTINS:
        return _BUILTINS[name]
    if name in _TORCHVISION:
        return getattr(torchvision().models, name)
    raise ModelError(f"unknown model '{name}'; available: {', '.join(list_models())}")


def accepted_options(name: str) -> dict[str, inspect.Parameter] | None:
    """The options architecture ``name`` takes (its builder's parameters but ``num_classes``), or
    None where they cannot be listed (torchvision builders forward ``**kwargs``)."""
    if name in _TORCHVISION:
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
        kinds = set(_union_members(annotations.get(option)))
        if not kinds & {float, str} and kinds & {int, bool}:
            problem = strict_scalar_error(value, int in kinds, bool in kinds)
            if problem:
                raise ModelError(f"option '{option}' of model '{name}' {problem}")


def create_model(name: str, num_classes: int, weights: str | Path | None = None,
                 **options) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs, optionally loading ``weights``."""
    build = _builder(name)
    _check_options(name, build, options)
    try:
        model = build(num_classes=num_classes, **options)
    except (TypeError, ValueError, IndexError, RuntimeError) as exc:  # option values it cannot take
        raise ModelError(f"cannot build model '{name}' with options {options}: {exc}") from None
    if weights is not None:
        load_state_dict_strict(model, read_weights(name, weights), f"weights '{weights}'")
    return model


def read_weights(name: str, weights: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file or a cached torchvision weights entry."""
    path = Path(weights).expanduser()
    if not path.is_file():
        path = _cached_torchvision_weights(name, str(weights))
    return _read_state_dict_file(path)


def _cached_torchvision_weights(name: str, weights: str) -> Path:
    if name not in _TORCHVISION:
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
    except pickle.UnpicklingError:  # weights_only refused an object: never retried without it
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
