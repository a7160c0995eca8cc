"""The trained model against the PGD-AT baseline trained beside it: weakest-class lift and cost.

Why this is evidence of its own: a fairness method is worth running only if it lifts the weakest
class over plain adversarial training *on the same data, seed and budget*, at a cost a team can
pay. A number against a baseline from another data version, another radius or another epoch
budget says nothing, so the comparison first checks that the two evaluations are comparable and,
when they are not, gives its reasons and no lift at all. Both reports must be the bytes the
evaluate step wrote (their sha256 sidecars) and internally consistent, the same checks the gate
makes: an edited baseline report could otherwise fake a lift on the model card.

One run each: seed-to-seed spread is not in these numbers (docs/results.md measures it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairat.engine.methods import method_fields
from fairat.evidence.verified import load_report_evidence
from fairat.evidence.gate import TAG

BASELINE_METHOD = "pgd_at"
# TrainConfig fields a method sets for itself (the registry's, plus the method's name and the
# display-only progress switch); every other training field must match the baseline
METHOD_FIELDS = ("method", *method_fields(), "progress")


def verified_report(path: str | Path, role: str) -> tuple[dict[str, Any], str]:
    """The report at ``path`` and the sha256 of the bytes parsed, refused (DataError naming
    ``role``) unless it is the untouched, consistent output of the evaluate step."""
    evidence = load_report_evidence(path)
    return evidence.require(role), str(evidence.sha256)


def _config(report: dict[str, Any]) -> dict[str, Any]:
    return (report.get("provenance") or {}).get("train_config") or {}


def comparability_problems(report: dict[str, Any], baseline: dict[str, Any],
                           attack: str) -> list[str]:
    """Why the two evaluations cannot be compared; [] when they can."""
    problems = []
    prov, base_prov = report.get("provenance") or {}, baseline.get("provenance") or {}
    for key, what in (("data_content_hash", "data"), ("split", "split")):
        if prov.get(key) != base_prov.get(key):
            problems.append(f"evaluated on other {what} ({key} {base_prov.get(key)!r}, this "
                            f"model {prov.get(key)!r})")
    if report.get("eps") != baseline.get("eps"):
        problems.append(f"evaluated at another radius (eps {baseline.get('eps')}, this model "
                        f"{report.get('eps')})")
    if report.get("class_names") != baseline.get("class_names"):
        problems.append("evaluated on other classes")
    for name, rep in (("this model", report), ("baseline", baseline)):
        if attack not in rep.get("attacks", {}):
            problems.append(f"the {name}'s report has no '{attack}' result")
    config, base_config = _config(report), _config(baseline)
    base_method = base_config.get("train", {}).get("method")
    if base_method != BASELINE_METHOD:
        problems.append(f"the baseline was trained with {base_method!r}, not {BASELINE_METHOD!r}")
    if config.get("model") != base_config.get("model"):
        problems.append("the baseline has another architecture (model params differ)")
    train, base_train = config.get("train", {}), base_config.get("train", {})
    differ = sorted(k for k in set(train) | set(base_train)
                    if k not in METHOD_FIELDS and train.get(k) != base_train.get(k))
    if differ:
        problems.append("the baseline was trained on another budget or schedule (train."
                        + ", train.".join(differ) + " differ)")
    return problems


# A training's time is its method's cost only when it had the machine to itself: a 1-minute load
# above the usable cores by more than this means other work competed for them at some epoch end.
# (Kept here, not in fairat.provenance, which imports torch: the pipeline wiring reads this module.)
LOAD_MARGIN = 0.5


def cost_problem(report: dict[str, Any], baseline: dict[str, Any]) -> str | None:
    """Why the two training times are no cost ratio, or None when they are: both trainings must
    have run, every session, on one recorded machine, the same for both. A Kubeflow pod on
    another node, or a run resumed on another machine, would otherwise put a hardware ratio on
    the model card as the method's cost."""
    machines = [(r.get("provenance") or {}).get("train_machine") for r in (report, baseline)]
    for who, m, rep in (("this model's", machines[0], report), ("the baseline's", machines[1],
                                                               baseline)):
        if not m:
            sessions = (rep.get("provenance") or {}).get("train_sessions")
            return (f"{who} training ran in {sessions} sessions not all on one recorded machine"
                    if isinstance(sessions, int) and sessions > 1 else
                    f"{who} model file does not record the machine it trained on (written "
                    "before fairat recorded it)")
    if machines[0] != machines[1]:
        return (f"the two trained on different machines (this model: {machines[0]}; baseline: "
                f"{machines[1]}), so their time ratio would measure the machines")
    for who, rep in (("this model's", report), ("the baseline's", baseline)):
        prov = rep.get("provenance") or {}
        load, cores = prov.get("train_max_load"), prov.get("train_cores")
        if isinstance(load, (int, float)) and isinstance(cores, int) and \
                load > cores + LOAD_MARGIN:
            return (f"{who} training ran under load (1-minute load up to {load:.1f} on {cores} "
                    "usable cores: other work shared them), so the ratio would measure that work")
    return None


