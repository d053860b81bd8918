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

import torch
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from prunelens.errors import ConfigError, PrunelensError
from prunelens.options import CONTROLS, MAX_N_BOOT, MAX_SEED, Options

#: run names (and every name read back from a run folder): no path separators, no leading dot
#: (matched whole: ``re.fullmatch``, so a trailing newline is not a name either)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"



class Section(Options):
    model_config = ConfigDict(validate_assignment=True)


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


def parse_device(name: str) -> torch.device:
    """A torch device from its name, or a ConfigError naming the accepted forms."""
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"'{name}' is not a device: use auto, cpu, cuda or cuda:N") from None


def _device(name: str) -> str:
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

    #: keys renamed to torchvision's names (prunelens 0.2): old → new
    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {"grad_clip": ("clip_grad_norm",),
                                                      "warmup_epochs": ("lr_warmup_epochs",)}

    RENAME_NOTES: ClassVar[dict[str, str]] = {"warmup_epochs": (
        " (the earlier ramp was linear: set lr_warmup_method: linear too; torchvision's default, "
        "and prunelens', is constant)")}

    @classmethod
    def migrated(cls, raw: dict) -> dict:
        """Renamed keys migrated; an earlier version's warm-up was a linear ramp, so a stored
        ``warmup_epochs`` > 0 keeps a linear one (now torchvision's, from ``lr_warmup_decay`` × lr)."""
        out = super().migrated(raw)
        if raw.get("warmup_epochs") and "lr_warmup_method" not in raw:
            out["lr_warmup_method"] = "linear"
        return out

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
    sampler: Literal["shuffle", "with_replacement"] = Field("shuffle", description=(
        "shuffle: each epoch a fresh permutation of the training set; with_replacement: every step "
        "draws its batch_size images uniformly with replacement, as numpy's "
        "RandomState.choice(n, batch_size) (Pellegrini & Biroli's Data.py:72-79); an epoch is then "
        "a count of steps (len(train) // batch_size, or max_steps_per_epoch)"))
    validate_every: int | None = Field(None, ge=1, description=(
        "evaluate every this many steps during training (step 0 and the level's last step "
        "included) on the first validate_images of validate_split; the level records the error "
        "curve and its minimum (Pellegrini & Biroli's level error, IMP.py:146-169); default: "
        "only the end-of-level evaluation"))
    validate_split: Literal["val", "test"] = Field("val", description=(
        "the split validate_every evaluates on"))
    validate_images: int | None = Field(None, ge=1, description=(
        "validate_every uses the first this many images of validate_split; default: all"))
    device: Device = "auto"
    amp: bool = Field(False, description="bf16 autocast (GPU)")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model afresh for every level (CUDA only)")
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_sampler(self) -> TrainConfig:
        if self.sampler == "with_replacement" and self.ra_sampler:
            raise ValueError("train.sampler with_replacement draws every batch on its own; "
                             "ra_sampler orders an epoch: choose one")
        if self.validate_every is None and (self.validate_images is not None
                                            or self.validate_split != "val"):
            raise ValueError("train.validate_split and validate_images say what validate_every "
                             "evaluates on: set validate_every (steps) too")
        return self


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
    target: Literal["of_alive", "cumulative"] = Field("of_alive", description=(
        "of_alive: each round removes round(rate × alive weights); cumulative: after k rounds "
        "floor(r_k × N) of each scope's N entries are cut, r_k = r_(k-1) + rate (1 - r_(k-1)), "
        "at the magnitude of the floor(r_k N)-th smallest (pruned entries counting 0), ties kept "
        "(Pellegrini & Biroli's IMP.py:182, Utils.py:60-69)"))
    biases: bool = Field(False, description=(
        "prune the biases of the pruned layers too, each ranked with its layer's weights "
        "(Utils.py:58-70); the stop rule still counts units by their incoming weights"))
    rewind_replay: Literal["rest", "full"] = Field("rest", description=(
        "retrain rewind: rest trains from rewind_step to the end of the dense schedule (Frankle et "
        "al. 2020); full trains the dense schedule's whole step count again from the rewound "
        "weights (IMP.py:136-146)"))
    rewind_buffers: Literal["restore", "reset"] = Field("restore", description=(
        "retrain rewind: restore the buffers (batch-norm running statistics) saved at rewind_step "
        "with the weights; or reset them to their initial values, as Pellegrini & Biroli's "
        "IMP.py:136-144 does (the running averages then start again from the first batch)"))
    stop_when: Literal["below", "not_above"] = Field("below", description=(
        "below: stop when a layer's fraction of connected units is < min_alive_units; "
        "not_above: when it is <= (IMP.py:128 goes on while it is > stop_ratio)"))
    stop_layers: Literal["all", "authors"] = Field("all", description=(
        "the layers min_alive_units counts: all pruned ones; or as IMP.py:87 indexes them, layer "
        "l-1 of each pruned layer l (cyclically: with the output layer unpruned, the last pruned "
        "layer is never counted)"))
    control: Literal[CONTROLS] | None = Field(None, description=(
        "build a control of the pool at control_source instead of pruning: random_mask — random "
        "masks with each layer's sparsity of the source's level; random_reinit — the source's masks "
        "with fresh initial weights; each retrained like the level"))
    control_source: str | None = Field(None, description=(
        "the source pool's run folder (a plain name: a run in output_dir); every other setting must "
        "equal the source's"))
    dense_source: str | None = Field(None, description=(
        "start from the dense level 0 of this pool's run folder (a plain name: a run in output_dir) "
        "instead of training one: its verified files are copied; every setting that decides "
        "level 0 must equal the source's. compare-schedules sets it on its one-shot pools"))
    init_sparsity: float = Field(0.0, ge=0, lt=1, description=(
        "level 0 trains under a random mask: each prunable weight dropped independently with this "
        "probability (biases kept, also with prune.biases), and target cumulative starts its ratio "
        "here (Pellegrini & Biroli's init_sparsity, SiftingFeatures Utils.py:93-101, IMP.py:58, "
        "88-89); 0: a dense level 0"))

    @model_validator(mode="after")
    def _one_shot_budget(self) -> PruneConfig:
        if (self.control is None) != (self.control_source is None):
            raise ValueError("prune.control and prune.control_source go together: the control kind "
                             "and the run folder of the pool it controls")
        if self.target == "cumulative" and self.schedule == "one_shot":
            raise ValueError("prune.target cumulative counts rounds: it applies to schedule gradual")
        if self.retrain != "rewind" and (self.rewind_replay, self.rewind_buffers) != ("rest", "restore"):
            raise ValueError("prune.rewind_replay and rewind_buffers say how a level is rewound: "
                             "set retrain rewind")
        if self.init_sparsity > 0:
            self._check_init_sparsity()
        if self.schedule == "one_shot" and self.retrain == "rewind":
            raise ValueError("schedule one_shot retrains with the gradual schedule's epoch budget, "
                             "which rewinding (a replay from rewind_step) cannot match: use retrain "
                             "lrr or finetune")
        return self


    def _check_init_sparsity(self) -> None:
        """The combinations where a random level-0 mask has no meaning."""
        p = self.init_sparsity
        if self.control is not None:
            raise ValueError(f"prune.init_sparsity {p} with prune.control: a control takes its masks "
                             "from its source's levels; build controls of a pool without init_sparsity")
        if self.dense_source is not None:
            raise ValueError(f"prune.init_sparsity {p} with prune.dense_source: level 0 is copied from "
                             "the source, not trained under a random mask; set one or the other")
        if self.schedule == "one_shot":
            raise ValueError(f"prune.init_sparsity {p} with schedule one_shot: one-shot prunes the "
                             "dense level 0 to its target in one step; use schedule gradual")
        if p >= self.max_sparsity:
            raise ValueError(f"prune.init_sparsity {p} is not below prune.max_sparsity "
                             f"{self.max_sparsity}: no level could be pruned after level 0")


