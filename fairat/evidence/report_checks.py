"""Report checks: is an evaluation report internally consistent and sane?

Why apart from the decision: the comparison with the baseline and the gate both need to know that
a report's numbers are its counts, its summaries those numbers, its stricter attacks no better
than the looser ones, and its model above chance; the decision then reads thresholds off a report
that passed these checks. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

from fairat.config import GateConfig
from fairat.engine.metrics import summarize

SUMMARY_KEYS = ("average", "worst", "worst_class", "best", "best_class", "gap")
TOLERANCE = 1e-9  # accuracies recomputed from integer counts agree far closer than this


def _fraction(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


def _read_summary(report: Any, attack: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The ``attack`` summary of ``report`` if it is complete and sane, else the problems found."""
    if not isinstance(report, dict):
        return None, ["evaluation report is not a JSON object"]
    entry = report.get("attacks", {}).get(attack) if isinstance(report.get("attacks"), dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("summary"), dict):
        return None, [f"evaluation report has no '{attack}' results (attacks run: "
                      f"{sorted(report.get('attacks') or {}) if isinstance(report.get('attacks'), dict) else 'none'})"]
    summary, per_class = entry["summary"], entry.get("per_class")
    problems = [f"report '{attack}' summary lacks {key!r}" for key in SUMMARY_KEYS
                if key not in summary]
    problems += [f"report '{attack}' {key} = {summary[key]!r} is not a fraction in [0, 1]"
                 for key in ("average", "worst", "best", "gap")
                 if key in summary and not _fraction(summary[key])]
    if not isinstance(per_class, dict) or not per_class:
        problems.append(f"report '{attack}' has no per-class accuracies")
    elif not all(_fraction(v) for v in per_class.values()):
        problems.append(f"report '{attack}' per-class accuracies are not all fractions in [0, 1]")
    elif "worst" in summary and _fraction(summary["worst"]) and \
            abs(min(per_class.values()) - summary["worst"]) > 1e-9:
        problems.append(f"report '{attack}' worst {summary['worst']} disagrees with its per-class "
                        f"minimum {min(per_class.values())}")
    return (None if problems else summary), problems


def _counts(entry: Any, names: list[str]) -> tuple[dict[str, int], dict[str, int]] | None:
    counts = entry.get("counts") if isinstance(entry, dict) else None
    if not isinstance(counts, dict):
        return None
    correct, total = counts.get("correct"), counts.get("total")
    ints = lambda d: isinstance(d, dict) and set(d) == set(names) and all(  # noqa: E731
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in d.values())
    if not (ints(correct) and ints(total)) or any(correct[n] > total[n] for n in names):
        return None
    return correct, total


def _entry_problems(name: str, entry: Any, names: list[str]) -> list[str]:
    """One attack's per-class numbers must be its counts, and its summary those numbers."""
    per_class = entry.get("per_class") if isinstance(entry, dict) else None
    if not isinstance(per_class, dict) or set(per_class) != set(names) or \
            not all(_fraction(v) for v in per_class.values()):
        return [f"report '{name}' per-class accuracies do not cover the classes {names}"]
    counts = _counts(entry, names)
    if counts is None:
        return [f"report '{name}' has no valid per-class counts (correct <= total, integers)"]
    correct, total = counts
    problems = [f"report '{name}' {c} accuracy {per_class[c]} is not its counts "
                f"{correct[c]}/{total[c]}" for c in names
                if total[c] == 0 or abs(per_class[c] - correct[c] / total[c]) > TOLERANCE]
    summary = entry.get("summary") if isinstance(entry.get("summary"), dict) else {}
    if not problems:
        expected = summarize({c: per_class[c] for c in names})
        for key in ("average", "worst", "best", "gap"):
            if key in summary and _fraction(summary[key]) and \
                    abs(summary[key] - expected[key]) > TOLERANCE:
                problems.append(f"report '{name}' summary {key} {summary[key]} is not its "
                                f"per-class {key} {expected[key]}")
        for key, value in (("worst_class", expected["worst"]), ("best_class", expected["best"])):
            if key in summary and abs(per_class.get(summary[key], -1.0) - value) > TOLERANCE:
                problems.append(f"report '{name}' summary {key} {summary[key]!r} is not a class "
                                f"at the per-class {key.split('_')[0]} {value}")
    return problems


def evidence_problems(report: dict[str, Any]) -> list[str]:
    """Internal consistency of a whole report (see the module docstring); [] when consistent.

    Why counts and not accuracies across attacks: AutoAttack (and so the worst case) may run on a
    per-class subset of the examples the other attacks ran on. Robust counts are monotone anyway:
    an example robust to the worst case is robust to every attack and correct when clean, and a
    subset cannot hold more robust examples than the whole, so worst_case <= attack <= clean in
    correct counts always, and in accuracy wherever the two cover the same examples.
    """
    names, attacks = report.get("class_names"), report.get("attacks")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return ["evaluation report has no class_names list"]
    if not isinstance(attacks, dict) or "clean" not in attacks:
        return ["evaluation report has no clean accuracy"]
    problems = [p for name, entry in attacks.items() for p in _entry_problems(name, entry, names)]
    if problems:
        return problems
    counts = {name: _counts(entry, names) for name, entry in attacks.items()}
    per_class = {name: entry["per_class"] for name, entry in attacks.items()}
    if report.get("examples_per_class") != counts["clean"][1]:
        problems.append("report examples_per_class is not the clean accuracy's totals")
    order = [("clean", name) for name in attacks if name != "clean"]
    if "worst_case" in attacks:
        order += [(name, "worst_case") for name in attacks if name not in ("clean", "worst_case")]
    for upper, lower in order:  # lower is a stricter test than upper
        (uc, ut), (lc, lt) = counts[upper], counts[lower]
        for c in names:
            if lt[c] > ut[c] or lc[c] > uc[c]:
                problems.append(f"report '{lower}' counts {lc[c]}/{lt[c]} for {c} exceed "
                                f"'{upper}' {uc[c]}/{ut[c]}: it cannot be the stricter result")
            elif lt[c] == ut[c] and per_class[lower][c] > per_class[upper][c] + TOLERANCE:
                problems.append(f"report '{lower}' accuracy of {c} {per_class[lower][c]} is above "
                                f"'{upper}' {per_class[upper][c]} on the same examples")
    return problems


def sanity_problems(report: dict[str, Any], cfg: GateConfig) -> list[str]:
    """A model at or below chance on some class is broken, whatever its robust numbers say."""
    clean = report["attacks"]["clean"]["per_class"]
    chance = 1.0 / len(clean)
    floor, strict = (chance, True) if cfg.min_clean_class is None else (cfg.min_clean_class, False)
    low = {c: v for c, v in clean.items() if (v <= floor if strict else v < floor)}
    if not low:
        return []
    listed = ", ".join(f"{c} {v:.1%}" for c, v in sorted(low.items(), key=lambda kv: kv[1]))
    rule = f"above chance ({chance:.1%})" if strict else f"at least min_clean_class {floor:.1%}"
    return [f"clean accuracy must be {rule} on every class; it is not on: {listed}"]
