"""The method registry: one module per training method says everything about it.

A method module (``fairat/engine/methods/<name>.py``) defines ``METHOD = MethodSpec(...)``: its
config section (the dataclass of its ``train.<name>`` knobs), its base objective, its class policy
(per-class radii and loss weights) or batch hook (extra examples per batch), its weight average,
whether it needs the validation split, the TrainConfig fields that make it this method, when its
phases start, and its one-line description for the model card. Everything else reads the registry:
``fairat.config`` (the method names and sections of ``train``), the training loop (objective,
policy, hook, average: no branch on a method name), ``fairat.evidence.comparison`` (which fields
may differ from the baseline) and the model card (the method line).

Adding a method is one module here plus its ``train.<name>`` section in ``params.yaml``.

Why this package is torch-free at import: ``fairat.config`` reads it while loading params, and a
front that only gates or registers must not pay for importing torch. A method module therefore
imports its checks from ``fairat.knobs`` (never ``fairat.config``, which is still being imported
then) and imports engine code (torch) inside its hook functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

Describe = Callable[[Mapping[str, Any]], str]


def phase_epoch(fraction: float, epochs: int, minimum: int = 0) -> int:
    """Epochs trained before a phase that starts at ``fraction`` of the run: the one rounding
    every method's phases use, so ``-S train.epochs=5`` moves every phase alike."""
    return max(minimum, int(round(fraction * epochs)))


def _none(*_args: Any) -> None:
    return None


def _no_phases(_train: Any) -> dict[str, int]:
    return {}


@dataclass(frozen=True)
class MethodSpec:
    """Everything the rest of fairat needs to know about one training method.

    Hooks take the run's ``TrainConfig`` (``train``) and are called when a run is built;
    ``describe`` takes the ``train`` section as a plain dict (the card reads params from files).
    """

    name: str
    describe: Describe  # train dict -> the card's one line: what this run trained
    section: type | None = None  # dataclass of the train.<name> knobs; None = no knobs
    objective: Callable[[Any], str] | None = None  # train -> "pgd_at" | "trades"; None = name
    fields: tuple[str, ...] = ()  # TrainConfig fields that make it this method (comparison)
    needs_validation: Callable[[Any], str | None] = _none  # train -> why, or None
    policy: Callable[..., Any] = _none  # (train, num_classes, names) -> ClassPolicy | None
    batch_hook: Callable[..., Any] = _none  # (train, labels, num_classes) -> BatchHook | None
    weight_average: Callable[[Any], Any] = _none  # train -> FairWeightAverage | None
    phases: Callable[[Any], dict[str, int]] = _no_phases  # train -> {phase: epochs before it}
    warnings: Callable[[Any], list[str]] = field(default=lambda _train: [])  # other caveats
    order: int = 100  # place in listings (the built-in methods first, then by name)

    def objective_of(self, train: Any) -> str:
        return self.name if self.objective is None else self.objective(train)


_REGISTRY: dict[str, MethodSpec] | None = None


def registry() -> dict[str, MethodSpec]:
    """Every method module in this package (``__path__``, so a folder appended to it adds
    methods), by name, in listing order. Imported once, on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, MethodSpec] = {}
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_"):
                continue
            spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
            if not isinstance(spec, MethodSpec):
                raise TypeError(f"{__name__}.{info.name} defines no METHOD = MethodSpec(...)")
            if spec.name != info.name:
                raise TypeError(f"{__name__}.{info.name}: METHOD.name is {spec.name!r}; a "
                                "method's module is named after it")
            found[spec.name] = spec
        _REGISTRY = dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
    return _REGISTRY


def method(name: str) -> MethodSpec:
    """The spec of method ``name`` (KeyError naming the known ones)."""
    methods = registry()
    if name not in methods:
        raise KeyError(f"unknown training method {name!r}; known: {sorted(methods)}")
    return methods[name]


def method_fields() -> tuple[str, ...]:
    """TrainConfig fields that some method sets for itself: what may differ from a baseline."""
    return tuple(dict.fromkeys(f for spec in registry().values() for f in spec.fields))


def method_warnings(train: Any) -> list[str]:
    """Why ``train.method`` cannot act (fully) in this run: a phase that starts at or after the
    last epoch turns the method into its base objective, silently unless said."""
    spec = method(train.method)
    out = [f"train.method {spec.name!r}: its {phase} starts after epoch {start} of "
           f"{train.epochs}, so it never acts and this run trains plain "
           f"{spec.objective_of(train)}; lower its start fraction or raise train.epochs"
           for phase, start in spec.phases(train).items() if start >= train.epochs]
    return out + list(spec.warnings(train))
