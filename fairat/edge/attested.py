"""Attested mode at the edge: a registered version's evidence, downloaded and verified.

Why its own module: approve, `fairat models` and the guard must reach the same verdict on a
version from the same files; this is the one place that fetches a version's logged evidence from
MLflow and checks the signed statements (:mod:`fairat.evidence.attestation`) against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairat.evidence.approval import TAG


def version_evidence(mv: Any, public: Any, client: Any
                     ) -> tuple[list[str], dict[str, Any] | None]:
    """Attested mode: why version ``mv`` may not be promoted ([] = its evidence holds), and the
    gate's verified decision statement (None when there is none).

    The files register logged with the version (``fairat.evidence_path`` in the version's own
    run) are downloaded and hashed; the gate's decision and evaluate's report statement must
    verify with ``public`` and name exactly those model and report bytes, and the decision must
    be a pass. Tags are never read for the verdict: a tag copied from a passed version names
    files that are not this version's.
    """
    import tempfile

    from fairat.evidence.attestation import (DECISION_STATEMENT, REPORT_STATEMENT,
                                             envelope_from_sidecar, passed_statement_problems,
                                             statement_problems, verify)
    from fairat.evidence.gate import EVIDENCE_FILES
    from fairat.io import sha256_file

    path, run_id = dict(mv.tags).get(f"{TAG}evidence_path"), getattr(mv, "run_id", None)
    if not path or not run_id:
        return ["the version has no evidence logged by `fairat register` (no run, or no "
                f"{TAG}evidence_path)"], None
    source = str(getattr(mv, "source", "") or "")
    if source.startswith("models:/m-"):  # the served model must come from the evidence's run
        try:
            origin = client.get_logged_model(source[len("models:/"):].split("/")[0]).source_run_id
        except Exception as err:
            return [f"the version's model {source} cannot be read: {err}"[:300]], None
        if origin != run_id:
            return [f"the version serves model {source} of run {origin}, but its evidence is in "
                    f"run {run_id}"], None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(client.download_artifacts(run_id, path, tmp))
        except Exception as err:
            return [f"the version's evidence {path} cannot be read from run {run_id}: "
                    f"{type(err).__name__}: {err}"[:500]], None
        files = {key: local / name for key, name in EVIDENCE_FILES.items()}
        missing = [name for key, name in EVIDENCE_FILES.items() if not files[key].is_file()]
        if missing:
            return [f"the version's evidence {path} lacks {', '.join(missing)}"], None
        model_sha, report_sha = sha256_file(files["model"]), sha256_file(files["report"])
        try:
            envelope = json.loads(files["gate"].read_text()).get("attestation")
            sidecar = files["sidecar"].read_text()
        except (ValueError, AttributeError, UnicodeDecodeError) as err:
            return [f"the version's gate decision or sidecar is unreadable: {err}"], None
    statement, problems = verify(envelope, public, DECISION_STATEMENT)
    if statement is None:
        return [f"gate decision: {p}" for p in problems], None
    problems = statement_problems(statement, model_sha, report_sha)
    report, report_problems = verify(envelope_from_sidecar(sidecar), public, REPORT_STATEMENT)
    problems += [f"evaluation report: {p}" for p in report_problems] if report is None else \
        statement_problems(report, model_sha, report_sha)
    return problems or passed_statement_problems(statement), statement


def verified_fields(problems: list[str], statement: dict[str, Any] | None) -> dict[str, str]:
    """The verdict and numbers of a version in attested mode, from its verified statement."""
    decision = (statement or {}).get("decision") or {}
    measured = decision.get("measured") or {}
    fmt = lambda v: "" if v is None else f"{float(v):.6f}"  # noqa: E731
    return {"attested": "verified" if statement is not None else "unverified",
            "gate_passed": str(not problems).lower(), "gate_reasons": json.dumps(problems),
            "gate_informational": str(decision.get("informational") is True).lower(),
            "worst_class_robust": fmt(measured.get("worst")),
            "worst_class": str(measured.get("worst_class", "")),
            "average_robust": fmt(measured.get("average"))}