def compare(report: dict[str, Any], baseline: dict[str, Any], attack: str,
            seconds: float | None = None, baseline_seconds: float | None = None) -> dict[str, Any]:
    """This model's weakest class and average against the baseline's on ``attack``; the
    training-time ratio when both times are known and were measured on the same machine
    (``cost_note`` says why not otherwise). Lifts are fractions (0.05 = 5 points) and are None
    when the two are not comparable (``reasons`` says why)."""
    reasons = comparability_problems(report, baseline, attack)
    timed = seconds is not None and bool(baseline_seconds)
    note = cost_problem(report, baseline) if timed else None
    out: dict[str, Any] = {
        "comparable": not reasons, "reasons": reasons, "attack": attack,
        "method": _config(report).get("train", {}).get("method"),
        "baseline_method": _config(baseline).get("train", {}).get("method"),
        "seconds": seconds, "baseline_seconds": baseline_seconds,
        "time_ratio": seconds / baseline_seconds if timed and note is None else None,
        "cost_note": note,
        "train_machine": (report.get("provenance") or {}).get("train_machine"),
    }
    if reasons:
        return out
    mine, base = report["attacks"][attack], baseline["attacks"][attack]
    weakest = base["summary"]["worst_class"]  # the class the baseline leaves weakest
    out.update(
        worst=mine["summary"]["worst"], worst_class=mine["summary"]["worst_class"],
        average=mine["summary"]["average"],
        baseline_worst=base["summary"]["worst"], baseline_worst_class=weakest,
        baseline_average=base["summary"]["average"],
        worst_lift=mine["summary"]["worst"] - base["summary"]["worst"],
        average_lift=mine["summary"]["average"] - base["summary"]["average"],
        baseline_weakest_now=mine["per_class"][weakest],
    )
    return out


def comparison_metrics(comparison: dict[str, Any]) -> dict[str, float]:
    """The numbers alone (what `dvc metrics` and `dvc exp show` compare); none if incomparable."""
    keys = ("worst_lift", "average_lift", "worst", "average", "baseline_worst",
            "baseline_average", "baseline_weakest_now", "time_ratio")
    return {k: comparison[k] for k in keys if isinstance(comparison.get(k), (int, float))}


def comparison_tags(comparison: dict[str, Any] | None) -> dict[str, str]:
    """Model-version tags (strings) for ``fairat models`` and the MLflow version page."""
    if comparison is None:
        return {}
    tags = {"baseline_comparable": str(bool(comparison["comparable"])).lower(),
            "baseline_run_id": comparison.get("baseline_run_id") or ""}
    if comparison.get("cost_note"):  # why no time ratio is tagged
        tags["time_ratio_note"] = str(comparison["cost_note"])[:5000]
    names = {"worst_lift": "worst_lift_over_baseline", "average_lift": "average_lift_over_baseline",
             "time_ratio": "time_ratio_over_baseline", "baseline_worst": "baseline_worst",
             "baseline_average": "baseline_average"}  # this model's own numbers are tagged already
    for key, value in comparison_metrics(comparison).items():
        if key in names:
            tags[names[key]] = f"{value:.6f}"
    return {f"{TAG}{k}": v for k, v in tags.items()}


def comparison_lines(comparison: dict[str, Any]) -> list[str]:
    """What a person reads: one line per fact, for the console and the model card."""
    if not comparison["comparable"]:
        return ["The baseline beside this model is not comparable: "
                + "; ".join(comparison["reasons"]) + "."]
    c = comparison
    lines = [f"{c['attack']}: weakest class {100 * c['worst']:.1f}% ({c['worst_class']}) against "
             f"{100 * c['baseline_worst']:.1f}% ({c['baseline_worst_class']}) for "
             f"{c['baseline_method']}, {100 * c['worst_lift']:+.1f} points; average "
             f"{100 * c['average']:.1f}% against {100 * c['baseline_average']:.1f}%, "
             f"{100 * c['average_lift']:+.1f} points",
             f"the baseline's weakest class ({c['baseline_worst_class']}) is at "
             f"{100 * c['baseline_weakest_now']:.1f}% here"]
    if c.get("time_ratio") is not None:
        lines.append(f"training took {c['seconds']:.0f} s against {c['baseline_seconds']:.0f} s "
                     f"({c['time_ratio']:.2f}x the baseline's, both on {c['train_machine']}; "
                     "wall time on a shared machine varies by about 10%"
                     + ("" if c.get("seconds_checked", True) else
                        "; from the training summaries, which are not hash-checked") + ")")
    elif c.get("cost_note"):
        lines.append(f"training took {c['seconds']:.0f} s against {c['baseline_seconds']:.0f} s, "
                     f"but that is no cost ratio: {c['cost_note']}")
    return lines
