"""Attested mode: evaluate and the gate sign what they made (Ed25519); register, approve, the
guard and `fairat models` verify it against the version's logged files, never against tags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                          PublicFormat)

from fairat.evidence import attestation as att
from tiny import REPO, registry_run_flags

TINY = registry_run_flags()

KEY_VARS = (att.SIGNING_KEY_ENV, att.SIGNING_KEY_FILE_ENV, att.VERIFY_KEY_ENV,
            att.VERIFY_KEY_FILE_ENV, "FAIRAT_APPROVAL_KEY")


def _pems() -> tuple[str, str]:
    private = Ed25519PrivateKey.generate()
    return (private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode(),
            private.public_key().public_bytes(Encoding.PEM,
                                              PublicFormat.SubjectPublicKeyInfo).decode())


@pytest.fixture
def no_keys(monkeypatch):
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_keys_come_from_the_environment_text_or_file(no_keys, tmp_path):
    assert att.signing_key() is None and att.verify_key() is None  # local mode
    private_pem, public_pem = _pems()
    (tmp_path / "verify.pem").write_text(public_pem)
    no_keys.setenv(att.VERIFY_KEY_FILE_ENV, str(tmp_path / "verify.pem"))
    assert att.signing_key() is None and att.verify_key() is not None
    no_keys.setenv(att.SIGNING_KEY_ENV, private_pem)
    assert att.key_id(att.signing_key().public_key()) == att.key_id(att.verify_key())
    no_keys.setenv(att.SIGNING_KEY_ENV, "-----BEGIN PRIVATE KEY-----\nsecret-bytes\n")
    with pytest.raises(att.SigningKeyError) as err:
        att.signing_key()
    assert "secret-bytes" not in str(err.value)  # a bad key is named, never printed


def test_a_statement_verifies_only_unaltered_and_with_its_key(no_keys):
    private = Ed25519PrivateKey.generate()
    statement = att.report_statement("r" * 64, "m" * 64, "test")
    envelope = att.sign(statement, private)
    assert att.verify(envelope, private.public_key(), att.REPORT_STATEMENT) == (statement, [])
    altered = json.loads(json.dumps(envelope))
    altered["statement"]["report_sha256"] = "f" * 64
    assert att.verify(altered, private.public_key(), att.REPORT_STATEMENT)[0] is None
    other = Ed25519PrivateKey.generate().public_key()
    assert "does not verify" in att.verify(envelope, other, att.REPORT_STATEMENT)[1][0]
    assert "not 'fairat.decision/v1'" in att.verify(envelope, private.public_key(),
                                                    att.DECISION_STATEMENT)[1][0]
    line = att.sidecar_line(envelope)
    assert att.envelope_from_sidecar(f"{'r' * 64}  eval.json\n{line}\n") == envelope
    assert att.envelope_from_sidecar(f"{'r' * 64}  eval.json\n") is None


@pytest.fixture(scope="module")
def attested(tmp_path_factory, mlflow_sqlite):
    """Two tiny trainings in attested mode: v1 passes its gate, v2 (another run, a strict gate)
    is blocked."""
    from fairat.fronts.cli import main

    path = tmp_path_factory.mktemp("attested")
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    private_pem, public_pem = _pems()
    mp = pytest.MonkeyPatch()
    for var in KEY_VARS:
        mp.delenv(var, raising=False)
    mp.chdir(path)
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite(path / "mlruns" / "mlflow.db"))
    mp.setenv(att.SIGNING_KEY_ENV, private_pem)
    assert main(["run", *TINY]) == 0
    assert main(["run", *TINY, "-S", "train.seed=1", "-S", "gate.min_average=1.0"]) == 0
    mp.delenv(att.SIGNING_KEY_ENV)
    mp.setenv(att.VERIFY_KEY_ENV, public_pem)  # approvers and the guard hold the public key only
    yield path
    mp.undo()


@pytest.mark.slow
def test_tags_copied_from_a_passed_version_approve_nothing(attested, capsys):
    from mlflow.tracking import MlflowClient

    from fairat.edge import registry
    from fairat.fronts.cli import main

    client = MlflowClient(registry.tracking_uri())
    rows = {r["version"]: r for r in registry.list_versions("unit")}
    assert rows[1]["attested"] == "verified" and rows[1]["gate_passed"] == "true"
    assert rows[2]["gate_passed"] == "false" and "BLOCKED" in rows[2]["gate_reasons"]
    aliases = lambda: {k: str(v) for k, v in client.get_registered_model("unit").aliases.items()}  # noqa: E731
    assert aliases() == {"candidate": "1"}
    for key, value in client.get_model_version("unit", "1").tags.items():
        client.set_model_version_tag("unit", "2", key, value)  # every tag of the passed version
    assert main(["approve", "unit", "2", "--by", "mallory", "--yes"]) == 2
    assert "refusing to approve unit version 2" in capsys.readouterr().err
    assert "champion" not in aliases()
    row = {r["version"]: r for r in registry.list_versions("unit")}[2]
    assert row["gate_passed"] == "false" and row["attested"] == "unverified"
    assert main(["models", "unit"]) == 0
    table = capsys.readouterr().out
    line = next(t for t in table.splitlines() if t.strip().startswith("2 "))
    assert "FAILED" in line and "passed" not in line
    assert "verified against its logged files" in table
    assert main(["approve", "unit", "1", "--by", "alice", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "model_card.md in MLflow run" in out and "runs:/" not in out
    assert aliases()["champion"] == "1"


@pytest.mark.slow
def test_a_rewritten_sidecar_without_the_key_is_blocked_by_the_gate(attested, tmp_path):
    """The forged report of issue 29 with its sidecar rewritten: without the signing key the
    sidecar carries no statement of evaluate, so the attested gate blocks it."""
    from fairat.config import load_params
    from fairat.evidence.gate import decide_files, write_sidecar

    report = tmp_path / "eval.json"
    forged = json.loads((attested / "metrics/eval.json").read_text())
    forged["seconds"] = {k: 0.0 for k in forged["seconds"]}
    report.write_text(json.dumps(forged))
    write_sidecar(report, forged["provenance"]["model_sha256"], "test")  # no signing key here
    params = load_params(attested / "params.yaml", [TINY[i + 1] for i in range(0, len(TINY), 2)])
    decision = decide_files(params.gate, report, attested / "models/model.pt")
    assert not decision["passed"]
    assert any("no signed fairat.report/v1 statement" in r for r in decision["reasons"])


def test_a_decision_file_edited_to_passed_disagrees_with_its_signature(no_keys):
    from fairat.evidence.gate import decision_attestation_problems

    private = Ed25519PrivateKey.generate()
    blocked = {"passed": False, "informational": False, "attack": "pgd", "split": "test",
               "measured": None, "reasons": ["below min_worst_class"],
               "model_sha256": "m" * 64, "report_sha256": "r" * 64}
    envelope = att.sign(att.decision_statement(blocked, {"min_worst_class": 0.3}), private)
    public = private.public_key()
    assert decision_attestation_problems(envelope, public, "m" * 64, "r" * 64, False) == []
    edited = decision_attestation_problems(envelope, public, "m" * 64, "r" * 64, True)
    assert edited == ["the gate decision file says passed, its signed statement does not"]
    other_model = decision_attestation_problems(envelope, public, "x" * 64, "r" * 64, False)
    assert "not this model" in other_model[0]
    unsigned = decision_attestation_problems(None, public, "m" * 64, "r" * 64, True)
    assert "no signed fairat.decision/v1 statement" in unsigned[0]
