"""Fairness gate and approval rules: every rule that can block a promotion lives here.

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
import math
from pathlib import Path
from typing import Any

from fairat.config import GateConfig, to_dict
from fairat.engine.metrics import summarize
from fairat.evidence.attestation import verify_key
from fairat.evidence.protocol import protocol_problems
from fairat.io import sha256_bytes, sha256_file

TAG = "fairat."  # prefix of every model-version tag this project sets
# Tags a version must carry before approval may consider it (registration writes them all).
EVIDENCE_TAGS = ("gate_passed", "gate_attack", "worst_class_robust", "average_robust",
                 "model_sha256", "data_content_hash", "report_sha256")
# The names register gives the evidence it logs with a version (one folder per registration),
# so approve, the guard and `fairat models` find the files the signed decision is about.
EVIDENCE_FILES = {"model": "model.pt", "report": "eval.json", "sidecar": "eval.json.sha256",
                  "gate": "gate.json"}
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
    listed = ", ".join(f"{c} {v:.3f}" for c, v in sorted(low.items(), key=lambda kv: kv[1]))
    rule = f"above chance ({chance:.3f})" if strict else f"at least min_clean_class {floor:.3f}"
    return [f"clean accuracy must be {rule} on every class; it is not on: {listed}"]


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
            reasons.append(f"worst-class {cfg.attack} robust accuracy {summary['worst']:.4f} "
                           f"({summary['worst_class']}) is below min_worst_class "
                           f"{cfg.min_worst_class:.4f}")
        if cfg.min_average is not None and summary["average"] < cfg.min_average:
            reasons.append(f"average {cfg.attack} robust accuracy {summary['average']:.4f} is "
                           f"below min_average {cfg.min_average:.4f}")
        if cfg.max_gap is not None and summary["gap"] > cfg.max_gap:
            reasons.append(f"best-worst gap {summary['gap']:.4f} ({summary['best_class']} vs "
                           f"{summary['worst_class']}) is above max_gap {cfg.max_gap:.4f}")
    return {"passed": not reasons, "informational": cfg.informational,
            "attack": cfg.attack, "split": cfg.split,
            "measured": measured, "thresholds": to_dict(cfg), "reasons": reasons,
            "model_sha256": model_sha256}


def read_report(path: str | Path) -> tuple[Any, str | None, list[str]]:
    """Read the report at ``path`` once: (report, sha256 of the very bytes parsed, problems).

    Why one read: a check that parses the file and then hashes it again can be fooled by a file
    swapped in between (numbers from one file, the untouched hash of another), so every rule
    judges the bytes whose hash it records. (None, None, [why]) when missing; (None, sha256,
    [why]) when unparseable.
    """
    path = Path(path)
    if not path.is_file():
        return None, None, [f"evaluation report {path} is missing"]
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, None, [f"evaluation report {path} cannot be read: {err}"]
    digest = sha256_bytes(data)
    try:
        return json.loads(data.decode("utf-8")), digest, []
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, digest, [f"evaluation report {path} is not valid JSON: {err}"]


def load_report(path: str | Path) -> tuple[Any, list[str]]:
    """Parse the report at ``path``: (report, []) or (None, [why it could not be read])."""
    report, _, problems = read_report(path)
    return report, problems


def _sha_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def sidecar_path(report_path: str | Path) -> Path:
    """Where evaluate records the report's sha256: ``eval.json`` -> ``eval.json.sha256``."""
    return Path(f"{report_path}.sha256")


def write_sidecar(report_path: str | Path, model_sha256: str | None = None,
                  split: str | None = None) -> str:
    """Record the sha256 of the report just written (``sha256sum`` format); returns the hash.

    With a signing key in the environment a second line carries evaluate's signed statement
    (report hash, model hash, split), which the gate checks in attested mode."""
    from fairat.evidence.attestation import report_statement, sidecar_line, sign, signing_key
    from fairat.io import write_text_atomic

    digest = sha256_file(report_path)
    text = f"{digest}  {Path(report_path).name}\n"
    private = signing_key()
    if private is not None:
        text += sidecar_line(sign(report_statement(digest, model_sha256, split), private)) + "\n"
    write_text_atomic(sidecar_path(report_path), text)
    return digest


def report_attestation_problems(report_path: str | Path, report_sha256: str | None,
                                model_sha256: str | None, public: Any) -> list[str]:
    """Attested mode: the sidecar must carry evaluate's statement, signed by the key whose public
    half is ``public``, about these very report and model bytes ([] = it does)."""
    from fairat.evidence.attestation import (REPORT_STATEMENT, envelope_from_sidecar,
                                             statement_problems, verify)

    if report_sha256 is None:
        return []  # a missing report has its own reason
    try:
        text = sidecar_path(report_path).read_text()
    except (OSError, UnicodeDecodeError):
        return []  # provenance_problems names the missing sidecar
    statement, problems = verify(envelope_from_sidecar(text), public, REPORT_STATEMENT)
    if statement is not None:
        problems = statement_problems(statement, model_sha256, report_sha256)
    return [f"evaluation report {report_path}: {p} (attested mode: only evaluate, holding the "
            "signing key, makes a report the gate accepts)" for p in problems]


