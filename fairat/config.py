"""Typed configuration: `params.yaml` sections loaded into frozen dataclasses.

Why: every tunable lives in one params file shared by the CLI, DVC and Kubeflow. Loading it into
frozen dataclasses that reject unknown keys and out-of-range values turns a typo (``epoch:`` for
``epochs:``) or a nonsense value (negative eps) into an early, named error instead of a silently
ignored knob.

Units: eps and step sizes are L-inf radii in [0, 1] pixel units; learning rates are per SGD step;
``*_per_class`` counts are examples per class (``None`` means all of them).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

DataSource = Literal["digits", "cifar10", "cifar100", "svhn", "imagefolder"]
Method = Literal["pgd_at", "trades", "fairat"]
BaseMethod = Literal["pgd_at", "trades"]
Schedule = Literal["piecewise", "cosine", "constant"]
ScoreKind = Literal["adv_ce", "clean_ce", "entropy"]
AugmentName = Literal["autoaugment", "cutout", "cutmix", "mixup", "cropflip"]
CheckpointChoice = Literal["best", "last"]
SelectMetric = Literal["val_robust_avg", "val_robust_worst", "val_robust_sum"]
AutoAttackVersion = Literal["standard", "custom", "none"]
AutoAttackName = Literal["apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"]
DeviceName = Literal["auto", "cpu", "cuda"]
GateAttack = Literal["worst_case", "autoattack", "pgd", "cw", "clean"]


class ConfigError(ValueError):
    """A params file or value is invalid; the message names the offending key and value."""


@dataclass(frozen=True)
class DataConfig:
    """What `fairat prepare` loads, how it subsets it and which split it holds out for validation."""

    source: DataSource = "digits"
    root: str = ""  # imagefolder: folder or .tar.gz; torchvision sources: their download folder
    download: bool = False  # torchvision sources only: fetch when missing (needs internet)
    train_per_class: int | None = None  # stratified training subset, before the validation split
    val_per_class: int = 0  # held out of the training examples, never of the test set
    test_per_class: int | None = None  # stratified test subset
    seed: int = 0  # drives subset and validation-split choice

    def __post_init__(self) -> None:
        _check_positive_or_none("train_per_class", self.train_per_class)
        _check_positive_or_none("test_per_class", self.test_per_class)
        _check(self.val_per_class >= 0, "val_per_class", self.val_per_class, "must be >= 0")
        if self.source == "imagefolder" and not self.root:
            raise ConfigError("root: required when data.source is 'imagefolder'")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture by registry name; width/depth apply where the architecture has them."""

    name: str = "small_cnn"  # small_cnn | preact_resnet18 | wrn
    width: int | None = None  # base channels (small_cnn 32, preact 64) or WRN widen factor (10)
    depth: int | None = None  # WRN depth (28); ignored elsewhere

    def __post_init__(self) -> None:
        _check_positive_or_none("width", self.width)
        _check_positive_or_none("depth", self.depth)


