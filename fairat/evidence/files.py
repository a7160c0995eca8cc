"""File provenance: the report on disk is the bytes the evaluate step wrote.

Why: the gate and register act on files anyone with the working tree can edit. The report is read
once (numbers and hash from the same bytes), evaluate's sha256 sidecar (and, in attested mode, its
signed statement on the sidecar's second line) must name those bytes, and the hash evaluate logged
on the MLflow run must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairat.io import sha256_bytes, sha256_file


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