class EvaluateConfig(Section):
    """``suites`` to run by default; further keys are per-suite options (``interpretability: {…}``),
    checked against the suites' own options by :func:`prunelens.suite.check_evaluate`."""

    model_config = ConfigDict(extra="allow")
    suites: list[str] | None = Field(None, description="default: every suite that applies")
    device: Device = "auto"
    batch_size: int = Field(64, ge=1)
    num_workers: int | None = Field(None, ge=0, description=(
        "loader processes of the suites; default: train.num_workers of the run"))
    amp: bool = Field(False, description="bf16 autocast in the attribution passes (GPU)")
    channels_last: bool = Field(False, description="channels-last model and images in the attribution passes")
    n_boot: int = Field(1000, ge=100, description=f"at most {MAX_N_BOOT} in a new config")

class RunConfig(Section):
    name: str = Field("run", pattern=NAME_PATTERN)
    seed: int = Field(0, description=(
        "every random draw derives from it; a new config takes 0 to 2**31 - 1, the range every "
        "seeded library takes (a run folder an earlier version wrote keeps its seed)"))
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
        if self.prune.init_sparsity > 0 and self.train.epochs == 0:
            raise ConfigError(f"prune.init_sparsity {self.prune.init_sparsity} with train.epochs 0: "
                              "level 0 would be the initial (or model.weights) weights with a random "
                              "mask they were never trained under; train level 0 (train.epochs > 0)")
        try:
            _check_options(self.model.name, _builder(self.model.name), self.model.options)
        except PrunelensError as exc:
            raise ConfigError(f"model: {exc}") from None
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in, the model's and the dataset's options included:
        what a run folder records, so that a later version whose defaults differ still knows the
        values this run used."""
        from prunelens.data.registry import folders_unchecked
        from prunelens.models.registry import option_defaults

        d = self.model_dump(mode="json")
        model = {k: d["model"][k] for k in ("name", "num_classes", "weights")}
        d["model"] = _json({**model, **option_defaults(self.model.name), **self.model.options})
        with folders_unchecked():  # where the data lies is recorded, not checked, here
            options = self.data.options.model_dump(mode="json")
        d["data"] = _json({"name": self.data.name, **options})
        return d

    def identity(self) -> dict[str, Any]:
        """What decides the pool a config builds: :meth:`resolved` without the run's name, output
        folder, evaluation settings, dataset location and decoding (:data:`DATA_RUNTIME_KEYS`) and the settings that only say where or how
        fast it trains (:data:`RUNTIME_KEYS`)."""
        d = self.resolved()
        for key in ("name", "output_dir", "evaluate"):
            d.pop(key)
        for key in DATA_RUNTIME_KEYS:  # where the dataset lies and where it is decoded are not what it is
            d["data"].pop(key, None)
        # where a control's source lies neither: the source's identity is this one without control
        d["prune"].pop("control_source", None)
        # nor where a dense level 0 is copied from: the copy is checked to be what this run trains
        d["prune"].pop("dense_source", None)
        for key in RUNTIME_KEYS:
            d["train"].pop(key)
        return d

    def identity_hash(self) -> str:
        """The run's identity as 16 hex digits: :func:`digest` of the identity's values that differ
        from today's defaults (as OpenLTH names its runs), so a later version that only adds
        options gives the same hash, while a value recorded under an earlier default that has since
        changed counts as the difference it is."""
        return digest(self._beyond_defaults())

    def experiment_hash(self) -> str:
        """The identity hash without the seed: runs that share it are seeds of one experiment."""
        return digest({k: v for k, v in self._beyond_defaults().items() if k != "seed"})

    def _beyond_defaults(self) -> dict[str, Any]:
        defaults = flatten_keys(self._default_identity())
        return {k: v for k, v in flatten_keys(self.identity()).items() if defaults.get(k, _MISSING) != v}

    def _default_identity(self) -> dict[str, Any]:
        """The defaults each value of this config's identity is compared with: the default model
        and dataset names, and the defaults of this config's model's and dataset's options."""
        from prunelens.data.registry import dataset_entry
        from prunelens.models.registry import option_defaults

        data_options = dataset_entry(self.data.name).options.model_fields
        return {"seed": RunConfig.model_fields["seed"].default,
                "model": _json({"name": ModelConfig().name, "num_classes": None, "weights": None,
                                **option_defaults(self.model.name)}),
                "data": _json({"name": DataConfig().name, **{k: f.default for k, f in data_options.items()
                                                            if not f.is_required() and k not in DATA_RUNTIME_KEYS}}),
                "train": {k: v for k, v in TrainConfig().model_dump(mode="json").items()
                          if k not in RUNTIME_KEYS},
                "prune": PruneConfig().model_dump(mode="json")}


