"""Typed configuration: `params.yaml` sections loaded into frozen dataclasses.

Why: every tunable lives in one params file shared by the CLI, DVC and Kubeflow. Loading it into
frozen dataclasses that reject unknown keys and out-of-range values turns a typo (``epoch:`` for
``epochs:``) or a nonsense value (negative eps) into an early, named error instead of a silently
ignored knob.

Units: eps and step sizes are L-inf radii in [0, 1] pixel units; learning rates are per SGD step;
``*_per_class`` counts are examples per class (``None`` means all of them).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import yaml

from fairat.knobs import ConfigError, check as _check, check_positive_or_none as \
    _check_positive_or_none, check_range

DataSource = Literal["digits", "cifar10", "cifar100", "svhn", "imagefolder"]
Schedule = Literal["piecewise", "cosine", "constant"]
CheckpointChoice = Literal["best", "last"]
SelectMetric = Literal["val_robust_avg", "val_robust_worst", "val_robust_sum"]
AutoAttackVersion = Literal["standard", "custom", "none"]
AutoAttackName = Literal["apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"]
DeviceName = Literal["auto", "cpu", "cuda"]
ModelName = Literal["small_cnn", "preact_resnet18", "wrn"]  # keys of fairat.engine.models.MODELS
GateAttack = Literal["worst_case", "autoattack", "pgd", "cw", "clean"]


@dataclass(frozen=True)
class DataConfig:
    """What `fairat prepare` loads, how it subsets it and which split it holds out for validation."""

    source: DataSource = "digits"
    root: str = ""  # imagefolder: folder or .tar.gz; torchvision sources: their download folder
    download: bool = False  # torchvision sources only: fetch when missing (needs internet)
    train_per_class: int | None = None  # stratified training subset, before the validation split
    val_per_class: int = 15  # held out of the training examples, never of the test set
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

    name: ModelName = "small_cnn"
    width: int | None = 16  # base channels (small_cnn 32, preact 64) or WRN widen factor (10)
    depth: int | None = None  # WRN depth (28); ignored elsewhere

    def __post_init__(self) -> None:
        _check_positive_or_none("width", self.width)
        _check_positive_or_none("depth", self.depth)


@dataclass(frozen=True)
class AttackConfig:
    """L-inf PGD: radius ``eps`` and ``step_size`` in [0, 1] pixel units."""

    eps: float = 0.1
    step_size: float = 0.025
    steps: int = 10
    random_start: bool = True
    loss: Literal["ce", "cw"] = "ce"

    def __post_init__(self) -> None:
        _check(self.eps >= 0 and self.eps <= 1, "eps", self.eps, "must lie in [0, 1] (pixel units)")
        check_range(self, "step_size", 0, 1, low_open=True)
        _check(self.steps >= 0, "steps", self.steps, "must be >= 0")


@dataclass(frozen=True)
class TrainKnobs:
    """One training run: method, optimiser, schedule, attack, checkpoints.

    :data:`TrainConfig` adds one section per training method (``train.fairat``, ``train.wat``,
    ...) from the method registry (:mod:`fairat.engine.methods`), so a new method brings its
    own knobs.
    """

    method: str = "fairat"  # a method of the registry (TrainConfig narrows this to their names)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Schedule = "piecewise"
    milestones: tuple[float, ...] = (0.5, 0.75)  # piecewise: fractions of the epochs
    gamma: float = 0.1  # piecewise: lr factor at each milestone
    trades_beta: float = 6.0
    crop_padding: int = 1  # random-crop padding in pixels (0 disables); flips below
    flip: bool = False
    attack: AttackConfig = field(default_factory=AttackConfig)
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
        # every float knob in a range: a negative gamma or lr would train with a negative rate
        _check(self.lr > 0, "lr", self.lr, "must be > 0")  # no upper bound: the divergence guard
        check_range(self, "momentum", 0, 1, high_open=True)
        check_range(self, "weight_decay", 0, 1, high_open=True)
        _check(all(0 < m < 1 for m in self.milestones), "milestones", self.milestones,
               "must be fractions of the epochs in (0, 1)")
        check_range(self, "gamma", 0, 1, low_open=True)
        check_range(self, "trades_beta", 0, 100)
        _check(self.crop_padding >= 0, "crop_padding", self.crop_padding, "must be >= 0")
        _check(self.val_attack_steps >= 0, "val_attack_steps", self.val_attack_steps,
               "must be >= 0")
        _check_positive_or_none("max_batches", self.max_batches)


def _train_config() -> type:
    """TrainKnobs plus one ``train.<method>`` section per registered method that has knobs, and
    ``method`` narrowed to the registry's names (so a typo gets "did you mean")."""
    # The one import of the engine by the foundation: the registry package is torch-free at
    # import (its docstring says why); tests/test_layout.py names this edge as the exception.
    from fairat.engine.methods import registry

    methods = registry()
    sections = [(name, spec.section, field(default_factory=spec.section))
                for name, spec in methods.items() if spec.section is not None]
    cls = dataclasses.make_dataclass(
        "TrainConfig", [("method", Literal[tuple(methods)], field(default="fairat")), *sections],
        bases=(TrainKnobs,), frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = TrainKnobs.__doc__
    return cls


TrainConfig = _train_config()


@dataclass(frozen=True)
class EvalConfig:
    """Class-wise evaluation: which attacks, on how many test examples per class."""

    split: Literal["test", "val"] = "test"  # "val" to choose knobs without touching the test set
    eps: float = 0.1  # the threat model the gate judges (L-inf radius, pixel units)
    require_train_eps: bool = True  # evaluate.eps must equal train.attack.eps
    examples_per_class: int | None = None  # stratified test subset for every attack; None = all
    batch_size: int = 256
    pgd_steps: int = 20
    pgd_step_size: float = 0.025
    cw: bool = True  # PGD on the CW margin loss, same steps
    autoattack: AutoAttackVersion = "standard"
    autoattack_attacks: tuple[AutoAttackName, ...] = ("apgd-ce", "apgd-t")  # for "custom"
    autoattack_per_class: int | None = None  # AutoAttack subset per class; None = same as above
    apgd_restarts: int = 1  # custom version: restarts of APGD-CE (pyautoattack defaults to 5)
    apgd_targets: int = 9  # custom version: target classes of APGD-T
    autoattack_impl: Literal["fast", "reference"] = "fast"  # fast: targets batched, same verdicts
    seed: int = 0
    device: DeviceName = "auto"
    progress: bool = True  # progress with ETA on a terminal, a heartbeat line in logs

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
class ProtocolConfig:
    """The evaluation the gate accepts (checked in fairat.evidence.protocol against the report's
    own recorded settings): anything weaker is blocked, whatever its numbers."""

    eps: float | None = None  # L-inf radius the report must use; None = the model's training radius
    min_pgd_steps: int = 20  # PGD-CE must have run with at least this many steps
    min_cw_steps: int | None = 20  # CW (PGD on the CW loss) at least this many steps; None = optional
    autoattack: Literal["standard", "any", "none"] = "standard"  # the weakest AutoAttack accepted
    min_examples_per_class: int | None = None  # None = every example of the split

    def __post_init__(self) -> None:
        _check(self.eps is None or 0 < self.eps <= 1, "eps", self.eps,
               "must lie in (0, 1] or be null")
        _check(self.min_pgd_steps >= 1, "min_pgd_steps", self.min_pgd_steps,
               "must be at least 1")
        _check_positive_or_none("min_cw_steps", self.min_cw_steps)
        _check_positive_or_none("min_examples_per_class",
                                self.min_examples_per_class)


@dataclass(frozen=True)
class GateConfig:
    """Fairness gate: thresholds on one attack's class-wise robust accuracy, fractions in [0, 1].

    ``attack: worst_case`` judges the per-example worst case over every attack that ran (the
    strictest reading); ``None`` disables an optional threshold.
    """

    attack: GateAttack = "worst_case"
    min_worst_class: float = 0.30  # robust accuracy of the weakest class
    min_average: float | None = None  # mean of the per-class robust accuracies
    max_gap: float | None = None  # best class minus worst class
    split: Literal["test", "val"] = "test"  # the split the report must have been computed on
    min_clean_class: float | None = None  # clean accuracy floor per class; None = above chance
    informational: bool = False  # True: record the numbers, never pass (all-zero thresholds)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)  # the evaluation accepted

    def __post_init__(self) -> None:
        _check(self.min_clean_class is None or 0 <= self.min_clean_class <= 1, "min_clean_class",
               self.min_clean_class, "must lie in [0, 1] or be null")
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
    model_name: str = "fairat-digits"  # registered model that versions are created under
    register: bool | None = None  # None: register, except inside `dvc exp run`; True/False: always/never
    owner: str = ""  # who answers for the model (model card)
    license: str = ""  # licence the model is released under (model card)
    # a committed multi-seed study summary (benchmarks/robust_fairness.py aggregate): the card
    # quotes its paired interval when one of its methods trained exactly this setting
    study: str = "results/digits-contest/summary.json"

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

    def __post_init__(self) -> None:
        from fairat.engine.methods import method

        why = method(self.train.method).needs_validation(self.train)
        if why and self.data.val_per_class < 1:
            raise ConfigError(f"train.method: {self.train.method!r} {why}; "
                              "set data.val_per_class >= 1")
        # One threat model: the gate judges robustness at evaluate.eps, so a model trained at
        # another radius is refused unless the params say that is intended.
        if self.evaluate.require_train_eps and \
                not math.isclose(self.evaluate.eps, self.train.attack.eps, rel_tol=1e-9):
            raise ConfigError(
                f"evaluate.eps: {self.evaluate.eps!r} differs from train.attack.eps "
                f"{self.train.attack.eps!r}; set both to the same radius, or set "
                "evaluate.require_train_eps: false to evaluate at another one")


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
        hints_text = "".join(_did_you_mean(k, names) for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hints_text}; known: {sorted(names)}")
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
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}"
                              f"{_did_you_mean(str(value), map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .inf / .nan would train to NaN or disable a check
            raise ConfigError(f"{key}: {value!r} is not a finite number")
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


