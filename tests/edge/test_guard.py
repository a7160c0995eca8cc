"""`fairat guard`: webhook signatures, the alias rules applied to events, the HTTP receiver, the
CLI, and (slow) the whole loop against a real `mlflow server` delivering real webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from fairat.edge import guard as guard_mod
from fairat.edge.guard import (ATTEMPTED_BY, ATTEMPTED_BY_TAG, REVERTED_TAG, Guard, GuardServer,
                               register_webhook, verify_signature)
from fairat.edge.registry import version_tags
from fairat.evidence.gate import APPROVAL_KEY_ENV, approval_signature
from fairat.fronts import guard_cli
from fairat.fronts.cli import build_parser, main

SECRET = "test-webhook-secret"
KEY = "test-approval-key"
MODEL = "guarded-model"


def sign(secret: str, delivery_id: str, stamp: str, body: bytes) -> str:
    """The signing recipe MLflow uses (HMAC-SHA256, base64, ``v1,`` prefix), written out here."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{stamp}.".encode() + body,
                      hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(body: bytes, secret: str = SECRET, delivery_id: str = "d-1",
                   stamp: int | None = None) -> dict[str, str]:
    stamp_s = str(int(time.time()) if stamp is None else stamp)
    return {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": stamp_s,
            "X-MLflow-Signature": sign(secret, delivery_id, stamp_s, body),
            "Content-Type": "application/json"}


def alias_event(alias: str, version: str, name: str = MODEL) -> dict:
    return {"entity": "model_version_alias", "action": "created",
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "data": {"name": name, "alias": alias, "version": version}}


def evidence(passed: bool, model_sha: str) -> dict[str, str]:
    """The tags `fairat register` writes on a version whose gate passed (or failed)."""
    decision = {"passed": passed, "attack": "pgd", "informational": False,
                "reasons": [] if passed else ["worst-class pgd robust accuracy 0.1000 (cat) is "
                                              "below min_worst_class 0.3000"],
                "measured": {"worst": 0.41 if passed else 0.1, "worst_class": "cat",
                             "average": 0.52, "gap": 0.2}}
    manifest = {"content_hash": "data-hash-1", "source": "digits"}
    return version_tags(decision, None, manifest, model_sha, f"report-of-{model_sha}", None)


def approved(tags: dict[str, str], name: str, version: str, key: str | None,
             at: str = "2026-01-01T00:00:00+00:00", by: str = "alice") -> dict[str, str]:
    """``tags`` plus the approval record `fairat approve` writes (signed when ``key``)."""
    out = {**tags, "fairat.approved_by": by, "fairat.approved_at": at,
           "fairat.approval_note": "", "fairat.approved_model_sha256": tags["fairat.model_sha256"]}
    if key:
        out["fairat.approval_signature"] = approval_signature(key, name, version, out)
    return out


# ----------------------------------------------------------------------------- signatures

def test_a_genuine_signature_verifies():
    body = json.dumps(alias_event("champion", "1")).encode()
    assert verify_signature(SECRET, signed_headers(body), body)
    lower = {k.lower(): v for k, v in signed_headers(body).items()}  # header names are any case
    assert verify_signature(SECRET, lower, body)


def test_a_tampered_body_or_wrong_secret_is_refused():
    body = json.dumps(alias_event("champion", "1")).encode()
    headers = signed_headers(body)
    assert not verify_signature(SECRET, headers, body.replace(b'"1"', b'"2"'))
    assert not verify_signature("another-secret", headers, body)
    assert not verify_signature(SECRET, signed_headers(body, secret="another-secret"), body)
    assert not verify_signature("", headers, body)


def test_a_stale_or_future_timestamp_is_refused():
    body = b'{"entity": "model_version_alias"}'
    now = time.time()
    old = signed_headers(body, stamp=int(now) - 16 * 60)
    assert not verify_signature(SECRET, old, body, now=now)
    assert verify_signature(SECRET, old, body, max_age_s=20 * 60, now=now)  # configurable
    assert verify_signature(SECRET, signed_headers(body, stamp=int(now) - 14 * 60), body, now=now)
    assert not verify_signature(SECRET, signed_headers(body, stamp=int(now) + 3600), body, now=now)
    bad = {**signed_headers(body), "X-MLflow-Timestamp": "yesterday"}
    assert not verify_signature(SECRET, bad, body)