def provenance_problems(report_path: str | Path, logged_sha256: str | None = None,
                        actual: str | None = None) -> list[str]:
    """The report must be the bytes evaluate wrote: its sidecar (and, when given, the hash
    evaluate logged to the MLflow run) must name its sha256. ``actual`` is the hash of the bytes
    the caller parsed (:func:`read_report`); without it the file is hashed now."""
    report_path = Path(report_path)
    actual = actual or _sha_or_none(report_path)
    if actual is None:
        return []  # a missing report has its own reason
    side = sidecar_path(report_path)
    try:
        recorded = side.read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return [f"evaluation report {report_path} has no sha256 record from the evaluate step "
                f"({side.name} is missing or empty); re-run evaluate"]
    problems = []
    if recorded != actual:
        problems.append(f"evaluation report {report_path} is not the file the evaluate step wrote "
                        f"(sha256 {actual[:12]}..., evaluate recorded {recorded[:12]}...): it was "
                        "edited or replaced; re-run evaluate")
    if logged_sha256 is not None and logged_sha256 != actual:
        problems.append(f"evaluation report {report_path} is not the one evaluate logged to the "
                        f"MLflow run (sha256 {logged_sha256[:12] or 'none'}...); re-run evaluate")
    return problems


def decide_files(cfg: GateConfig, report_path: str | Path, model_path: str | Path) -> dict[str, Any]:
    """:func:`decide` on the files at hand: the report at ``report_path`` for the model file at
    ``model_path``. The decision records both hashes, so registration can tell it is current."""
    report_path, model_path = Path(report_path), Path(model_path)
    report, report_sha, problems = read_report(report_path)
    model_sha = _sha_or_none(model_path)
    decision = decide(report, cfg, model_sha)
    if problems:  # report is None: a precise "missing" / "not JSON" for decide's generic reason
        decision["reasons"] = problems
    decision["reasons"][:0] = provenance_problems(report_path, actual=report_sha)
    public = verify_key()
    if public is not None:
        decision["reasons"][:0] = report_attestation_problems(report_path, report_sha, model_sha,
                                                              public)
    if model_sha is None:
        decision["reasons"].insert(0, f"model file {model_path} is missing")
    decision["passed"] = not decision["reasons"]
    decision["report_path"] = str(report_path)
    decision["report_sha256"] = report_sha
    return decision


def recorded_verdict(gate_path: str | Path) -> bool:
    """What the decision file says (``passed is True``), for wiring checks; unreadable = False."""
    try:
        decision = json.loads(Path(gate_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(decision, dict) and decision.get("passed") is True


def recheck_decision(gate_path: str | Path, model_path: str | Path, report_path: str | Path,
                     logged_report_sha256: str | None = None,
                     ) -> tuple[dict[str, Any], str, str | None]:
    """The recorded decision at ``gate_path``, failed when it is not about these files.

    Why: registration acts on a decision file that anyone could have left behind; one made for
    another model file or another report, or a report that is not the bytes evaluate wrote (its
    sidecar, and ``logged_report_sha256``, the hash evaluate logged to MLflow, when known), must
    never promote. Returns (decision with ``passed`` re-derived, model sha256, report sha256 or
    None). A missing model or gate file raises FileNotFoundError; an unreadable gate file blocks.
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
    reasons += [r for r in provenance_problems(report_path, logged_report_sha256, report_sha)
                if r not in reasons]
    decision["reasons"] = reasons
    decision["passed"] = decision.get("passed") is True and not reasons \
        and decision.get("informational") is False
    decision.setdefault("attack", "unknown")
    return decision, model_sha, report_sha


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
    if (statement.get("decision") or {}).get("passed") is not passed:
        problems.append("the gate decision file disagrees with its signed statement")
    return problems


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


APPROVAL_KEY_ENV = "FAIRAT_APPROVAL_KEY"  # HMAC key shared by `fairat approve` and `fairat guard`
APPROVAL_TAGS = ("approved_by", "approved_at", "approved_model_sha256")


def approval_signature(key: str, model_name: str, version: str | int, tags: dict[str, str]) -> str:
    """HMAC-SHA256 over what an approval asserts: this model file, this version, by whom, when.

    Why signed: anyone who can edit a version's tags in the MLflow UI can also type an
    ``approved_by`` tag; only holders of the approval key can produce this signature.
    """
    import hashlib
    import hmac

    fields = [model_name, str(version), *(tags.get(f"{TAG}{k}", "") for k in APPROVAL_TAGS)]
    return hmac.new(key.encode(), "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def alias_problems(alias: str, model_name: str, version: str | int, tags: dict[str, str],
                   approval_key: str | None,
                   evidence: tuple[list[str], dict[str, Any] | None] | None = None) -> list[str]:
    """Why ``alias`` must not sit on this version ([] = it may); what `fairat guard` enforces.

    ``candidate`` needs the evidence of a passed, non-informational gate. ``champion`` needs that
    and an approval record from `fairat approve` for this very model file, signed with the
    approval key when one is configured. ``evidence``: in attested mode, the verification of the
    version's signed decision against its logged files (problems, statement), which replaces
    the evidence tags; None is local mode (the tags register wrote).
    """
    if alias not in ("candidate", "champion"):
        return []
    if evidence is None:  # a failed or informational gate: gate_passed is not true
        problems, model_sha = approval_problems(tags), tags.get(f"{TAG}model_sha256")
    else:
        problems, model_sha = list(evidence[0]), (evidence[1] or {}).get("model_sha256")
    if alias == "champion":
        missing = [k for k in APPROVAL_TAGS if not tags.get(f"{TAG}{k}")]
        if missing:
            problems.append("no approval record from `fairat approve` (missing "
                            + ", ".join(f"{TAG}{k}" for k in missing) + ")")
        elif tags.get(f"{TAG}approved_model_sha256") != model_sha:
            problems.append("the approval record is for another model file")
        if approval_key and not missing:
            import hmac

            want = approval_signature(approval_key, model_name, version, tags)
            if not hmac.compare_digest(tags.get(f"{TAG}approval_signature", ""), want):
                problems.append("the approval record is not signed with the approval key "
                                f"({APPROVAL_KEY_ENV}): it was not written by `fairat approve`")
    return problems
