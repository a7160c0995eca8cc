"""How the report was made: the gate judges the evaluation protocol, not just its numbers.

Why: a robust accuracy means something only at the threat model it was measured under. An
evaluation at a tiny radius, with one PGD step, without CW or AutoAttack, or on a handful of
examples per class gives high numbers for any model, and every one of its files is genuine (no
hash check can see it). So params ``gate.protocol`` names the weakest evaluation the gate accepts
and this module reads the report's *own recorded settings* (each attack's ``settings``, the
top-level ``eps``, ``provenance.eval_config`` and ``provenance.train_config``, all inside the
hash-checked bytes) and lists every way the report falls short. Either AutoAttack implementation
(``autoattack_impl``: ``fast`` or ``reference``) is accepted when it ran the suite asked for.
"""

from __future__ import annotations

import math
from typing import Any

from fairat.config import ProtocolConfig

STANDARD_SUITE = ("apgd-ce", "apgd-t", "fab-t", "square")  # AutoAttack's published "standard"
IMPLEMENTATIONS = ("fast", "reference")
EPS_TOLERANCE = 1e-9


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _settings(report: dict[str, Any], attack: str) -> dict[str, Any] | None:
    entry = (report.get("attacks") or {}).get(attack)
    settings = entry.get("settings") if isinstance(entry, dict) else None
    return settings if isinstance(settings, dict) else None


def required_eps(report: dict[str, Any], cfg: ProtocolConfig) -> float | None:
    """The radius the gate accepts: params ``gate.protocol.eps``, else the model's training radius
    as the report records it (``provenance.train_config.train.attack.eps``)."""
    if cfg.eps is not None:
        return cfg.eps
    train = ((report.get("provenance") or {}).get("train_config") or {}).get("train") or {}
    return _number((train.get("attack") or {}).get("eps")) if isinstance(train, dict) else None


def _radius_problems(report: dict[str, Any], cfg: ProtocolConfig) -> list[str]:
    want, eps = required_eps(report, cfg), _number(report.get("eps"))
    if want is None:
        return ["the report does not record the model's training radius and params "
                "gate.protocol.eps is null: the gate cannot tell which radius to accept"]
    if eps is None:
        return ["the report records no evaluation radius (eps)"]
    problems = []
    if abs(eps - want) > EPS_TOLERANCE:
        problems.append(f"evaluated at L-inf eps {eps:g}; the gate accepts only eps {want:g} "
                        "(gate.protocol.eps, null = the training radius)")
    for name in ("pgd", "cw", "autoattack"):
        settings = _settings(report, name)
        if settings is None:
            continue
        attack_eps = _number(settings.get("eps"))
        if attack_eps is None or abs(attack_eps - eps) > EPS_TOLERANCE:
            problems.append(f"the report's {name} ran at eps {settings.get('eps')!r}, not the "
                            f"report's eps {eps:g}")
        if str(settings.get("norm", "Linf")) != "Linf":
            problems.append(f"the report's {name} used norm {settings.get('norm')!r}; the gate's "
                            "threat model is L-inf")
    return problems


def _steps_problems(report: dict[str, Any], name: str, loss: str, minimum: int | None) -> list[str]:
    if minimum is None:
        return []
    settings = _settings(report, name)
    if settings is None:
        return [f"the report has no {name.upper()} result; the gate needs {name.upper()}-"
                f"{minimum} (gate.protocol.min_{name}_steps)"]
    steps, size = settings.get("steps"), _number(settings.get("step_size"))
    problems = []
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < minimum:
        problems.append(f"the report's {name.upper()} ran {steps!r} steps; the gate needs at "
                        f"least {minimum} (gate.protocol.min_{name}_steps)")
    if settings.get("loss") != loss:
        problems.append(f"the report's {name} used loss {settings.get('loss')!r}, not {loss!r}")
    if size is None or size <= 0:
        problems.append(f"the report's {name} step size {settings.get('step_size')!r} is not "
                        "positive")
    return problems


def _autoattack_problems(report: dict[str, Any], cfg: ProtocolConfig) -> list[str]:
    if cfg.autoattack == "none":
        return []
    settings = _settings(report, "autoattack")
    if settings is None:
        return [f"the report has no AutoAttack result; the gate needs "
                f"{'the standard suite' if cfg.autoattack == 'standard' else 'an AutoAttack run'} "
                "(gate.protocol.autoattack)"]
    problems = []
    impl = settings.get("autoattack_impl", "reference")
    if impl not in IMPLEMENTATIONS:
        problems.append(f"the report's AutoAttack implementation {impl!r} is not one of "
                        f"{list(IMPLEMENTATIONS)}")
    if cfg.autoattack == "standard":
        ran = settings.get("attacks") if isinstance(settings.get("attacks"), list) else []
        missing = [a for a in STANDARD_SUITE if a not in ran]
        if settings.get("version") != "standard" or missing:
            problems.append(f"the report's AutoAttack is version {settings.get('version')!r} "
                            f"with {ran}; the gate needs the standard suite "
                            f"{list(STANDARD_SUITE)} (gate.protocol.autoattack)"
                            + (f", missing {missing}" if missing else ""))
    return problems


def _example_problems(report: dict[str, Any], cfg: ProtocolConfig) -> list[str]:
    eval_config = (report.get("provenance") or {}).get("eval_config")
    counts = report.get("examples_per_class")
    if not isinstance(eval_config, dict) or not isinstance(counts, dict) or not counts:
        return ["the report records no evaluation settings (provenance.eval_config) or "
                "examples per class"]
    aa = _settings(report, "autoattack")
    aa_totals = (((report.get("attacks") or {}).get("autoattack") or {}).get("counts")
                 or {}).get("total") if aa is not None else None
    if cfg.min_examples_per_class is None:
        problems = []
        if eval_config.get("examples_per_class") is not None:
            problems.append(f"the report evaluated {eval_config.get('examples_per_class')} "
                            "examples per class; the gate needs every example of the split "
                            "(gate.protocol.min_examples_per_class: null)")
        if aa is not None and aa.get("examples_per_class") is not None:
            problems.append(f"the report's AutoAttack ran on {aa.get('examples_per_class')} "
                            "examples per class; the gate needs every example of the split")
        return problems
    least = cfg.min_examples_per_class
    problems = []
    for what, table in (("evaluated", counts), ("attacked by AutoAttack", aa_totals)):
        if not isinstance(table, dict):
            continue
        short = {c: n for c, n in table.items() if not isinstance(n, int) or n < least}
        if short:
            listed = ", ".join(f"{c} {n}" for c, n in sorted(short.items()))
            problems.append(f"too few examples {what} per class (gate.protocol."
                            f"min_examples_per_class {least}): {listed}")
    return problems


def protocol_problems(report: Any, cfg: ProtocolConfig) -> list[str]:
    """Every way ``report`` was made with a weaker evaluation than ``cfg`` accepts ([] = none)."""
    if not isinstance(report, dict):
        return []  # a missing or malformed report has its own reasons
    return (_radius_problems(report, cfg)
            + _steps_problems(report, "pgd", "ce", cfg.min_pgd_steps)
            + _steps_problems(report, "cw", "cw", cfg.min_cw_steps)
            + _autoattack_problems(report, cfg) + _example_problems(report, cfg))
