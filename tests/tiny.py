"""The tiny-run settings, written once: every test that trains through a front uses these.

Why one place: the suite must stay within minutes on 2 cores, and four copies of "a tiny run"
drifted apart (8 batches here, 3 there, AutoAttack on in one). A test that needs more (a second
epoch for FairAT's phase, AutoAttack, a gate it can pass) says so with ``tiny(...)`` changes, so
what it adds is visible beside the claim that needs it.

Values are dotted params keys, as ``-S KEY=VALUE`` and :func:`fairat.config.load_params` take.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# One epoch of three batches of 64 on a width-8 CNN, one PGD step, a handful of examples per
# class in evaluation, no AutoAttack: every step runs its real code on a few hundred examples.
TINY_RUN: dict[str, Any] = {
    "data.val_per_class": 5, "model.width": 8,
    "train.epochs": 1, "train.max_batches": 3, "train.batch_size": 64,
    "train.attack.steps": 1, "train.val_attack_steps": 1, "train.progress": False,
    "evaluate.examples_per_class": 3, "evaluate.pgd_steps": 2, "evaluate.autoattack": "none",
}

# FairAT only acts after its warm-up: two epochs, the first one plain.
FAIRAT_PHASE: dict[str, Any] = {"train.epochs": 2, "train.fairat.warmup": 0.5}

# A tiny model cannot pass the default gate: judge clean accuracy (a pass is reachable) and keep
# one non-zero threshold (an all-zero gate is refused); its classes may sit below chance.
PASSABLE_GATE: dict[str, Any] = {"gate.attack": "clean", "gate.min_average": 0.01,
                                 "gate.min_worst_class": 0.0, "gate.min_clean_class": 0.0,
                                 # ... and accept the tiny evaluation (the default protocol
                                 # needs PGD-20, CW-20, standard AutoAttack, every test example)
                                 "gate.protocol.min_pgd_steps": 1,
                                 "gate.protocol.min_cw_steps": None,
                                 "gate.protocol.autoattack": "none",
                                 "gate.protocol.min_examples_per_class": 1}


def tiny(*extra: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``TINY_RUN`` with ``extra`` dicts and ``changes`` (``train__epochs=2`` for dotted keys)
    applied in order."""
    out = dict(TINY_RUN)
    for more in extra:
        out.update(more)
    out.update({k.replace("__", "."): v for k, v in changes.items()})
    return out


def cli_flags(overrides: dict[str, Any]) -> list[str]:
    """``{"train.epochs": 2}`` -> ``["-S", "train.epochs=2"]`` (YAML values: lists as JSON)."""
    flags: list[str] = []
    for key, value in overrides.items():
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        flags += ["-S", f"{key}={text}"]
    return flags


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> the nested sections of a params file (to merge into a YAML document)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


def train_paths(root: Path):
    """The four files a training run writes, all under ``root`` (a TrainPaths)."""
    from fairat.engine.training import TrainPaths

    return TrainPaths(root / "model.pt", root / "checkpoints", root / "train.json",
                      root / "history.csv")


# The repository root (params.yaml, dvc.yaml, the package) for tests that copy its files.
REPO = Path(__file__).resolve().parents[1]


def registry_run_flags() -> list[str]:
    """CLI flags of the tiny run whose gate a tiny model can pass, registered as model "unit":
    the registry and attestation tests both build on it."""
    return cli_flags(tiny(PASSABLE_GATE, track__model_name="unit"))
