"""`fairat guard`: a webhook receiver beside `mlflow server` that undoes hand-set aliases.

Why: `fairat register` and `fairat approve` only move ``candidate`` / ``champion`` when the
evidence allows it, but anyone with edit rights in MLflow's UI (or any client) can set an alias
directly. MLflow calls this receiver after every ``model_version_alias.created`` (also when an
alias moves); the guard checks the version against :func:`fairat.evidence.gate.alias_problems`
and, when the rules say no, deletes the alias, puts it back where the rules allow (``champion``
on the most recently approved version, ``candidate`` on the newest passed one), and tags the
offending version with what it did. Webhooks only tell of aliases set while the guard is up, and
none of deletions or edited evidence, so the guard also *reconciles*: at start and on a timer it
re-checks every alias of the guarded models and restores a missing ``champion``.

Design, in short (see docs/guard.md):
- The HTTP handler only verifies the HMAC signature, parses the body, answers 200 and queues the
  event; ONE worker thread applies events one at a time (MLflow retries slow or failed answers,
  and concurrent tag writes on the same version race inside MLflow's store).
- Decisions are taken on the registry's *current* state, not on the payload alone: an event whose
  alias has since moved or gone is skipped, so late, reordered or repeated deliveries are harmless.
  Delivery ids are also de-duplicated (bounded LRU).
- The guard's own restore fires another alias event; that version passes the rules, so it is
  accepted silently and nothing loops. Only ``model_version_alias.created`` is subscribed to.
- MLflow's payload does not say who set the alias; the tag says so instead of guessing.

Secrets (the webhook secret, the approval key) are passed in by the caller (the CLI reads them
from the environment) and are never logged.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections import OrderedDict, deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from fairat.edge.registry import CANDIDATE, CHAMPION
from fairat.edge.webhook import (DEFAULT_NAME, EVENT, H_ID, MAX_AGE_S,  # noqa: F401
                                 register_webhook, signature_problem, verify_signature)
from fairat.errors import RegistryError  # noqa: F401 (callers catch it from here)
from fairat.evidence.gate import TAG, alias_problems
from fairat.redact import redact

GUARDED = (CANDIDATE, CHAMPION)  # the aliases alias_problems has rules for
REVERTED_TAG = f"{TAG}guard_reverted"
ATTEMPTED_BY_TAG = f"{TAG}guard_attempted_by"
ATTEMPTED_BY = "unknown: MLflow webhooks do not name the user; see the server access log"
WEBHOOK_PATH = "/webhook"
MAX_BODY = 1 << 20  # MLflow's alias payloads are a few hundred bytes
TAG_VALUE_MAX = 5000  # MLflow's limit on a model-version tag value
RECONCILE_EVERY_S = 60.0  # how often the guard re-checks every alias (webhooks miss deletions)
RECONCILE = "reconcile"  # the worker-queue item that asks for one

LOGGED = ("delivery_id", "note", "reasons", "restored_to")  # decision fields in the log line


def _stderr(line: str) -> None:
    print(redact(line), file=sys.stderr, flush=True)  # MLflow errors may quote the store's URL


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")

# ----------------------------------------------------------------------------- the rules

class Guard:
    """Applies the alias rules to ``model_version_alias.created`` events, one at a time.

    Args:
        client: an ``MlflowClient`` (default: :func:`fairat.edge.registry._client`).
        approval_key: the approval HMAC key; None means an unsigned approval record suffices.
        models: registered-model names to guard; empty or None guards every model.
        log: where the one line per decision goes (default: stderr).
        seen_max: how many delivery ids are remembered for de-duplication.
        verify_key: the Ed25519 public key (attested mode): a version's verdict comes from its
            signed decision checked against its logged files, never from tags; None = local
            mode (tags; guards against accidents, not adversaries).
    """

    def __init__(self, client: Any = None, approval_key: str | None = None,
                 models: Iterable[str] | None = None, log: Callable[[str], None] = _stderr,
                 seen_max: int = 4096, retry_pause_s: float = 0.5, verify_key: Any = None):
        if client is None:
            from fairat.edge.registry import _client

            client = _client()
        self.client = client
        self.approval_key = approval_key or None
        self.verify_key = verify_key  # attested mode: verify each version's signed decision
        self.models = frozenset(models or ())
        self.log = log
        self.retry_pause_s = retry_pause_s
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_max = seen_max
        self._lock = threading.Lock()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=1000)  # newest last, for callers

    def check_registry(self) -> str | None:
        """One cheap read, so the first revert does not pay for connection set-up; returns why
        the registry cannot be read (None when it can)."""
        try:
            self.client.search_registered_models(max_results=1)
        except Exception as err:
            return f"{type(err).__name__}: {err}"[:300]
        return None

    def first_delivery(self, delivery_id: str | None) -> bool:
        """Record ``delivery_id``; False when it was already seen (a retry or a replay)."""
        if not delivery_id:
            return True
        with self._lock:
            if delivery_id in self._seen:
                self._seen.move_to_end(delivery_id)
                return False
            self._seen[delivery_id] = None
            if len(self._seen) > self._seen_max:
                self._seen.popitem(last=False)
            return True

    def _decide(self, outcome: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        decision = {"outcome": outcome, "model": data.get("name"), "alias": data.get("alias"),
                    "version": None if data.get("version") is None else str(data["version"]),
                    "at": _now_iso(), **extra}
        self.decisions.append(decision)
        fields = " ".join(f"{k}={decision[k]}" for k in ("model", "alias", "version"))
        more = " ".join(f"{k}={json.dumps(v)}" for k, v in extra.items() if k in LOGGED)
        self.log(f"fairat guard: {decision['at']} {outcome} {fields}"
                 + (f" {more}" if more else ""))
        return decision

    def handle(self, event: Any, delivery_id: str | None = None,
               received_at: str | None = None) -> dict[str, Any] | None:
        """Apply the rules to one webhook event; returns the decision (None: not for us).

        ``received_at``: when the HTTP front got it (UTC ISO), kept in the decision with the
        payload's ``timestamp`` and the time the alias was deleted, to measure the window.
        """
        if not isinstance(event, dict) or (event.get("entity"), event.get("action")) != \
                ("model_version_alias", "created"):
            return None
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        name, alias, version = data.get("name"), data.get("alias"), data.get("version")
        if alias not in GUARDED:
            return None
        if self.models and name not in self.models:
            return None
        if not self.first_delivery(delivery_id):
            return self._decide("duplicate-ignored", data, delivery_id=delivery_id)
        extra = {"received_at": received_at,
                 "event_timestamp": event.get("timestamp")}
        if not isinstance(name, str) or version is None:
            return self._decide("error", data, reasons=["event lacks name or version"], **extra)
        for attempt in (1, 2):  # _apply works from the registry's state: safe to run twice
            try:
                return self._apply(name, alias, str(version), data, extra)
            except Exception as err:  # the registry answered badly: once more, then say so
                if attempt == 2:
                    return self._decide("error", data,
                                        reasons=[f"{type(err).__name__}: {err}"[:500]], **extra)
                time.sleep(self.retry_pause_s)
        return None  # not reached

    def _apply(self, name: str, alias: str, version: str, data: dict[str, Any],
               extra: dict[str, Any]) -> dict[str, Any]:
        try:  # where the alias is now, and that version's tags, in one request
            mv = self.client.get_model_version_by_alias(name, alias)
        except Exception:  # MLflow answers a missing alias with INVALID_PARAMETER_VALUE
            if alias not in self.client.get_registered_model(name).aliases:
                return self._decide("skipped", data, note="alias already gone", **extra)
            raise
        if str(mv.version) != version:
            return self._decide("skipped", data,
                                note=f"alias has moved to version {mv.version}", **extra)
        problems = self.problems(alias, name, mv)
        if not problems:
            return self._decide("allowed", data, **extra)
        return self._revert(name, alias, version, data, extra, problems)

    def _revert(self, name: str, alias: str, version: str, data: dict[str, Any],
                extra: dict[str, Any], problems: list[str]) -> dict[str, Any]:
        """Delete ``alias`` from ``version``, put it back where the rules allow, tag why."""
        self.client.delete_registered_model_alias(name, alias)  # already gone: MLflow says 200
        extra = {**extra, "deleted_at": _now_iso()}
        notes = []
        restored = None
        if alias in GUARDED:  # champion: the last approved; candidate: the newest passed version
            try:
                restored = self._restore(name, alias, version)
            except Exception as err:  # the alias stays deleted: fail closed
                notes.append(f"restore failed: {type(err).__name__}: {err}"[:300])
        record = {"alias": alias, "at": _now_iso(), "reasons": problems, "restored_to": restored}
        try:
            self._set_tag(name, version, REVERTED_TAG, _fit(record))
            self._set_tag(name, version, ATTEMPTED_BY_TAG, ATTEMPTED_BY)
        except Exception as err:
            notes.append(f"tagging failed twice: {type(err).__name__}: {err}"[:300])
        if notes:
            extra = {**extra, "note": "; ".join(notes)}
        return self._decide("reverted", data, reasons=problems, restored_to=restored, **extra)

    def problems(self, alias: str, name: str, mv: Any) -> list[str]:
        """Why ``alias`` must not sit on version ``mv`` ([] = it may), in this guard's mode."""
        evidence = None
        if self.verify_key is not None and alias in GUARDED:
            from fairat.edge.registry import version_evidence

            evidence = version_evidence(mv, self.verify_key, self.client)
        return alias_problems(alias, name, str(mv.version), dict(mv.tags), self.approval_key,
                              evidence)

    def _restore(self, name: str, alias: str, version: str | None) -> str | None:
        """Put ``alias`` back on another version the rules allow: ``champion`` on the most
        recently approved one, ``candidate`` on the newest passed one (where register put it),
        so reverting a hand-set alias keeps the legitimate holder. None: none qualifies."""
        allowed = []
        for mv in self.client.search_model_versions(f"name = '{name}'"):
            tags = dict(mv.tags)
            if str(mv.version) != version and not self.problems(alias, name, mv):
                when = tags.get(f"{TAG}approved_at", "") if alias == CHAMPION else ""
                allowed.append((when, int(mv.version)))
        if not allowed:
            return None
        target = str(max(allowed)[1])
        self.client.set_registered_model_alias(name, alias, target)
        return target

    def reconcile(self) -> list[dict[str, Any]]:
        """Re-check every alias of the guarded models now; returns the decisions taken.

        Why: webhooks only report what happens while the guard is up, and MLflow sends none for a
        deleted alias or an edited tag or file. At start and on a timer the guard therefore
        re-applies the rules to the registry as it is: an alias that breaks them (set while the
        guard was down, or whose evidence changed since) is reverted as an event would be, and a
        missing ``champion`` is put back on the last approved version the rules allow.
        """
        decisions = []
        for name in sorted(self.models or self._all_models()):
            aliases = {a: str(v) for a, v in self.client.get_registered_model(name).aliases.items()}
            for alias in GUARDED:
                data = {"name": name, "alias": alias, "version": aliases.get(alias)}
                extra = {"received_at": _now_iso(), "event_timestamp": None, "note": "reconcile"}
                if alias in aliases:
                    mv = self.client.get_model_version_by_alias(name, alias)
                    problems = self.problems(alias, name, mv)
                    if problems:
                        decisions.append(self._revert(name, alias, str(mv.version), data,
                                                      extra, problems))
                elif alias == CHAMPION:
                    restored = self._restore(name, alias, None)
                    if restored is not None:
                        decisions.append(self._decide("restored", data, restored_to=restored,
                                                      **{**extra, "note": "reconcile: champion "
                                                         "was missing"}))
        return decisions

    def _all_models(self) -> list[str]:
        names, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=200, page_token=token)
            names += [m.name for m in page]
            token = getattr(page, "token", None)
            if not token:
                return names

    def _set_tag(self, name: str, version: str, key: str, value: str) -> None:
        try:
            self.client.set_model_version_tag(name, version, key, value)
        except Exception:  # e.g. MLflow's non-atomic tag upsert on SQLite: try once more
            time.sleep(self.retry_pause_s)
            self.client.set_model_version_tag(name, version, key, value)