@pytest.mark.parametrize("header", ["X-MLflow-Signature", "X-MLflow-Delivery-Id",
                                    "X-MLflow-Timestamp"])
def test_a_missing_header_is_refused(header):
    body = b"{}"
    headers = signed_headers(body)
    del headers[header]
    assert not verify_signature(SECRET, headers, body)
    assert header in guard_mod.signature_problem(SECRET, headers, body)


# ----------------------------------------------------------------------------- the rules

class FakeRegistry:
    """The few MlflowClient calls the guard makes, on an in-memory registry of one model."""

    def __init__(self, versions: dict[str, dict[str, str]], aliases: dict[str, str] | None = None,
                 tag_failures: int = 0):
        self.versions = {v: dict(t) for v, t in versions.items()}
        self.aliases = dict(aliases or {})
        self.tag_failures = tag_failures
        self.calls: list[tuple] = []

    def search_registered_models(self, max_results):
        return []

    def get_registered_model(self, name):
        return SimpleNamespace(name=name, aliases=dict(self.aliases))

    def get_model_version_by_alias(self, name, alias):
        if alias not in self.aliases:
            raise RuntimeError(f"Registered model alias {alias} not found.")
        version = self.aliases[alias]
        return SimpleNamespace(version=version, tags=dict(self.versions[version]))

    def search_model_versions(self, filter_string):
        assert filter_string == f"name = '{MODEL}'"
        return [SimpleNamespace(version=v, tags=dict(t)) for v, t in self.versions.items()]

    def delete_registered_model_alias(self, name, alias):
        self.calls.append(("delete", alias))
        self.aliases.pop(alias, None)

    def set_registered_model_alias(self, name, alias, version):
        self.calls.append(("set", alias, version))
        self.aliases[alias] = str(version)

    def set_model_version_tag(self, name, version, key, value):
        if self.tag_failures:
            self.tag_failures -= 1
            raise RuntimeError("UNIQUE constraint failed: model_version_tags")
        self.calls.append(("tag", version, key))
        self.versions[version][key] = value


def registry_of_four(key: str | None = KEY, **kw) -> FakeRegistry:
    """v1 failed the gate, v2 passed and was approved, v3 passed (not approved), v4 passed and
    was approved later than v2."""
    return FakeRegistry({
        "1": evidence(False, "sha-1"),
        "2": approved(evidence(True, "sha-2"), MODEL, "2", key, at="2026-01-02T00:00:00+00:00"),
        "3": evidence(True, "sha-3"),
        "4": approved(evidence(True, "sha-4"), MODEL, "4", key, at="2026-01-03T00:00:00+00:00"),
    }, **kw)


def make_guard(reg: FakeRegistry, key: str | None = KEY, **kw) -> tuple[Guard, list[str]]:
    lines: list[str] = []
    return Guard(client=reg, approval_key=key, log=lines.append, retry_pause_s=0, **kw), lines


def test_champion_on_a_failed_version_is_reverted_and_restored():
    reg = registry_of_four(aliases={"champion": "1"})
    guard, lines = make_guard(reg)
    decision = guard.handle(alias_event("champion", "1"), "d-1")
    assert decision["outcome"] == "reverted" and decision["restored_to"] == "4"
    assert reg.calls[:2] == [("delete", "champion"), ("set", "champion", "4")]
    assert reg.aliases == {"champion": "4"}  # the most recently approved allowed version
    record = json.loads(reg.versions["1"][REVERTED_TAG])
    assert set(record) == {"alias", "at", "reasons", "restored_to"}
    assert record["alias"] == "champion" and record["restored_to"] == "4"
    assert any("fairness gate did not pass" in r for r in record["reasons"])
    assert datetime.fromisoformat(record["at"]).tzinfo is not None
    assert reg.versions["1"][ATTEMPTED_BY_TAG] == ATTEMPTED_BY
    assert len(lines) == 1 and "reverted" in lines[0] and KEY not in lines[0]
    # the restore fires its own alias event: the rules pass, nothing more happens
    again = guard.handle(alias_event("champion", "4"), "d-2")
    assert again["outcome"] == "allowed" and reg.aliases == {"champion": "4"}
    assert len(reg.calls) == 4  # delete, set, two tags: nothing after


def test_an_approved_champion_is_left_alone():
    reg = registry_of_four(aliases={"champion": "2"})
    guard, _ = make_guard(reg)
    assert guard.handle(alias_event("champion", "2"))["outcome"] == "allowed"
    assert reg.calls == []


