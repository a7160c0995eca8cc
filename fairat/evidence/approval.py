"""Approval and aliases: who may hold ``candidate`` and ``champion``, and the approval record.

Why apart from the decision: these rules judge a *registered version* (its tags in local mode, its
verified signed decision in attested mode, see :mod:`fairat.evidence.attestation`) and are shared
by `fairat approve`, `fairat guard` and `fairat models`; the gate itself never reads them.
"""

from __future__ import annotations

import json
from typing import Any

from fairat.artifacts import TAG  # prefix of every model-version tag this project sets
# Tags a version must carry before approval may consider it (registration writes them all).
EVIDENCE_TAGS = ("gate_passed", "gate_attack", "worst_class_robust", "average_robust",
                 "model_sha256", "data_content_hash", "report_sha256")


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