def _fit(record: dict[str, Any]) -> str:
    """``record`` as JSON within MLflow's tag-value limit (long reasons are shortened)."""
    text = json.dumps(record)
    if len(text) <= TAG_VALUE_MAX:
        return text
    reasons = [r[:300] for r in record["reasons"]]
    while reasons and len(json.dumps({**record, "reasons": reasons})) > TAG_VALUE_MAX:
        reasons.pop()
    return json.dumps({**record, "reasons": reasons + ["(more reasons cut)"]})


# ----------------------------------------------------------------------------- HTTP receiver

class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if urlsplit(self.path).path == "/healthz":
            self._reply(200, "ok")
        else:
            self._reply(404, "not found")

    def do_POST(self) -> None:  # noqa: N802
        received = _now_iso()
        guard_server = self.server.guard_server
        if urlsplit(self.path).path != WEBHOOK_PATH:
            self._reply(404, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, "Content-Length required")
            return
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self._reply(413, "body too large")
            return
        raw = self.rfile.read(length)
        problem = signature_problem(guard_server.secret, self.headers, raw, guard_server.max_age_s)
        if problem:
            guard_server.log(f"fairat guard: {_now_iso()} refused delivery from "
                             f"{self.client_address[0]}: {problem}")
            self._reply(401, f"unauthorized: {problem}")
            return
        try:
            event = json.loads(raw)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            self._reply(400, f"bad body: {err}"[:200])
            return
        try:
            guard_server.queue.put_nowait((event, self.headers.get(H_ID), received))
        except queue.Full:
            self._reply(503, "busy, retry later")
            return
        self._reply(200, "queued")

    def log_message(self, format: str, *args: Any) -> None:  # decisions are logged instead
        return


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    guard_server: "GuardServer"


