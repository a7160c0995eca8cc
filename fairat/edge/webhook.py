"""MLflow webhooks for the guard: verifying a delivery's signature, and creating the webhook.

Why apart from the rules: this is MLflow's wire protocol (HMAC-SHA256 over ``id.timestamp.body``,
base64, ``v1,`` prefix) and its webhook API, which change with MLflow, while the alias rules in
:mod:`fairat.edge.guard` change with the project's policy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any, Mapping

from fairat.errors import RegistryError

EVENT = "model_version_alias.created"
MAX_AGE_S = 15 * 60  # oldest signature timestamp accepted; MLflow's retries reuse the timestamp
DEFAULT_NAME = "fairat-guard"
H_ID, H_TS, H_SIG = "X-MLflow-Delivery-Id", "X-MLflow-Timestamp", "X-MLflow-Signature"


def _header(headers: Mapping[str, str] | Any, name: str) -> str | None:
    """Case-insensitive header lookup for a dict or an ``http.server`` message."""
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value


def signature_problem(secret: str, headers: Mapping[str, str] | Any, raw_body: bytes,
                      max_age_s: float = MAX_AGE_S, now: float | None = None) -> str | None:
    """Why this delivery is not a genuine, fresh MLflow webhook (None when it is).

    MLflow signs ``f"{delivery_id}.{timestamp}."`` + the raw body with HMAC-SHA256, keyed by the
    webhook secret's UTF-8 bytes, and sends ``v1,<standard base64>``. The timestamp must be
    within ``max_age_s`` of ``now`` either way (a replay older than that is refused).
    """
    if not secret:
        return "no webhook secret configured"
    delivery_id, stamp, signature = (_header(headers, h) for h in (H_ID, H_TS, H_SIG))
    missing = [h for h, v in ((H_ID, delivery_id), (H_TS, stamp), (H_SIG, signature)) if not v]
    if missing:
        return f"missing header {', '.join(missing)}"
    try:
        sent = int(stamp)
    except ValueError:
        return f"{H_TS} is not unix seconds"
    age = (time.time() if now is None else now) - sent
    if abs(age) > max_age_s:
        return f"timestamp is {age:.0f} s off (more than {max_age_s:.0f} s): stale or replayed"
    message = f"{delivery_id}.{stamp}.".encode() + raw_body
    want = "v1," + base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256)
                                    .digest()).decode()
    if not hmac.compare_digest(signature.encode(), want.encode()):
        return "signature does not match (wrong secret or altered body)"
    return None


def verify_signature(secret: str, headers: Mapping[str, str] | Any, raw_body: bytes,
                     max_age_s: float = MAX_AGE_S, now: float | None = None) -> bool:
    """True when ``raw_body`` with ``headers`` is a fresh delivery signed with ``secret``."""
    return signature_problem(secret, headers, raw_body, max_age_s, now) is None


def register_webhook(url: str, secret: str, name: str = DEFAULT_NAME,
                     client: Any = None) -> dict[str, Any]:
    """Create the MLflow webhook ``name`` for ``model_version_alias.created`` (or update the
    existing one with that name: url, event, secret, ACTIVE). Returns {webhook_id, name, url,
    action}. The tracking URI must be an ``mlflow server`` (http or https): only the server
    delivers webhooks."""
    from fairat.edge.tracking import tracking_uri

    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise RegistryError(f"webhooks need an `mlflow server`: MLFLOW_TRACKING_URI is {uri!r}, "
                            "set it to the server's http(s) URL")
    if not secret:
        raise RegistryError("the webhook needs a secret")
    if client is None:
        from fairat.edge.registry import _client

        client = _client()
    description = "fairat guard: reverts candidate/champion aliases that skip the gate"
    try:
        existing, token = None, None
        while existing is None:
            page = client.list_webhooks(max_results=100, page_token=token)
            existing = next((w for w in page if w.name == name), None)
            token = page.token
            if not token:
                break
        if existing is not None:
            hook = client.update_webhook(existing.webhook_id, url=url, events=[EVENT],
                                         description=description, secret=secret, status="ACTIVE")
            action = "updated"
        else:
            hook = client.create_webhook(name=name, url=url, events=[EVENT],
                                         description=description, secret=secret, status="ACTIVE")
            action = "created"
    except Exception as err:  # MlflowException (bad URL scheme, private IP, ...), connection
        raise RegistryError(f"cannot register webhook {name!r} at {uri}: {err}") from err
    return {"webhook_id": hook.webhook_id, "name": name, "url": url, "action": action}
