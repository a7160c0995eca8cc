"""A verified report: one evaluation report read, hashed and judged once per step.

Why apart from :mod:`fairat.evidence.files` (which evaluate uses to write the sidecar): the
consistency rules this value applies are not evaluate's code, so an edit to them must not make
`dvc.yaml`'s evaluate stage (minutes of attacks) stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairat.errors import DataError
from fairat.evidence.files import (_sha_or_none, provenance_problems, read_report,
                                   report_attestation_problems)
from fairat.evidence.report_checks import evidence_problems


@dataclass(frozen=True)
class ReportEvidence:
    """One evaluation report as a step received it: parsed, hashed and judged once.

    Why one value: the gate, compare and register used to parse and hash the same file again in
    each check; a file swapped between two reads could then pass one check with its hash and
    another with its numbers. Every rule of a step now reads this value, so they all judge the
    same bytes, and :meth:`unchanged` is the one re-hash, right before a step acts.
    ``problems``: missing, unreadable or not JSON; not the bytes evaluate wrote (sidecar, logged
    hash); in attested mode, no valid signed statement about these bytes and the model.
    """

    path: Path
    report: Any
    sha256: str | None
    problems: tuple[str, ...]

    def require(self, role: str) -> dict[str, Any]:
        """The report, or DataError naming ``role`` when it is not the untouched, consistent
        output of the evaluate step (the same checks the gate makes)."""
        problems = list(self.problems) or evidence_problems(self.report)
        if problems:
            raise DataError(f"{role} evaluation report: " + "; ".join(problems))
        return self.report

    def unchanged(self) -> bool:
        """Whether the file still holds the bytes this value was made from."""
        return self.sha256 is not None and _sha_or_none(self.path) == self.sha256


def load_report_evidence(path: str | Path, logged_sha256: str | None = None,
                         model_sha256: str | None = None, public: Any = None) -> ReportEvidence:
    """Read, hash and check the report at ``path`` once (see :class:`ReportEvidence`).

    ``logged_sha256``: the hash evaluate logged to the MLflow run, when known. ``public``: the
    verify key in attested mode (then the sidecar's signed statement must name these bytes and
    ``model_sha256``)."""
    path = Path(path)
    report, sha, unreadable = read_report(path)
    problems = [] if sha is None else (
        (report_attestation_problems(path, sha, model_sha256, public) if public is not None else [])
        + provenance_problems(path, logged_sha256, sha))
    return ReportEvidence(path, report, sha, tuple(problems + unreadable))
