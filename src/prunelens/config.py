"""Typed configs: YAML (``yaml.safe_load``) → validated pydantic models, ``--set`` overrides.

A config file describes one run, or several that share settings::

    seed: 0
    data: {name: synthetic}
    runs:                      # optional: each entry overrides the shared settings
      - {name: demo-cnn, model: {name: small_resnet}}
      - {name: demo-vit, model: {name: small_vit}, train: {optimizer: adamw, lr: 0.001}}

Every mistake a user can make (unknown key, wrong type, out-of-range value) becomes one
:class:`~prunelens.errors.ConfigError` naming the key, e.g. ``prune.rate: must be < 1 (got 1.5)``.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from prunelens.errors import ConfigError, PrunelensError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """``name`` from the registry; further keys are the architecture's options (e.g. ``widths``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "small_resnet"
    num_classes: int | None = Field(None, ge=1, description="default: the dataset's")
    weights: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(Section):
    """``name`` from the dataset registry; further keys are that dataset's options."""

    model_config = ConfigDict(extra="allow")
    name: str = "synthetic"

    @property
    def options(self):
        from prunelens.data.registry import dataset_entry
        return validate_section(dataset_entry(self.name).options, self.model_extra or {}, "data")


def _device(name: str) -> str:
    from prunelens.pruning.train import parse_device
    if name != "auto":
        try:
            parse_device(name)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return name


#: "auto" or a torch device string (availability is checked when the device is used)
Device = Annotated[str, AfterValidator(_device)]


class TrainConfig(Section):
    """How a level is trained. The recipe options carry the names of torchvision's
    ``references/classification/train.py`` arguments (``--clip-grad-norm`` → ``clip_grad_norm``)
    and mean what they mean there; see :mod:`prunelens.pruning.recipe`."""

    #: keys renamed to torchvision's names: old → new
    RENAMED: ClassVar[dict[str, str]] = {"grad_clip": "clip_grad_norm", "warmup_epochs": "lr_warmup_epochs"}

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1, description="the global batch: split over ranks under torchrun")
    eval_batch_size: int = Field(256, ge=1, description="per rank")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    norm_weight_decay: float | None = Field(None, ge=0, description=(
        "weight decay of normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, LRN); "
        "default: weight_decay"))
    bias_weight_decay: float | None = Field(None, ge=0, description=(
        "weight decay of every parameter named 'bias'; default: that of its layer"))
    transformer_embedding_decay: float | None = Field(None, ge=0, description=(
        "weight decay of the parameters torchvision's reference calls transformer embeddings "
        "(the architecture spec lists them); default: weight_decay"))
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="epochs, for schedule: step")
    gamma: float = Field(0.1, gt=0, le=1)
    lr_min: float = Field(0.0, ge=0, description="schedule cosine: the rate it anneals to (eta_min)")
    lr_warmup_epochs: float = Field(0, ge=0, description="epochs of warm-up before the schedule")
    lr_warmup_method: Literal["linear", "constant"] = Field("constant", description=(
        "linear: the rate rises from lr_warmup_decay × lr to lr; constant: lr_warmup_decay × lr "
        "throughout the warm-up"))
    lr_warmup_decay: float = Field(0.01, gt=0, le=1, description="the warm-up's starting factor of lr")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0, description="MixUp's Beta(α, α) on training batches; 0: off")
    cutmix_alpha: float = Field(0.0, ge=0, description=(
        "CutMix's Beta(α, α) on training batches; 0: off. With both on, each batch takes one of them "
        "at random"))
    clip_grad_norm: float | None = Field(None, gt=0, description="maximum gradient norm")
    model_ema: bool = Field(False, description=(
        "the level is the exponential moving average of the weights (as torchvision's --model-ema)"))
    model_ema_steps: int = Field(32, ge=1, description="steps between two updates of the average")
    model_ema_decay: float = Field(0.99998, gt=0, lt=1, description=(
        "decay per update, before torchvision's adjustment by batch size, model_ema_steps and epochs"))
    ra_sampler: bool = Field(False, description=(
        "repeated augmentation: each image ra_reps times per epoch (DeiT / torchvision's RASampler)"))
    ra_reps: int = Field(3, ge=1, description="repetitions of each image with ra_sampler")
    max_steps_per_epoch: int | None = Field(None, ge=1)
    device: Device = "auto"
    amp: bool = Field(False, description="bf16 autocast (GPU)")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model afresh for every level (CUDA only)")
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for old, new in cls.RENAMED.items():
                if old in raw:
                    raise ValueError(f"'{old}' is now '{new}' (torchvision's name): rename the key")
        return raw