class GuardServer:
    """The guard's HTTP front: ``POST /webhook`` (signed deliveries), ``GET /healthz``.

    One background worker applies the queued events in arrival order. ``start()`` runs the HTTP
    server in a thread too (tests, embedding); ``serve_forever()`` blocks (the CLI).
    """

    def __init__(self, guard: Guard, secret: str, host: str = "127.0.0.1", port: int = 8765,
                 max_age_s: float = MAX_AGE_S, queue_max: int = 10000,
                 reconcile_every_s: float = RECONCILE_EVERY_S):
        if not secret:
            raise ValueError("the guard needs a webhook secret")
        self.guard, self.secret, self.max_age_s = guard, secret, max_age_s
        self.reconcile_every_s = reconcile_every_s  # 0: only at start
        self._stopping = threading.Event()
        self.log = guard.log
        self.queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self.httpd = _HTTPServer((host, port), _Handler)
        self.httpd.guard_server = self
        self._worker = threading.Thread(target=self._work, name="fairat-guard-worker",
                                        daemon=True)
        self._http_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{WEBHOOK_PATH}"

    def _work(self) -> None:
        problem = self.guard.check_registry()  # events queue up meanwhile
        if problem:  # the server may come up later: say so, and carry on
            self.log(f"fairat guard: {_now_iso()} warning: cannot read the registry yet: "
                     f"{problem}")
        self._reconcile()  # what happened while the guard was down
        if self.reconcile_every_s > 0:
            threading.Thread(target=self._tick, name="fairat-guard-timer", daemon=True).start()
        while True:
            item = self.queue.get()
            if item is None:
                return
            if item == RECONCILE:
                self._reconcile()
                self.queue.task_done()
                continue
            event, delivery_id, received = item
            try:
                self.guard.handle(event, delivery_id, received)
            except Exception as err:  # never let one event stop the guard
                self.log(f"fairat guard: {_now_iso()} error {type(err).__name__}: {err}")
            finally:
                self.queue.task_done()

    def _reconcile(self) -> None:
        try:
            self.guard.reconcile()
        except Exception as err:  # the registry may be down: the next tick tries again
            self.log(f"fairat guard: {_now_iso()} reconcile error {type(err).__name__}: "
                     f"{err}"[:500])

    def _tick(self) -> None:
        """Queue a reconcile every ``reconcile_every_s`` (through the one worker, so it never
        races an event)."""
        while not self._stopping.wait(self.reconcile_every_s):
            try:
                self.queue.put_nowait(RECONCILE)
            except queue.Full:
                pass

    def start(self) -> "GuardServer":
        self._worker.start()
        self._http_thread = threading.Thread(target=self.httpd.serve_forever,
                                             name="fairat-guard-http", daemon=True)
        self._http_thread.start()
        return self

    def serve_forever(self) -> None:
        self._worker.start()
        try:
            self.httpd.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._http_thread is not None:
            self.httpd.shutdown()
            self._http_thread.join(5)
        self.httpd.server_close()
        if self._worker.is_alive():
            self.queue.put(None)
            self._worker.join(10)