def test_candidate_on_a_failed_version_goes_back_to_the_newest_passed_version():
    """Reverting a hand-set candidate keeps the legitimate one: the newest passed version, where
    register put it; with no passed version, candidate stays unset."""
    reg = registry_of_four(aliases={"candidate": "1", "champion": "2"})
    guard, _ = make_guard(reg)
    decision = guard.handle(alias_event("candidate", "1"))
    assert decision["outcome"] == "reverted" and decision["restored_to"] == "4"
    assert reg.aliases == {"champion": "2", "candidate": "4"}
    assert json.loads(reg.versions["1"][REVERTED_TAG])["restored_to"] == "4"
    alone = FakeRegistry({"1": evidence(False, "sha-1")}, aliases={"candidate": "1"})
    assert make_guard(alone)[0].handle(alias_event("candidate", "1"))["restored_to"] is None
    assert alone.aliases == {}
    # a passed version may be candidate without approval
    reg.aliases["candidate"] = "3"
    assert guard.handle(alias_event("candidate", "3"))["outcome"] == "allowed"


def test_unapproved_or_forged_champion_is_reverted_when_a_key_is_held():
    reg = registry_of_four(aliases={"champion": "3"})
    guard, _ = make_guard(reg)
    decision = guard.handle(alias_event("champion", "3"))
    assert decision["outcome"] == "reverted"
    assert any("no approval record" in r for r in decision["reasons"])
    forged = registry_of_four(key="not-the-key", aliases={"champion": "4"})
    forged.versions["2"] = approved(evidence(True, "sha-2"), MODEL, "2", KEY)  # the genuine one
    guard, _ = make_guard(forged)
    decision = guard.handle(alias_event("champion", "4"))
    assert decision["outcome"] == "reverted" and decision["restored_to"] == "2"
    assert any("not signed with the approval key" in r for r in decision["reasons"])
    # without a key, an unsigned approval record is all champion needs
    unsigned = registry_of_four(key=None, aliases={"champion": "4"})
    guard, _ = make_guard(unsigned, key=None)
    assert guard.handle(alias_event("champion", "4"))["outcome"] == "allowed"


def test_no_allowed_version_leaves_champion_unset():
    reg = FakeRegistry({"1": evidence(False, "sha-1"), "3": evidence(True, "sha-3")},
                       {"champion": "3"})
    guard, _ = make_guard(reg)
    decision = guard.handle(alias_event("champion", "3"))
    assert decision["restored_to"] is None and reg.aliases == {}


def test_other_aliases_models_and_events_are_ignored():
    reg = registry_of_four(aliases={"staging": "1", "champion": "1"})
    guard, lines = make_guard(reg, models=["another-model"])
    assert guard.handle(alias_event("champion", "1")) is None  # not a guarded model
    guard, lines = make_guard(reg)
    assert guard.handle(alias_event("staging", "1")) is None
    assert guard.handle({**alias_event("champion", "1"), "action": "deleted"}) is None
    assert guard.handle({"entity": "model_version_tag", "action": "set", "data": {}}) is None
    assert guard.handle("not an event") is None
    assert reg.calls == [] and lines == []


def test_duplicates_moved_and_gone_aliases_change_nothing():
    reg = registry_of_four(aliases={"champion": "1"})
    guard, _ = make_guard(reg)
    assert guard.handle(alias_event("champion", "1"), "same-id")["outcome"] == "reverted"
    calls = list(reg.calls)
    reg.aliases["champion"] = "1"  # the same delivery again (a retry): ignored by id
    assert guard.handle(alias_event("champion", "1"), "same-id")["outcome"] == "duplicate-ignored"
    assert reg.calls == calls
    reg.aliases["champion"] = "2"  # a late event for an alias that has moved on
    assert guard.handle(alias_event("champion", "1"), "id-2")["note"].startswith("alias has moved")
    del reg.aliases["champion"]  # or is gone already
    assert guard.handle(alias_event("champion", "1"), "id-3")["note"] == "alias already gone"
    assert reg.calls == calls