#: train settings that change where or how fast a run computes, not what it trains
RUNTIME_KEYS = ("device", "num_workers", "eval_batch_size", "compile")
#: dataset options that say where the data lies or where it is decoded, not what it is
DATA_RUNTIME_KEYS = ("root", "decode")
_MISSING = object()


def flatten_keys(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(flatten_keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                   else {f"{prefix}{key}": value})
    return out


def canonical_json(obj) -> str:
    """One spelling of a JSON value: sorted keys, no spaces (what every hash is taken of)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest(obj) -> str:
    """sha256 of :func:`canonical_json`, 16 hex digits."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def _json(obj):
    """``obj`` as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(obj))


# ---- configs stored by earlier versions -----------------------------------------------------------
def config_from_stored(raw: dict, where: str) -> tuple[RunConfig, list[str]]:
    """The config a run folder recorded, read with this version: renamed keys are migrated, keys
    this version no longer has are left out (and returned, so callers can say so) and keys it
    added take their defaults. Dataset folders are not checked (the data may be elsewhere now)."""
    from prunelens.data.registry import folders_unchecked

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys")
    dropped: list[str] = []
    known = _known_keys(raw, dropped)
    try:
        with folders_unchecked():
            return validate_section(RunConfig, known, where), dropped
    except ConfigError as exc:
        raise ConfigError(f"{exc}. This version of prunelens cannot read that value") from None


def _known_keys(raw: dict, dropped: list[str]) -> dict:
    out = {}
    for key, value in raw.items():
        if key not in RunConfig.model_fields:
            dropped.append(key)
        elif isinstance(value, dict) and key in _SECTION_KEYS:
            out[key] = _known_section(key, value, dropped)
        else:
            out[key] = value
    return out


def _known_section(section: str, raw: dict, dropped: list[str]) -> dict:
    raw = _SECTION_OPTIONS[section](raw).migrated(raw)
    known = _SECTION_KEYS[section](raw)
    dropped += [f"{section}.{k}" for k in raw if k not in known]
    return {k: v for k, v in raw.items() if k in known}


def _model_keys(raw: dict) -> set[str]:
    from prunelens.models.registry import accepted_options
    accepted = accepted_options(str(raw.get("name", ModelConfig().name)))
    base = set(ModelConfig.model_fields)
    return set(raw) if accepted is None else base | set(accepted)


def _data_keys(raw: dict) -> set[str]:
    from prunelens.data.registry import dataset_entry
    try:
        options = dataset_entry(str(raw.get("name", DataConfig().name))).options
    except ConfigError:
        return set(raw)  # an unknown dataset: validation names it
    return set(DataConfig.model_fields) | set(options.model_fields)


def _evaluate_keys(raw: dict) -> set[str]:
    return set(raw)  # suite options are checked by the suite contract (prunelens.suite)


def _data_options(raw: dict) -> type[Options]:
    from prunelens.data.registry import dataset_entry
    try:
        return dataset_entry(str(raw.get("name", DataConfig().name))).options
    except ConfigError:
        return Options


_SECTION_OPTIONS = {"model": lambda raw: Options, "data": _data_options,
                    "train": lambda raw: TrainConfig, "prune": lambda raw: PruneConfig,
                    "evaluate": lambda raw: Options}

_SECTION_KEYS = {
    "model": _model_keys,
    "data": _data_keys,
    "train": lambda raw: set(TrainConfig.model_fields),
    "prune": lambda raw: set(PruneConfig.model_fields),
    "evaluate": _evaluate_keys,
}


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
    got_s = "" if isinstance(got, dict) or repr(got) in err["msg"] else f" (got {_short(got)})"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}{got_s}"


def validate_section(model: type[BaseModel], raw: dict, prefix: str = ""):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {_short(raw)}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], prefix, model)) from None


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# ---- files and overrides --------------------------------------------------------------------------
def default_config_path() -> Path:
    return Path(str(resources.files("prunelens") / "configs" / "default.yaml"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = _safe_yaml(path.read_text(encoding="utf-8"), f"config file {path}")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if raw is None:
        raise ConfigError(f"config file {path} is empty: write at least the settings that differ from "
                          "the defaults (`prunelens config` prints them all), or run `prunelens run` "
                          "without a file for the embedded demo")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(raw).__name__}")
    return raw


def _safe_yaml(text: str, what: str):
    """``yaml.safe_load`` with its failures (bad syntax, nesting too deep) as one-line errors."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to be a prunelens config") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{what} holds a value prunelens cannot read ({str(exc)[:80]})") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. prune.rate=0.3), got '{text}'")
    try:
        parsed = _safe_yaml(value, f"--set {key.strip()}") if value.strip() else ""
    except ConfigError as exc:
        if "nested too deeply" in str(exc):
            raise
        parsed = value  # not YAML: the text as it is
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


def _within_bounds(config: RunConfig) -> RunConfig:
    """Bounds a new config keeps and a stored one need not (run folders an earlier version wrote
    with a larger seed or n_boot are still read)."""
    if not 0 <= config.seed <= MAX_SEED:
        got = str(config.seed) if config.seed.bit_length() < 128 else f"a {config.seed.bit_length()}-bit number"
        raise ConfigError(f"seed: must be between 0 and {MAX_SEED} (got {got})")
    if config.evaluate.n_boot > MAX_N_BOOT:
        raise ConfigError(f"evaluate.n_boot: at most {MAX_N_BOOT} bootstrap resamples (more change the "
                          f"intervals by less than their rounding; got {config.evaluate.n_boot})")
    return config


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
    configs = [_within_bounds(validate_section(RunConfig, apply_overrides(e, overrides or [])))
               for e in entries]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"runs: run names must differ, got {names}")
    return configs

