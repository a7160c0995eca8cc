"""Signed statements: what evaluate and the gate attest, checked with a public key only.

Why: a decision kept in MLflow tags is a claim anyone with edit rights can copy or type. Here
evaluate signs *"the report with sha256 R was written for the model with sha256 M"* and the gate
signs *"under policy P, the report R of model M was judged: passed / blocked, for these
reasons"*, with an Ed25519 private key that only the pipeline's runner holds. Register, approve,
the guard and `fairat models` verify those statements with the public key against the model and
report files logged with the version: a copied tag, an edited file, or a statement made for other
files fails, whoever wrote it.

Keys come from the environment only (never params, logs or MLflow):
- ``FAIRAT_SIGNING_KEY`` (the PEM text) or ``FAIRAT_SIGNING_KEY_FILE`` (its path): the private
  key, for evaluate and the gate;
- ``FAIRAT_VERIFY_KEY`` / ``FAIRAT_VERIFY_KEY_FILE``: the public key, for everything that checks
  (derived from the private key when only that is set).
Make a pair with ``openssl genpkey -algorithm ed25519 -out signing.pem`` and ``openssl pkey -in
signing.pem -pubout -out verify.pem`` (docs/guard.md).

With no key configured the project runs in *local mode*: hashes, sidecars and tags as before,
which guards against accidents, not adversaries (:data:`LOCAL_MODE`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

SIGNING_KEY_ENV, SIGNING_KEY_FILE_ENV = "FAIRAT_SIGNING_KEY", "FAIRAT_SIGNING_KEY_FILE"
VERIFY_KEY_ENV, VERIFY_KEY_FILE_ENV = "FAIRAT_VERIFY_KEY", "FAIRAT_VERIFY_KEY_FILE"
ALGORITHM = "ed25519"
REPORT_STATEMENT, DECISION_STATEMENT = "fairat.report/v1", "fairat.decision/v1"
LOCAL_MODE = (f"local mode: no signing key ({SIGNING_KEY_ENV} / {VERIFY_KEY_ENV}) is configured, "
              "so decisions rest on hashes and tags that guard against accidents, not "
              "adversaries (docs/guard.md)")


class SigningKeyError(ValueError):
    """A key named in the environment cannot be read or is not an Ed25519 key."""


def _pem(text_env: str, file_env: str) -> bytes | None:
    text, path = os.environ.get(text_env, "").strip(), os.environ.get(file_env, "").strip()
    if text:
        return text.encode()
    if path:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise SigningKeyError(f"{file_env} names {path!r}, which cannot be read: {err}") from None
    return None


def signing_key() -> Any | None:
    """The Ed25519 private key from the environment, or None (local mode)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem = _pem(SIGNING_KEY_ENV, SIGNING_KEY_FILE_ENV)
    if pem is None:
        return None
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:  # never echo the key itself
        raise SigningKeyError(f"the signing key ({SIGNING_KEY_ENV} / {SIGNING_KEY_FILE_ENV}) is not "
                        f"an unencrypted PEM private key: {type(err).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"the signing key is a {type(key).__name__}, not Ed25519")
    return key


def verify_key() -> Any | None:
    """The Ed25519 public key from the environment (or derived from the private key), or None."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = _pem(VERIFY_KEY_ENV, VERIFY_KEY_FILE_ENV)
    if pem is None:
        private = signing_key()
        return None if private is None else private.public_key()
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as err:
        raise SigningKeyError(f"the verify key ({VERIFY_KEY_ENV} / {VERIFY_KEY_FILE_ENV}) is not a PEM "
                        f"public key: {type(err).__name__}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"the verify key is a {type(key).__name__}, not Ed25519")
    return key


def key_id(public: Any) -> str:
    """A short, stable name for a public key (sha256 of its raw bytes, 16 hex digits)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def canonical(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, ASCII (one form per statement)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def sign(statement: dict[str, Any], private: Any) -> dict[str, Any]:
    """``statement`` with its Ed25519 signature: {statement, algorithm, key_id, signature}."""
    return {"statement": statement, "algorithm": ALGORITHM,
            "key_id": key_id(private.public_key()),
            "signature": base64.b64encode(private.sign(canonical(statement))).decode()}


def verify(envelope: Any, public: Any, kind: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The statement of ``envelope`` when its signature verifies with ``public`` and it is of
    ``kind``; else (None, [why])."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(envelope, dict) or not isinstance(envelope.get("statement"), dict):
        return None, [f"no signed {kind} statement"]
    statement = envelope["statement"]
    if envelope.get("algorithm") != ALGORITHM:
        return None, [f"the {kind} statement is not signed with {ALGORITHM}"]
    try:
        public.verify(base64.b64decode(str(envelope.get("signature", "")), validate=True),
                      canonical(statement))
    except (InvalidSignature, ValueError, TypeError):
        return None, [f"the {kind} statement's signature does not verify with the configured "
                      f"public key (key {key_id(public)}): it was altered or signed by another "
                      "key"]
    if statement.get("type") != kind:
        return None, [f"the signed statement is a {statement.get('type')!r}, not {kind!r}"]
    return statement, []


# ----------------------------------------------------------------------------- the statements

def report_statement(report_sha256: str, model_sha256: str | None, split: str | None
                     ) -> dict[str, Any]:
    """What evaluate attests: it wrote these report bytes for this model file, on this split."""
    return {"type": REPORT_STATEMENT, "report_sha256": report_sha256,
            "model_sha256": model_sha256, "split": split}


DECISION_FIELDS = ("passed", "informational", "attack", "split", "measured", "reasons")


def decision_statement(decision: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    """What the gate attests: under ``policy`` (params ``gate``, protocol included), the report
    and model named by their hashes were judged so."""
    return {"type": DECISION_STATEMENT, "model_sha256": decision.get("model_sha256"),
            "report_sha256": decision.get("report_sha256"), "policy": policy,
            "decision": {k: decision.get(k) for k in DECISION_FIELDS}}


def statement_problems(statement: dict[str, Any], model_sha256: str | None,
                       report_sha256: str | None) -> list[str]:
    """Why a verified statement is not about these files ([] = it is)."""
    problems = []
    if statement.get("model_sha256") != model_sha256:
        problems.append(f"the signed {statement.get('type')} statement is for model sha256 "
                        f"{str(statement.get('model_sha256'))[:12]}..., not this model "
                        f"({str(model_sha256)[:12]}...)")
    if statement.get("report_sha256") != report_sha256:
        problems.append(f"the signed {statement.get('type')} statement is for report sha256 "
                        f"{str(statement.get('report_sha256'))[:12]}..., not this report "
                        f"({str(report_sha256)[:12]}...)")
    return problems


def passed_statement_problems(statement: dict[str, Any]) -> list[str]:
    """Why a verified decision statement does not let a version be promoted ([] = it does)."""
    decision = statement.get("decision") or {}
    if decision.get("informational") is not False:
        return ["the signed decision is from an informational gate: it never makes a candidate"]
    if decision.get("passed") is not True:
        listed = "; ".join(map(str, decision.get("reasons") or [])) or "no reasons recorded"
        return [f"the signed gate decision is BLOCKED: {listed}"]
    return []


# ----------------------------------------------------------------------------- sidecar line

SIDECAR_PREFIX = f"{ALGORITHM} "  # second line of ``eval.json.sha256``: evaluate's signed statement


def sidecar_line(envelope: dict[str, Any]) -> str:
    return SIDECAR_PREFIX + base64.b64encode(canonical(envelope)).decode()


def envelope_from_sidecar(text: str) -> dict[str, Any] | None:
    """Evaluate's signed report statement from the sidecar's text, or None when it has none."""
    for line in text.splitlines()[1:]:
        if line.startswith(SIDECAR_PREFIX):
            try:
                return json.loads(base64.b64decode(line[len(SIDECAR_PREFIX):], validate=True))
            except (ValueError, json.JSONDecodeError):
                return {"malformed": True}
    return None