def test_delivery_ids_are_remembered_in_a_bounded_lru():
    guard, _ = make_guard(registry_of_four(), seen_max=3)
    assert all(guard.first_delivery(i) for i in "abc")
    assert not guard.first_delivery("a")  # refreshes a
    assert guard.first_delivery("d")  # evicts b, the oldest
    assert guard.first_delivery("b") and not guard.first_delivery("a")
    assert len(guard._seen) == 3


def test_a_failed_tag_write_is_retried_once():
    reg = registry_of_four(aliases={"champion": "1"}, tag_failures=1)
    guard, _ = make_guard(reg)
    decision = guard.handle(alias_event("champion", "1"))
    assert decision["outcome"] == "reverted" and "note" not in decision
    assert REVERTED_TAG in reg.versions["1"] and ATTEMPTED_BY_TAG in reg.versions["1"]
    reg = registry_of_four(aliases={"champion": "1"}, tag_failures=2)
    guard, _ = make_guard(reg)
    decision = guard.handle(alias_event("champion", "1"))
    assert decision["outcome"] == "reverted" and "tagging failed twice" in decision["note"]
    assert reg.aliases == {"champion": "4"}  # the revert itself stands


def test_an_unreachable_registry_is_reported_not_raised():
    class Down:
        def search_registered_models(self, max_results):
            raise ConnectionError("connection refused")

    guard, _ = make_guard(Down())
    assert "connection refused" in guard.check_registry()
    assert make_guard(registry_of_four())[0].check_registry() is None


# ----------------------------------------------------------------------------- HTTP receiver

