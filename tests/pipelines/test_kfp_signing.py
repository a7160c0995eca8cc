"""Kubeflow: signed evidence (docs/guard.md, attested mode) by Secret name, never key bytes.

``--signing-key-secret NAME`` gives the evaluate tasks and the gate the Ed25519 private key as
``FAIRAT_SIGNING_KEY`` from that Secret; the register tasks get only ``FAIRAT_VERIFY_KEY`` (from
``--verify-key-secret`` or the same Secret). The checks read the compiled IR's Kubernetes
platform spec.
"""

from __future__ import annotations

import base64

import pytest
import yaml

from kfp_fixtures import REPO, ir  # noqa: F401 (ir: a fixture)

SIGNERS = {"exec-evaluate", "exec-evaluate-2", "exec-gate"}  # evaluate, baseline-evaluate, gate
VERIFIERS = {"exec-register", "exec-register-2"}  # register-candidate, register-blocked


def _key_envs(text: str) -> dict[str, list[tuple[str, str, str, bool]]]:
    """executor -> [(secret, secret key, env var, optional)] for the FAIRAT_* key variables."""
    platform = list(yaml.safe_load_all(text))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    out: dict[str, list[tuple[str, str, str, bool]]] = {}
    for name, executor in platform["executors"].items():
        for secret in executor.get("secretAsEnv", []):
            for m in secret["keyToEnv"]:
                if m["envVar"].startswith("FAIRAT_"):
                    out.setdefault(name, []).append((secret["secretName"], m["secretKey"],
                                                     m["envVar"], secret["optional"]))
    return out


def _compile(tmp_path, *flags: str) -> str:
    from fairat.fronts.cli import main

    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--params", str(REPO / "params.yaml"),
                 *flags]) == 0
    return out.read_text()


@pytest.fixture
def key_pair(tmp_path, monkeypatch):
    """A fresh Ed25519 pair, the private key also in this process's environment (as a runner
    that holds it would have it), to prove compiling never copies it anywhere."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption,
                                                              PrivateFormat, PublicFormat)

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(Encoding.PEM,
                                                   PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "signing.pem").write_text(pem)
    monkeypatch.setenv("FAIRAT_SIGNING_KEY", pem)
    monkeypatch.setenv("FAIRAT_SIGNING_KEY_FILE", str(tmp_path / "signing.pem"))
    monkeypatch.setenv("FAIRAT_VERIFY_KEY", public_pem)
    raw = [private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
           private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)]
    return pem, public_pem, raw


def test_the_signing_secret_reaches_evaluate_and_gate_and_only_the_public_key_register(
        tmp_path, key_pair, capsys):
    pem, public_pem, raw = key_pair
    text = _compile(tmp_path, "--signing-key-secret", "fairat-signing")
    envs = _key_envs(text)
    assert set(envs) == SIGNERS | VERIFIERS  # train, prepare, compare: no key
    for name in SIGNERS:  # required: a pipeline compiled to sign never quietly runs unsigned
        assert envs[name] == [("fairat-signing", "FAIRAT_SIGNING_KEY", "FAIRAT_SIGNING_KEY",
                               False)], name
    for name in VERIFIERS:  # never the private key
        assert envs[name] == [("fairat-signing", "FAIRAT_VERIFY_KEY", "FAIRAT_VERIFY_KEY",
                               False)], name
    # no key material anywhere: not the PEM, not a line of its body, not the raw bytes encoded
    shown = text + "".join(capsys.readouterr())
    for secret_text in (pem, public_pem):
        for line in secret_text.splitlines():
            if "-----" not in line:
                assert line not in shown
    assert "PRIVATE KEY" not in shown and "PUBLIC KEY" not in shown
    for blob in raw:
        assert base64.b64encode(blob).decode() not in shown and blob.hex() not in shown
    assert str(tmp_path / "signing.pem") not in shown
    # and no run parameter names a key (they would be visible in the UI and the run's record)
    params = next(yaml.safe_load_all(text))["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if "key" in p.lower() or "sign" in p.lower()]


def test_a_separate_verify_secret_for_register(tmp_path):
    envs = _key_envs(_compile(tmp_path, "--signing-key-secret", "fairat-signing",
                              "--verify-key-secret", "fairat-verify"))
    for name in VERIFIERS:
        assert envs[name] == [("fairat-verify", "FAIRAT_VERIFY_KEY", "FAIRAT_VERIFY_KEY", False)]
    assert {envs[name][0][0] for name in SIGNERS} == {"fairat-signing"}


def test_without_a_secret_the_pipeline_runs_in_local_mode(ir):  # noqa: F811
    assert _key_envs(ir) == {}
    assert "FAIRAT_SIGNING_KEY" not in ir and "FAIRAT_VERIFY_KEY" not in ir


def test_the_no_baseline_pipeline_signs_too(tmp_path):
    envs = _key_envs(_compile(tmp_path, "--no-baseline", "--signing-key-secret", "k"))
    assert set(envs) == {"exec-evaluate", "exec-gate"} | VERIFIERS


@pytest.mark.parametrize("flags,message", [
    (["--verify-key-secret", "fairat-verify"], "without a signing_key_secret"),
    (["--signing-key-secret", "Fairat_Signing"], "not a Kubernetes Secret name")])
def test_bad_key_secret_settings_fail_naming_the_problem(flags, message, tmp_path, capsys):
    from fairat.fronts.cli import main

    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_help_lists_the_key_secrets():
    from fairat.fronts.cli import build_parser

    parser = build_parser()
    pipeline = parser._subparsers._group_actions[0].choices["pipeline"]
    for action in ("compile", "submit"):
        text = " ".join(pipeline._subparsers._group_actions[0].choices[action]
                        .format_help().split())
        for name in ("--signing-key-secret SIGNING_KEY_SECRET", "FAIRAT_SIGNING_KEY",
                     "--verify-key-secret VERIFY_KEY_SECRET", "FAIRAT_VERIFY_KEY",
                     "local mode"):
            assert name in text, (action, name)


def test_docs_say_how_to_make_the_secret_with_the_key_names_the_pods_read():
    from fairat.evidence.attestation import SIGNING_KEY_ENV, VERIFY_KEY_ENV

    text = (REPO / "docs" / "kubeflow.md").read_text()
    assert "openssl genpkey -algorithm ed25519" in text
    assert "kubectl -n $NS create secret generic fairat-signing" in text
    assert f"--from-file={SIGNING_KEY_ENV}=signing.pem" in text
    assert f"--from-file={VERIFY_KEY_ENV}=verify.pem" in text
    assert "local mode" in text and "--signing-key-secret" in text