def leaves(cls: type, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, type hint) of every knob of a config dataclass, recursively
    (``("train.attack.eps", float)``, ...): the one walk over the params schema."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from leaves(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-ready dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3"]`` -> ``{"train.epochs": 3}`` (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-S {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"-S {item!r}: value is not valid YAML: {err}") from None
    return out


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``a.b.c``, checking each part against the schema.

    Why against the schema and not the file: a section or key the file leaves to its default
    (``gate.max_gap``) must still be overridable, and a typo must name the nearest known key.
    """
    cls: Any = Params
    node = raw
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        where = ".".join(parts[:depth]) or "params"
        if part not in fields:
            raise ConfigError(f"-S {dotted}: unknown key {part!r} in {where}"
                              f"{_did_you_mean(part, fields)}")
        if depth == len(parts) - 1:
            node[part] = value
            return
        hint = typing.get_type_hints(cls)[part]
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"-S {dotted}: {'.'.join(parts[:depth + 1])} is a value, "
                              "not a section")
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node, cls = node[part], hint


def load_params(path: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                ) -> Params:
    """The one way to read params: the YAML file, then ``overrides``, then one validation.

    Why merge before validating: a file that is only valid *with* its overrides (``data.source:
    imagefolder`` with an empty ``root`` and ``-S data.root=X``) must load, and a file that is
    invalid with them must not. ``overrides`` is ``{"train.epochs": 3}`` or the CLI's
    ``["train.epochs=3"]``. A missing file, bad YAML or any bad value is a ConfigError naming
    the key.
    """
    return params_from_raw(read_params_file(path), overrides)


def read_params_file(path: str | Path) -> dict[str, Any]:
    """One params file's tree; a missing file, bad YAML or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def params_from_raw(raw: Mapping[str, Any],
                    overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Params:
    """:func:`load_params` for a tree already in memory (a params dict, or a config's dict)."""
    raw = copy.deepcopy(dict(raw))
    if overrides and not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    for dotted, value in (overrides or {}).items():
        _apply_override(raw, dotted, value)
    return from_dict(Params, raw)


def with_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """Apply dotted overrides (``{"train.attack.eps": 0.03}``) and re-validate the whole tree."""
    return params_from_raw(to_dict(params), overrides)