class PruneConfig(Section):
    scope: Literal["global", "layerwise"] = "global"
    rate: float = Field(0.2, gt=0, lt=1, description="fraction of the remaining weights per round")
    max_sparsity: float = Field(0.95, gt=0, lt=1)
    rounds: int | None = Field(None, ge=1)
    schedule: Literal["gradual", "one_shot"] = "gradual"
    retrain: Literal["lrr", "rewind", "finetune"] = "lrr"
    epochs: int | None = Field(None, ge=0, description=(
        "retraining epochs per round (lrr, finetune; default train.epochs); rewind replays the "
        "dense schedule from rewind_step instead"))
    rewind_step: int = Field(0, ge=0, description="retrain: rewind resets weights to this step")
    finetune_lr: float = Field(1e-3, gt=0)
    exclude_first_layer: bool = False
    exclude_classifier: bool = False
    exclude_attention: bool = False
    exclude: list[str] = Field(default_factory=list, description="fnmatch patterns of parameter names")
    min_alive_units: float = Field(0.2, ge=0, lt=1, description=(
        "stop when some layer has fewer than this fraction of units with an incoming connection"))

    @model_validator(mode="after")
    def _one_shot_budget(self) -> PruneConfig:
        if self.schedule == "one_shot" and self.retrain == "rewind":
            raise ValueError("schedule one_shot retrains with the gradual schedule's epoch budget, "
                             "which rewinding (a replay from rewind_step) cannot match: use retrain "
                             "lrr or finetune")
        return self


class EvaluateConfig(Section):
    """``suites`` to run by default; further keys are per-suite options (``interpretability: {…}``)."""

    model_config = ConfigDict(extra="allow")
    suites: list[str] | None = Field(None, description="default: every suite that applies")
    device: Device = "auto"
    batch_size: int = Field(64, ge=1)
    amp: bool = Field(False, description="bf16 autocast in the attribution passes (GPU)")
    channels_last: bool = Field(False, description="channels-last model and images in the attribution passes")
    n_boot: int = Field(1000, ge=100)

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, suites: list[str] | None) -> list[str] | None:
        from prunelens.evaluate import available_suites
        unknown = [s for s in suites or [] if s not in available_suites()]
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; available: {', '.join(available_suites())}")
        return suites

    def suite_options(self, suite: str):
        from prunelens.evaluate import get_suite
        return validate_section(get_suite(suite).Options, (self.model_extra or {}).get(suite) or {},
                                f"evaluate.{suite}")


class RunConfig(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _check_sections(self) -> RunConfig:
        from prunelens.models.registry import _builder, _check_options
        self.data.options  # noqa: B018 - validates the dataset's options
        try:
            _check_options(self.model.name, _builder(self.model.name), self.model.options)
        except PrunelensError as exc:
            raise ConfigError(f"model: {exc}") from None
        for suite in set(self.evaluate.model_extra or {}):
            self.evaluate.suite_options(suite)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def pool_dict(self) -> dict[str, Any]:
        """The settings that determine the pool (hashed; evaluation and runtime settings excluded)."""
        d = self.model_dump(mode="json")
        for key in ("name", "output_dir", "evaluate"):
            d.pop(key)
        d["data"].pop("root", None)  # where the dataset lies is not what it is
        for key in ("device", "num_workers", "eval_batch_size", "compile"):
            d["train"].pop(key)
        return d

    def pool_hash(self) -> str:
        blob = json.dumps(self.pool_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- validation with messages that name the key --------------------------------------------------
def _describe(err: dict, prefix: str, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    where = ".".join(p for p in (prefix, loc) if p)
    if err["type"] == "extra_forbidden":
        parent: Any = model
        for part in err["loc"][:-1]:
            field = getattr(parent, "model_fields", {}).get(part)
            parent = field.annotation if field is not None else None
        choices = list(getattr(parent, "model_fields", {}))
        hint = difflib.get_close_matches(str(err["loc"][-1]), choices, n=1)
        more = f" (did you mean '{hint[0]}'?)" if hint else (f"; known keys: {', '.join(choices)}" if choices else "")
        return f"unknown key '{where}'{more}"
    got = err.get("input")
    got_s = "" if isinstance(got, dict) or repr(got) in err["msg"] else f" (got {got!r})"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}{got_s}"


def validate_section(model: type[BaseModel], raw: dict, prefix: str = ""):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {raw!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], prefix, model)) from None


# ---- files and overrides --------------------------------------------------------------------------
def default_config_path() -> Path:
    return Path(str(resources.files("prunelens") / "configs" / "default.yaml"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML: "
                          f"{getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. prune.rate=0.3), got '{text}'")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return raw


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_runs(raw: dict, overrides: list[str] | None = None) -> list[RunConfig]:
    """Validated run configs of a raw config mapping (one, or one per entry of ``runs``)."""
    base = {k: v for k, v in raw.items() if k != "runs"}
    runs = raw.get("runs")
    if runs is None:
        entries = [base]
    elif isinstance(runs, list) and runs and all(isinstance(r, dict) for r in runs):
        entries = [deep_merge(base, r) for r in runs]
    else:
        raise ConfigError("runs: expected a non-empty list of mappings (one per run)")
    configs = [validate_section(RunConfig, apply_overrides(e, overrides or [])) for e in entries]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"runs: run names must differ, got {names}")
    return configs


def load_configs(path: str | Path | None = None, overrides: list[str] | None = None) -> list[RunConfig]:
    """Load a config file (the embedded default when ``path`` is None)."""
    return resolve_runs(read_yaml(path if path is not None else default_config_path()), overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    configs = load_configs(path, overrides)
    if len(configs) != 1:
        raise ConfigError(f"{path} describes {len(configs)} runs; this command takes one")
    return configs[0]