@dataclass(frozen=True)
class AttackConfig:
    """L-inf PGD: radius ``eps`` and ``step_size`` in [0, 1] pixel units."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    loss: Literal["ce", "cw"] = "ce"

    def __post_init__(self) -> None:
        _check(self.eps >= 0 and self.eps <= 1, "eps", self.eps, "must lie in [0, 1] (pixel units)")
        _check(self.step_size > 0, "step_size", self.step_size, "must be > 0")
        _check(self.steps >= 0, "steps", self.steps, "must be >= 0")


@dataclass(frozen=True)
class FairATConfig:
    """FairAT's knobs (see shared FAIRAT.md for why these defaults)."""

    base: BaseMethod = "pgd_at"  # the adversarial objective hard examples are trained with
    score: ScoreKind = "adv_ce"  # per-example hardness signal, from losses training computes anyway
    score_ema: float = 0.9  # weight of the old score in the moving average
    hard_ratio: float = 0.2  # fraction of the training set selected as hard each epoch
    per_class: bool = False  # False: global top-k; True: a quota within every class (below)
    class_power: float = 0.0  # per_class: quota ~ (class mean score)^power; 0 = equal fractions
    warmup_epochs: int = 5  # epochs of plain base training before selection starts
    copies: int = 1  # extra augmented views per hard example per epoch
    augment: tuple[AugmentName, ...] = ("autoaugment", "cutout", "cutmix")
    strength: float = 1.0  # scales augmentation magnitudes (0 = identity, 1 = default, up to 2)
    rescore_every: int = 0  # >0: full clean re-scoring pass every k epochs (off by default)

    def __post_init__(self) -> None:
        _check(0 <= self.score_ema < 1, "score_ema", self.score_ema, "must lie in [0, 1)")
        _check(0 < self.hard_ratio <= 1, "hard_ratio", self.hard_ratio, "must lie in (0, 1]")
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be >= 0")
        _check(0 <= self.class_power <= 16, "class_power", self.class_power, "must lie in [0, 16]")
        _check(self.copies >= 1, "copies", self.copies, "must be >= 1")
        _check(len(self.augment) > 0, "augment", self.augment, "needs at least one name")
        _check(0 <= self.strength <= 2, "strength", self.strength, "must lie in [0, 2]")
        _check(self.rescore_every >= 0, "rescore_every", self.rescore_every, "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: method, optimiser, schedule, attack, checkpoints."""

    method: Method = "fairat"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Schedule = "piecewise"
    milestones: tuple[float, ...] = (0.5, 0.75)  # piecewise: fractions of the epochs
    gamma: float = 0.1  # piecewise: lr factor at each milestone
    trades_beta: float = 6.0
    crop_padding: int = 4  # random-crop padding in pixels (0 disables); flips below
    flip: bool = True
    attack: AttackConfig = field(default_factory=AttackConfig)
    fairat: FairATConfig = field(default_factory=FairATConfig)
    seed: int = 0
    device: DeviceName = "auto"
    amp: Literal["auto", "off", "bf16"] = "auto"  # auto: bf16 autocast on CUDA only (slow on CPU)
    checkpoint: CheckpointChoice = "best"  # which epoch becomes model.pt, chosen on validation
    select_metric: SelectMetric = "val_robust_avg"
    val_attack_steps: int = 10  # PGD steps of the per-epoch validation attack
    max_batches: int | None = None  # cap batches per epoch (smoke tests); None = all
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _check(self.lr > 0, "lr", self.lr, "must be > 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "must lie in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _check(all(0 < m < 1 for m in self.milestones), "milestones", self.milestones,
               "must be fractions of the epochs in (0, 1)")
        _check(self.trades_beta >= 0, "trades_beta", self.trades_beta, "must be >= 0")
        _check(self.crop_padding >= 0, "crop_padding", self.crop_padding, "must be >= 0")
        _check(self.val_attack_steps >= 0, "val_attack_steps", self.val_attack_steps,
               "must be >= 0")
        _check_positive_or_none("max_batches", self.max_batches)


@dataclass(frozen=True)
class EvalConfig:
    """Class-wise evaluation: which attacks, on how many test examples per class."""

    split: Literal["test", "val"] = "test"  # "val" to choose knobs without touching the test set
    eps: float = 8 / 255
    examples_per_class: int | None = None  # stratified test subset for every attack; None = all
    batch_size: int = 256
    pgd_steps: int = 20
    pgd_step_size: float = 2 / 255
    cw: bool = True  # PGD on the CW margin loss, same steps
    autoattack: AutoAttackVersion = "standard"
    autoattack_attacks: tuple[AutoAttackName, ...] = ("apgd-ce", "apgd-t")  # for "custom"
    autoattack_per_class: int | None = None  # AutoAttack subset per class; None = same as above
    apgd_restarts: int = 1  # custom version: restarts of APGD-CE (pyautoattack defaults to 5)
    apgd_targets: int = 9  # custom version: target classes of APGD-T
    seed: int = 0
    device: DeviceName = "auto"

    def __post_init__(self) -> None:
        _check(0 <= self.eps <= 1, "eps", self.eps, "must lie in [0, 1] (pixel units)")
        _check_positive_or_none("examples_per_class", self.examples_per_class)
        _check_positive_or_none("autoattack_per_class", self.autoattack_per_class)
        _check(self.pgd_steps >= 0, "pgd_steps", self.pgd_steps, "must be >= 0")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _check(self.apgd_restarts >= 1, "apgd_restarts", self.apgd_restarts, "must be >= 1")
        if self.autoattack == "custom":
            _check(len(self.autoattack_attacks) > 0, "autoattack_attacks",
                   self.autoattack_attacks, "needs at least one attack for version 'custom'")


@dataclass(frozen=True)
class GateConfig:
    """Fairness gate: thresholds on one attack's class-wise robust accuracy, fractions in [0, 1].

    ``attack: worst_case`` judges the per-example worst case over every attack that ran (the
    strictest reading); ``None`` disables an optional threshold.
    """

    attack: GateAttack = "worst_case"
    min_worst_class: float = 0.0  # robust accuracy of the weakest class
    min_average: float | None = None  # mean of the per-class robust accuracies
    max_gap: float | None = None  # best class minus worst class
    split: Literal["test", "val"] = "test"  # the split the report must have been computed on

    def __post_init__(self) -> None:
        _check(0 <= self.min_worst_class <= 1, "min_worst_class", self.min_worst_class,
               "must lie in [0, 1] (a fraction)")
        for key in ("min_average", "max_gap"):
            value = getattr(self, key)
            _check(value is None or 0 <= value <= 1, key, value, "must lie in [0, 1] or be null")


@dataclass(frozen=True)
class TrackConfig:
    """MLflow tracking and registry names (the store itself comes from MLFLOW_TRACKING_URI)."""

    enabled: bool = True  # False: no MLflow records from train/evaluate (register needs them)
    experiment: str = "fairat"
    model_name: str = "fairat"  # registered model that versions are created under

    def __post_init__(self) -> None:
        for key in ("experiment", "model_name"):
            value = getattr(self, key)
            _check(bool(value.strip()), key, value, "must be a non-empty name")


@dataclass(frozen=True)
class Params:
    """The whole params file: one section per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    track: TrackConfig = field(default_factory=TrackConfig)


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} {why}")


def _check_positive_or_none(key: str, value: int | None) -> None:
    _check(value is None or value >= 1, key, value, "must be a positive integer or null")


def from_dict(cls: type, raw: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into nested sections.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the full key
    (``train.attack.eps``), so a typo never silently falls back to a default.
    """
    raw = {} if raw is None else raw
    where = prefix.rstrip(".") or "params"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    values = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in raw.items()}
    try:
        return cls(**values)
    except ConfigError as err:  # checks name the bare field; add the section path
        raise ConfigError(f"{prefix}{err}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-ready dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def load_params(path: str | Path) -> Params:
    """Read a params YAML file into :class:`Params`; a missing file or bad YAML is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return from_dict(Params, raw)


def with_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """Apply dotted overrides (``{"train.attack.eps": 0.03}``) and re-validate the whole tree."""
    raw = to_dict(params)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{dotted}: unknown section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"{dotted}: unknown key {leaf!r}")
        node[leaf] = value
    return from_dict(Params, raw)
