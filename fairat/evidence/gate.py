"""Fairness gate: the decision on a report, and its re-check at registration.

The rules live by idea: report consistency in :mod:`fairat.evidence.report_checks`, how the
report was made in :mod:`fairat.evidence.protocol`, file provenance (sidecar, logged hash) in
:mod:`fairat.evidence.files`, signed statements in :mod:`fairat.evidence.attestation`, and who may
hold an alias in :mod:`fairat.evidence.approval`; this module combines them into the decision
(their names are importable from here too).

Why fail-closed: a model is promoted on evidence, so anything short of a complete, current,
untouched report blocks. A report blocks when it is missing, unreadable or malformed; computed on
another split or another model file (``provenance.model_sha256``); not the bytes the evaluate step
wrote (its sha256 sidecar, and the hash evaluate logged to MLflow, disagree); internally
inconsistent (a per-class accuracy that is not its counts, a summary that is not its per-class
numbers, a worst case above an attack it is the worst case of, a robust number above clean
accuracy); carries a consistency *error* (AutoAttack above PGD); or shows a model no better than
chance on some class. A gate whose thresholds are all zero judges nothing, so it is refused unless
the params call it ``informational`` (then it never passes: the version is never a candidate).
Every reason is listed so the owner can fix them all at once.

Accuracies are fractions in [0, 1]; ``measured`` repeats them so the decision file is readable alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairat.config import GateConfig, to_dict
from fairat.evidence.approval import (APPROVAL_KEY_ENV, APPROVAL_TAGS, EVIDENCE_TAGS, TAG,  # noqa: F401
                                      alias_problems, approval_problems, approval_signature)
from fairat.evidence.attestation import verify_key
from fairat.evidence.files import (_sha_or_none, provenance_problems, read_report,  # noqa: F401
                                   report_attestation_problems, sidecar_path, write_sidecar)
from fairat.evidence.verified import ReportEvidence, load_report_evidence
from fairat.evidence.protocol import protocol_problems
from fairat.evidence.report_checks import (SUMMARY_KEYS, _read_summary,  # noqa: F401
                                           evidence_problems, sanity_problems)
from fairat.io import sha256_file

# The names register gives the evidence it logs with a version (one folder per registration),
# so approve, the guard and `fairat models` find the files the signed decision is about.
EVIDENCE_FILES = {"model": "model.pt", "report": "eval.json", "sidecar": "eval.json.sha256",
                  "gate": "gate.json"}


def threshold_problems(cfg: GateConfig) -> list[str]:
    """A gate that judges nothing cannot pass a model; ``informational`` says that is intended."""
    judges = cfg.min_worst_class > 0 or bool(cfg.min_average) or \
        (cfg.max_gap is not None and cfg.max_gap < 1)
    if cfg.informational:
        return ["the gate is informational (params gate.informational: true): it records the "
                "numbers and never makes a candidate"]
    if not judges:
        return ["the gate's thresholds are all zero (min_worst_class 0, no min_average, no "
                "max_gap), so it would pass any model: set a threshold, or set "
                "gate.informational: true to record the numbers without a candidate"]
    return []


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
            evidence = evidence_problems(report)
            reasons += evidence
            if not evidence:
                reasons += sanity_problems(report, cfg)
            reasons += _provenance_problems(report, cfg, model_sha256)
            reasons += protocol_problems(report, cfg.protocol)
            consistency = report.get("consistency")
            if not isinstance(consistency, list):
                reasons.append("evaluation report has no consistency check list")
            else:
                reasons += [f"evaluation inconsistent: {w.get('message', w)}" for w in consistency
                            if isinstance(w, dict) and w.get("severity") == "error"]
    reasons += threshold_problems(cfg)
    measured = {k: summary[k] for k in SUMMARY_KEYS} if summary else None
    if summary:
        if summary["worst"] < cfg.min_worst_class:
            reasons.append(f"worst-class {cfg.attack} robust accuracy {summary['worst']:.1%} "
                           f"({summary['worst_class']}) is below min_worst_class "
                           f"{cfg.min_worst_class:.1%}")
        if cfg.min_average is not None and summary["average"] < cfg.min_average:
            reasons.append(f"average {cfg.attack} robust accuracy {summary['average']:.1%} is "
                           f"below min_average {cfg.min_average:.1%}")
        if cfg.max_gap is not None and summary["gap"] > cfg.max_gap:
            reasons.append(f"best-worst gap {100 * summary['gap']:.1f} points ({summary['best_class']} vs "
                           f"{summary['worst_class']}) is above max_gap {100 * cfg.max_gap:.1f} points")
    return {"passed": not reasons, "informational": cfg.informational,
            "attack": cfg.attack, "split": cfg.split,
            "measured": measured, "thresholds": to_dict(cfg), "reasons": reasons,
            "model_sha256": model_sha256}


def decide_files(cfg: GateConfig, report_path: str | Path, model_path: str | Path) -> dict[str, Any]:
    """:func:`decide` on the files at hand: the report at ``report_path`` for the model file at
    ``model_path``. The decision records both hashes, so registration can tell it is current."""
    report_path, model_path = Path(report_path), Path(model_path)
    model_sha = _sha_or_none(model_path)
    evidence = load_report_evidence(report_path, model_sha256=model_sha, public=verify_key())
    decision = decide(evidence.report, cfg, model_sha)
    if evidence.report is None:  # a precise "missing" / "not JSON" for decide's generic reason
        decision["reasons"] = []
    decision["reasons"][:0] = list(evidence.problems)
    if model_sha is None:
        decision["reasons"].insert(0, f"model file {model_path} is missing")
    decision["passed"] = not decision["reasons"]
    decision["report_path"] = str(report_path)
    decision["report_sha256"] = evidence.sha256
    return decision


def recorded_verdict(gate_path: str | Path) -> bool:
    """What the decision file says (``passed is True``), for wiring checks; unreadable = False."""
    try:
        decision = json.loads(Path(gate_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(decision, dict) and decision.get("passed") is True


def recheck_decision(gate_path: str | Path, model_path: str | Path, evidence: ReportEvidence,
                     ) -> tuple[dict[str, Any], str]:
    """The recorded decision at ``gate_path``, failed when it is not about these files.

    Why: registration acts on a decision file that anyone could have left behind; one made for
    another model file or another report, or a report that is not the bytes evaluate wrote
    (``evidence``, read once by the caller with the hash evaluate logged to MLflow), must never
    promote. Returns (decision with ``passed`` re-derived, model sha256). A missing model or gate
    file raises FileNotFoundError; an unreadable gate file blocks.
    """
    model_path, gate_path = Path(model_path), Path(gate_path)
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
    model_sha = sha256_file(model_path)
    if decision.get("model_sha256") != model_sha:
        reasons.append(f"gate decision is for model {decision.get('model_sha256')}, not "
                       f"{model_sha}; re-run the gate")
    if decision.get("report_sha256") != evidence.sha256:
        reasons.append("gate decision was made on another evaluation report; re-run it")
    reasons += [r for r in evidence.problems if r not in reasons]
    decision["reasons"] = reasons
    decision["passed"] = decision.get("passed") is True and not reasons \
        and decision.get("informational") is False
    decision.setdefault("attack", "unknown")
    return decision, model_sha


def decision_attestation_problems(envelope: Any, public: Any, model_sha256: str | None,
                                  report_sha256: str | None, passed: bool) -> list[str]:
    """Attested mode: the decision file must carry the gate's statement, signed, about these
    files, and saying what the file says (``passed``) ([] = it does)."""
    from fairat.evidence.attestation import DECISION_STATEMENT, statement_problems, verify

    statement, problems = verify(envelope, public, DECISION_STATEMENT)
    if statement is None:
        return [f"gate decision: {p} (attested mode: run the gate where the signing key is "
                "configured)" for p in problems]
    problems = statement_problems(statement, model_sha256, report_sha256)
    signed = statement.get("decision") or {}
    if passed and (signed.get("passed") is not True or signed.get("informational") is not False):
        problems.append("the gate decision file says passed, its signed statement does not")
    return problems


def gate_metrics(decision: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for DVC metrics / Kubeflow Metrics: passed (0/1) and the measured fractions."""
    out = {"passed": float(bool(decision["passed"]))}
    for key in ("average", "worst", "gap"):
        value = (decision.get("measured") or {}).get(key)
        if value is not None:
            out[f"{decision['attack']}_{key}"] = float(value)
    return out
