"""Fairness gate: a pure decision from an evaluation report and thresholds to pass / block.

Why fail-closed: a model is promoted on evidence, so anything short of a complete, current report
blocks. A report that is missing, unreadable, malformed, computed on another split or on another
model file (its ``provenance.model_sha256`` is not the trained model's hash), or that carries a
consistency *error* (AutoAttack above PGD, i.e. a broken evaluation) never passes, and every reason
is listed so the owner can fix them all at once.

Accuracies are fractions in [0, 1]; ``measured`` repeats them so the decision file is readable alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fairat.config import GateConfig, to_dict
from fairat.io import sha256_file

TAG = "fairat."  # prefix of every model-version tag this project sets
# Tags a version must carry before approval may consider it (registration writes them all).
EVIDENCE_TAGS = ("gate_passed", "gate_attack", "worst_class_robust", "average_robust",
                 "model_sha256", "data_content_hash", "report_sha256")
SUMMARY_KEYS = ("average", "worst", "worst_class", "best", "best_class", "gap")


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


def _provenance_problems(report: dict[str, Any], cfg: GateConfig,
                         model_sha256: str | None) -> list[str]:
    prov = report.get("provenance")
    if not isinstance(prov, dict):
        return ["evaluation report has no provenance"]
    problems = []
    if model_sha256 is not None and prov.get("model_sha256") != model_sha256:
        problems.append(f"stale evaluation: report is for model sha256 {prov.get('model_sha256')!r}, "
                        f"the trained model is {model_sha256!r}; re-run evaluate")
    if prov.get("split") != cfg.split:
        problems.append(f"report was computed on the {prov.get('split')!r} split; the gate "
                        f"judges the {cfg.split!r} split")
    return problems


def decide(report: Any, cfg: GateConfig, model_sha256: str | None) -> dict[str, Any]:
    """Gate decision for ``report`` (the parsed eval JSON, or None when it is missing).

    Args:
        report: evaluation report dict from :func:`fairat.engine.evaluation.evaluate`; None = missing.
        cfg: thresholds (fractions) and the attack and split they judge.
        model_sha256: hash of the model being gated; None skips the staleness check (tests only).
    Returns:
        {"passed", "attack", "split", "measured": {average, worst, worst_class, gap, ...},
         "thresholds", "reasons": [every failed check, human-readable], "model_sha256"}.
    """
    reasons: list[str] = []
    summary = None
    if report is None:
        reasons.append("evaluation report is missing")
    else:
        summary, problems = _read_summary(report, cfg.attack)
        reasons += problems
        if isinstance(report, dict):
            reasons += _provenance_problems(report, cfg, model_sha256)
            consistency = report.get("consistency")
            if not isinstance(consistency, list):
                reasons.append("evaluation report has no consistency check list")
            else:
                reasons += [f"evaluation inconsistent: {w.get('message', w)}" for w in consistency
                            if isinstance(w, dict) and w.get("severity") == "error"]
    measured = {k: summary[k] for k in SUMMARY_KEYS} if summary else None
    if summary:
        if summary["worst"] < cfg.min_worst_class:
            reasons.append(f"worst-class {cfg.attack} robust accuracy {summary['worst']:.4f} "
                           f"({summary['worst_class']}) is below min_worst_class "
                           f"{cfg.min_worst_class:.4f}")
        if cfg.min_average is not None and summary["average"] < cfg.min_average:
            reasons.append(f"average {cfg.attack} robust accuracy {summary['average']:.4f} is "
                           f"below min_average {cfg.min_average:.4f}")
        if cfg.max_gap is not None and summary["gap"] > cfg.max_gap:
            reasons.append(f"best-worst gap {summary['gap']:.4f} ({summary['best_class']} vs "
                           f"{summary['worst_class']}) is above max_gap {cfg.max_gap:.4f}")
    return {"passed": not reasons, "attack": cfg.attack, "split": cfg.split,
            "measured": measured, "thresholds": to_dict(cfg), "reasons": reasons,
            "model_sha256": model_sha256}


def load_report(path: str | Path) -> tuple[Any, list[str]]:
    """Parse the report at ``path``: (report, []) or (None, [why it could not be read])."""
    path = Path(path)
    if not path.is_file():
        return None, [f"evaluation report {path} is missing"]
    try:
        return json.loads(path.read_text()), []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, [f"evaluation report {path} is not valid JSON: {err}"]


def _sha_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def decide_files(cfg: GateConfig, report_path: str | Path, model_path: str | Path) -> dict[str, Any]:
    """:func:`decide` on the files at hand: the report at ``report_path`` for the model file at
    ``model_path``. The decision records both hashes, so registration can tell it is current."""
    report_path, model_path = Path(report_path), Path(model_path)
    report, problems = load_report(report_path)
    model_sha = _sha_or_none(model_path)
    decision = decide(report, cfg, model_sha)
    if problems:  # report is None: a precise "missing" / "not JSON" for decide's generic reason
        decision["reasons"] = problems
    if model_sha is None:
        decision["reasons"].insert(0, f"model file {model_path} is missing")
    decision["passed"] = not decision["reasons"]
    decision["report_path"] = str(report_path)
    decision["report_sha256"] = _sha_or_none(report_path)
    return decision


def recorded_verdict(gate_path: str | Path) -> bool:
    """What the decision file says (``passed is True``), for wiring checks; unreadable = False."""
    try:
        decision = json.loads(Path(gate_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(decision, dict) and decision.get("passed") is True


def recheck_decision(gate_path: str | Path, model_path: str | Path,
                     report_path: str | Path) -> tuple[dict[str, Any], str, str | None]:
    """The recorded decision at ``gate_path``, failed when it is not about these files.

    Why: registration acts on a decision file that anyone could have left behind; one made for
    another model file or another report must never promote. Returns (decision with ``passed``
    re-derived, model sha256, report sha256 or None). A missing model or gate file raises
    FileNotFoundError; an unreadable gate file blocks.
    """
    model_path, report_path, gate_path = Path(model_path), Path(report_path), Path(gate_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"register: model file {model_path} is missing")
    if not gate_path.is_file():
        raise FileNotFoundError(f"register: gate decision {gate_path} is missing; run the gate")
    try:
        decision = json.loads(gate_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        decision = {"passed": False, "reasons": [f"gate decision {gate_path} is not JSON: {err}"]}
    if not isinstance(decision, dict):
        decision = {"passed": False, "reasons": [f"gate decision {gate_path} is not an object"]}
    reasons = decision.get("reasons")
    reasons = list(reasons) if isinstance(reasons, list) else ["gate decision lists no reasons"]
    model_sha, report_sha = sha256_file(model_path), _sha_or_none(report_path)
    if decision.get("model_sha256") != model_sha:
        reasons.append(f"gate decision is for model {decision.get('model_sha256')}, not "
                       f"{model_sha}; re-run the gate")
    if decision.get("report_sha256") != report_sha:
        reasons.append("gate decision was made on another evaluation report; re-run it")
    decision["reasons"] = reasons
    decision["passed"] = decision.get("passed") is True and not reasons
    decision.setdefault("attack", "unknown")
    return decision, model_sha, report_sha


def gate_metrics(decision: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for DVC metrics / Kubeflow Metrics: passed (0/1) and the measured fractions."""
    out = {"passed": float(bool(decision["passed"]))}
    for key in ("average", "worst", "gap"):
        value = (decision.get("measured") or {}).get(key)
        if value is not None:
            out[f"{decision['attack']}_{key}"] = float(value)
    return out


def approval_problems(tags: dict[str, str]) -> list[str]:
    """Why a version with these tags must not become champion ([] = it may)."""
    problems = [f"evidence tag {TAG}{key} is missing" for key in EVIDENCE_TAGS
                if not tags.get(f"{TAG}{key}")]
    passed = tags.get(f"{TAG}gate_passed")
    if passed is not None and passed != "true":
        reasons = tags.get(f"{TAG}gate_reasons", "[]")
        try:
            listed = "; ".join(json.loads(reasons))
        except (json.JSONDecodeError, TypeError):
            listed = reasons
        problems.insert(0, f"the fairness gate did not pass: {listed or 'no reasons recorded'}")
    return problems