def _request(url: str, body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, headers=headers or {},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_receiver_verifies_answers_and_queues():
    reg = registry_of_four(aliases={"champion": "1"})
    guard, lines = make_guard(reg)
    server = GuardServer(guard, SECRET, "127.0.0.1", 0).start()
    try:
        base = server.url.rsplit("/", 1)[0]
        assert _request(f"{base}/healthz") == (200, "ok\n")
        assert _request(f"{base}/other")[0] == 404
        body = json.dumps(alias_event("champion", "1")).encode()
        status, text = _request(server.url, body, {"Content-Type": "application/json"})
        assert status == 401 and "missing header" in text and text.count("\n") == 1
        status, text = _request(server.url, body, signed_headers(body, secret="wrong"))
        assert status == 401 and "signature does not match" in text
        assert reg.calls == []
        assert _request(server.url, b"not json", signed_headers(b"not json"))[0] == 400
        assert _request(server.url, b"[1]", signed_headers(b"[1]"))[0] == 400
        good = signed_headers(body, delivery_id="x1")
        assert _request(server.url, body, good) == (200, "queued\n")
        assert _request(server.url, body, signed_headers(body, delivery_id="x1"))[0] == 200
        server.queue.join()
        assert reg.aliases == {"champion": "4"}
        outcomes = [d["outcome"] for d in guard.decisions]
        assert outcomes == ["reverted", "duplicate-ignored"]
        assert not any(SECRET in line for line in lines)
    finally:
        server.stop()


# ----------------------------------------------------------------------------- CLI

def test_cli_help_names_defaults_and_environment(capsys):
    for argv in (["guard", "serve", "--help"], ["guard", "register", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "FAIRAT_GUARD_SECRET" in text and "FAIRAT_APPROVAL_KEY" in text
        assert "MLFLOW_TRACKING_URI" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["guard", "serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "127.0.0.1" in text and "8765" in text and "default: all models" in text
    assert "900" in text
    args = build_parser().parse_args(["guard", "serve", "--model", "a", "--model", "b"])
    assert args.models == ["a", "b"] and args.port == 8765 and args.host == "127.0.0.1"
    args = build_parser().parse_args(["guard", "register", "--url", "http://h/webhook"])
    assert args.name == "fairat-guard"
    assert guard_cli.APPROVAL_KEY_ENV == APPROVAL_KEY_ENV


def test_cli_needs_the_secret_and_a_server(monkeypatch, capsys):
    monkeypatch.delenv("FAIRAT_GUARD_SECRET", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert main(["guard", "serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "FAIRAT_GUARD_SECRET is not set" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("FAIRAT_GUARD_SECRET", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///somewhere.db")
    assert main(["guard", "register", "--url", "http://127.0.0.1:8765/webhook"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mlflow server" in err and len(err.splitlines()) == 1 and SECRET not in err


@pytest.mark.slow
def test_cli_serve_answers_and_stops_on_interrupt(tmp_path):
    import signal
    import subprocess

    from servers import free_port

    port = free_port()
    env = {**os.environ, "FAIRAT_GUARD_SECRET": SECRET, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    env.pop(APPROVAL_KEY_ENV, None)
    # Ctrl-C reaches the guard even when the suite itself was started as a background job
    # (a non-interactive shell starts those with SIGINT ignored, and children inherit that)
    proc = subprocess.Popen([sys.executable, "-m", "fairat", "guard", "serve", "--port", str(port)],
                            env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _request(f"{base}/healthz") == (200, "ok\n")
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        status, text = _request(f"{base}/webhook", b"{}", {"Content-Type": "application/json"})
        assert status == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"listening on http://127.0.0.1:{port}/webhook" in err
    assert "need no signature (FAIRAT_APPROVAL_KEY unset)" in err
    assert "cannot read the registry yet" in err and "refused delivery" in err
    assert SECRET not in err


def test_register_refuses_a_store_that_is_not_a_server(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    with pytest.raises(guard_mod.RegistryError, match="mlflow server"):
        register_webhook("http://127.0.0.1:8765/webhook", SECRET, client=object())


# ----------------------------------------------------------------------------- real server

@pytest.fixture(scope="module")
def webhook_mlflow(tmp_path_factory, mlflow_sqlite):
    """`mlflow server` (SQLite, one worker) configured to deliver webhooks to loopback.

    One server for the module (its start is about 15 s of the suite): each test registers its
    own model, and a test that needs a server without webhooks deletes them first."""
    from cryptography.fernet import Fernet
    from servers import BIN, free_port, start_server

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_WEBHOOK_CACHE_TTL", APPROVAL_KEY_ENV,
                "FAIRAT_GUARD_SECRET"):
        env.pop(var, None)
    tmp_path = tmp_path_factory.mktemp("webhook-mlflow")
    log = tmp_path / "mlflow-server.log"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", mlflow_sqlite(tmp_path / "mlflow.db"),
           "--artifacts-destination", str(tmp_path / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--uvicorn-opts", "--timeout-graceful-shutdown 1"]
    server = start_server(cmd, f"{url}/health", log, env=env, timeout=120)
    try:
        yield SimpleNamespace(url=url, log=log)
    finally:
        server.stop()


def _wait(what: str, check, guard: Guard, log, timeout: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    decisions = "\n".join(map(str, guard.decisions))
    pytest.fail(f"timed out waiting for {what}; guard decisions:\n{decisions}\n"
                f"server log:\n{log.read_text()[-3000:]}")


def _window_ms(decision: dict) -> float:
    """Server-side alias commit (the payload's timestamp, taken just after it) to the delete."""
    return (datetime.fromisoformat(decision["deleted_at"])
            - datetime.fromisoformat(decision["event_timestamp"])).total_seconds() * 1000


@pytest.mark.slow
def test_the_guard_reverts_hand_set_aliases_on_a_real_server(webhook_mlflow, monkeypatch):
    from mlflow import MlflowClient

    from fairat.edge.registry import approve

    started = time.monotonic()
    url, log = webhook_mlflow.url, webhook_mlflow.log
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv(APPROVAL_KEY_ENV, KEY)
    client = MlflowClient(url)
    guard = Guard(client=MlflowClient(url), approval_key=KEY, models=[MODEL],
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    receiver = GuardServer(guard, SECRET, "127.0.0.1", 0).start()
    try:
        # the webhook exists before any alias event: the server caches the list for 60 s
        first = register_webhook(receiver.url, SECRET)
        again = register_webhook(receiver.url, SECRET)
        assert first["action"] == "created" and again["action"] == "updated"
        assert again["webhook_id"] == first["webhook_id"]
        hooks = [h for h in client.list_webhooks() if h.name == "fairat-guard"]
        assert len(hooks) == 1 and [str(e) for e in hooks[0].events] == [guard_mod.EVENT]

        client.create_registered_model(MODEL)
        for passed, sha in ((False, "sha-1"), (True, "sha-2"), (True, "sha-3"), (True, "sha-4")):
            client.create_model_version(MODEL, source="s3://fairat-test/model",
                                        tags=evidence(passed, sha))
        aliases = lambda: client.get_registered_model(MODEL).aliases  # noqa: E731
        tags = lambda v: client.get_model_version(MODEL, v).tags  # noqa: E731
        reverted = lambda v: [d for d in guard.decisions  # noqa: E731
                              if d["outcome"] == "reverted" and d["version"] == v]

        # (a) champion set by hand on the version whose gate failed: removed, nothing to restore
        client.set_registered_model_alias(MODEL, "champion", "1")
        waited = _wait("champion removed from v1", lambda: "champion" not in aliases()
                       and REVERTED_TAG in tags("1"), guard, log)
        _wait("the guard's decision on v1", lambda: reverted("1"), guard, log)
        record = json.loads(tags("1")[REVERTED_TAG])
        assert record["restored_to"] is None
        assert "fairness gate did not pass" in record["reasons"][0]
        assert tags("1")[ATTEMPTED_BY_TAG] == ATTEMPTED_BY
        windows = [_window_ms(reverted("1")[0])]
        # ... and candidate too: back on the newest passed version (where register puts it)
        client.set_registered_model_alias(MODEL, "candidate", "1")
        _wait("candidate moved from v1 to v4", lambda: aliases().get("candidate") == "4"
              and json.loads(tags("1")[REVERTED_TAG])["alias"] == "candidate", guard, log)

        # (b) `fairat approve` (signed with the key the guard holds): champion stays
        approve(MODEL, 2, by="alice", note="passed the gate")
        _wait("the approved champion accepted", lambda: any(
            d["outcome"] == "allowed" and d["version"] == "2" for d in guard.decisions),
            guard, log)
        time.sleep(2)
        assert aliases().get("champion") == "2" and REVERTED_TAG not in tags("2")

        # (c) champion set by hand on a passed but unapproved version: restored to v2
        client.set_registered_model_alias(MODEL, "champion", "3")
        _wait("champion back on v2", lambda: reverted("3") and REVERTED_TAG in tags("3")
              and aliases().get("champion") == "2", guard, log)
        record = json.loads(tags("3")[REVERTED_TAG])
        assert record["restored_to"] == "2" and "no approval record" in record["reasons"][0]
        windows.append(_window_ms(reverted("3")[0]))

        # (d) approval tags typed by hand (no valid signature): reverted, restored to v2
        for key, value in (("approved_by", "mallory"),
                           ("approved_at", datetime.now(timezone.utc).isoformat()),
                           ("approved_model_sha256", "sha-4"), ("approval_signature", "f" * 64)):
            client.set_model_version_tag(MODEL, "4", f"fairat.{key}", value)
        client.set_registered_model_alias(MODEL, "champion", "4")
        _wait("forged champion reverted", lambda: reverted("4") and REVERTED_TAG in tags("4")
              and aliases().get("champion") == "2", guard, log)
        record = json.loads(tags("4")[REVERTED_TAG])
        assert record["restored_to"] == "2"
        assert any("not signed with the approval key" in r for r in record["reasons"])
        windows.append(_window_ms(reverted("4")[0]))

        # the restores' own alias events were accepted; nothing loops, nothing failed
        _wait("restore events accepted", lambda: sum(
            d["outcome"] == "allowed" and d["version"] == "2" for d in guard.decisions) >= 3,
            guard, log)
        time.sleep(1)
        assert dict(aliases()) == {"champion": "2", "candidate": "4"}
        assert not [d for d in guard.decisions if d["outcome"] == "error"]
        assert "Failed to send webhook" not in log.read_text()
        def spans(start: str, end: str) -> str:
            out = []
            for d in guard.decisions:
                if d["outcome"] == "reverted":
                    delta = datetime.fromisoformat(d[end]) - datetime.fromisoformat(d[start])
                    out.append(f"{delta.total_seconds() * 1000:.0f}")
            return ", ".join(out)

        print("\nguard e2e: alias window (payload timestamp -> alias deleted) "
              + ", ".join(f"{w:.0f}" for w in windows) + " ms; delivery (payload timestamp -> "
              f"received) {spans('event_timestamp', 'received_at')} ms; receipt -> revert done "
              f"(restore, tags) {spans('received_at', 'at')} ms; first revert seen by the client "
              f"{waited:.2f} s after set_registered_model_alias returned; test body "
              f"{time.monotonic() - started:.1f} s")
    finally:
        receiver.stop()


# ----------------------------------------------------------------------------- reconcile

def test_reconcile_catches_what_happened_while_the_guard_was_down():
    """No events: a champion set on the failed version, a candidate hand-set on it too."""
    reg = registry_of_four(aliases={"champion": "1", "candidate": "1"})
    guard, lines = make_guard(reg, models=[MODEL])
    decisions = guard.reconcile()
    assert {(d["alias"], d["outcome"], d["restored_to"]) for d in decisions} == {
        ("champion", "reverted", "4"), ("candidate", "reverted", "4")}
    assert reg.aliases == {"champion": "4", "candidate": "4"}
    assert all("reconcile" in line for line in lines)
    assert guard.reconcile() == []  # a registry that keeps the rules is left alone


def test_reconcile_restores_a_deleted_champion_and_drops_one_whose_approval_went():
    reg = registry_of_four(aliases={"champion": "4"})
    guard, _ = make_guard(reg, models=[MODEL])
    del reg.aliases["champion"]  # MLflow sends no webhook for a deletion
    (decision,) = guard.reconcile()
    assert decision["outcome"] == "restored" and reg.aliases == {"champion": "4"}
    reg.versions["4"].pop("fairat.approval_signature")  # approval tags edited since
    (decision,) = guard.reconcile()
    assert decision["outcome"] == "reverted" and decision["restored_to"] == "2"
    assert reg.aliases == {"champion": "2"}


def test_the_server_reconciles_at_start_and_on_its_timer():
    reg = registry_of_four(aliases={"champion": "1"})
    guard, lines = make_guard(reg, models=[MODEL])
    server = GuardServer(guard, SECRET, "127.0.0.1", 0, reconcile_every_s=0.2).start()
    try:
        deadline = time.monotonic() + 10
        while reg.aliases.get("champion") != "4" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reg.aliases == {"champion": "4"}  # at start
        del reg.aliases["champion"]
        while reg.aliases.get("champion") != "4" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reg.aliases == {"champion": "4"}  # on the timer
    finally:
        server.stop()


@pytest.mark.slow
def test_the_guard_reconciles_a_real_server_after_downtime(webhook_mlflow, monkeypatch):
    """Against `mlflow server` with no webhook at all (the guard was down): every case of
    issue 29 item 4 is found by the reconcile the guard runs at start."""
    from mlflow import MlflowClient

    from fairat.edge.registry import approve

    monkeypatch.setenv("MLFLOW_TRACKING_URI", webhook_mlflow.url)
    monkeypatch.setenv(APPROVAL_KEY_ENV, KEY)
    client = MlflowClient(webhook_mlflow.url)
    for hook in client.list_webhooks():  # the guard was down: no webhook delivers anything
        client.delete_webhook(hook.webhook_id)
    model = f"{MODEL}-after-downtime"  # the server is the module's: a model of its own
    client.create_registered_model(model)
    for passed, sha in ((False, "sha-1"), (True, "sha-2"), (True, "sha-3")):
        client.create_model_version(model, source="s3://fairat-test/model",
                                    tags=evidence(passed, sha))
    aliases = lambda: {k: str(v) for k, v in  # noqa: E731
                       client.get_registered_model(model).aliases.items()}
    approve(model, 2, by="alice")
    client.set_registered_model_alias(model, "candidate", "3")  # where register put it
    guard = Guard(client=MlflowClient(webhook_mlflow.url), approval_key=KEY, models=[model],
                  log=lambda line: print(line, file=sys.stderr, flush=True))
    assert guard.reconcile() == [] and aliases() == {"champion": "2", "candidate": "3"}
    # while the guard was down: champion and candidate set by hand on the failed version
    client.set_registered_model_alias(model, "champion", "1")
    client.set_registered_model_alias(model, "candidate", "1")
    guard.reconcile()
    assert aliases() == {"champion": "2", "candidate": "3"}  # the legitimate candidate is kept
    assert json.loads(client.get_model_version(model, "1").tags[REVERTED_TAG])["alias"] in (
        "champion", "candidate")
    # champion deleted (no webhook exists for deletions): restored
    client.delete_registered_model_alias(model, "champion")
    (decision,) = guard.reconcile()
    assert decision["outcome"] == "restored" and aliases()["champion"] == "2"
    # the champion's approval tags removed: it loses the alias, nothing else qualifies
    client.delete_model_version_tag(model, "2", "fairat.approval_signature")
    (decision,) = guard.reconcile()
    assert decision["outcome"] == "reverted" and decision["restored_to"] is None
    assert aliases() == {"candidate": "3"}
