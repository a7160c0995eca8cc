"""How `fairat pipeline submit` reaches a Kubeflow Pipelines endpoint: credentials, TLS, proxy,
and the preflight checks that turn a refused connection, a login page or a missing namespace into
one line that says what to do (exit code 2), never a library traceback.

Authentication (:class:`Credentials`): a bearer token read from an environment variable
(``--token-env``, default ``KF_PIPELINES_TOKEN``), the in-cluster ServiceAccount token file
(``--in-cluster-token`` / ``--token-path``) or a session cookie read from an environment variable
(``--cookie-env``, default ``KF_PIPELINES_COOKIE``). Secrets never come from the command line
(``ps`` and shell history show it), and are never printed, logged, compiled into the package or
passed as pipeline arguments; messages name where a credential came from, never its value.

Transport (:class:`Transport`): a private CA (``--ca-cert``), TLS verification off only when asked
(``--insecure-skip-tls-verify``), and the proxy from ``HTTPS_PROXY`` / ``HTTP_PROXY`` minus
``NO_PROXY``, which kfp's client does not read by itself.

Like :mod:`pipelines.cli`, nothing here imports kfp at module level (``fairat --help`` stays light).
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 10.0
TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # kfp.client.KF_PIPELINES_SA_TOKEN_PATH
HEALTHZ = "/apis/v2beta1/healthz"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class KubeflowError(RuntimeError):
    """The Kubeflow Pipelines endpoint is unreachable or refused a request."""


@dataclass(frozen=True)
class Credentials:
    """What `submit` sends to the KFP API; ``source`` names where it came from (for messages).

    ``repr`` shows the sources only, so a credential never reaches a log or a traceback.
    """

    token: str | None = field(default=None, repr=False)  # bearer token (from an env var)
    token_path: str | None = None  # in-cluster ServiceAccount token file, read on every request
    cookie: str | None = field(default=None, repr=False)  # "name=value" session cookie
    source: str = "no credentials"

    def headers(self) -> dict[str, str]:
        """The HTTP headers kfp's client sends with these credentials."""
        headers = {}
        token = self.token
        if self.token_path:
            token = _read_token_file(self.token_path)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.cookie:
            headers["Cookie"] = self.cookie
        return headers

    def client_kwargs(self) -> dict[str, Any]:
        """``kfp.Client`` arguments: existing_token, credentials (the SA token file), cookies."""
        kwargs: dict[str, Any] = {}
        if self.token:
            kwargs["existing_token"] = self.token
        elif self.token_path:
            from kfp.client import ServiceAccountTokenVolumeCredentials

            kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=self.token_path)
        if self.cookie:
            kwargs["cookies"] = self.cookie
        return kwargs


def _read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise KubeflowError(f"--in-cluster-token: cannot read the ServiceAccount token at {path} "
                            f"({err.strerror}): mount a projected token with audience "
                            "pipelines.kubeflow.org there, or pass --token-path "
                            "(see docs/kubeflow.md, Authentication)") from None
    if not token:
        raise KubeflowError(f"--in-cluster-token: the ServiceAccount token file {path} is empty")
    return token


def _from_env(flag: str, name: str, required: bool) -> str | None:
    if not _ENV_NAME.match(name):  # never echo it: it may be the secret itself
        raise KubeflowError(f"{flag} takes the NAME of an environment variable holding the "
                            "secret, not the secret itself (which the command line would expose)")
    value = os.environ.get(name, "").strip()
    if not value and required:
        if not name.isupper():  # an unusual name may be a mistyped secret: do not show it
            raise KubeflowError(f"{flag}: that environment variable is not set or empty (names "
                                "are usually upper case, e.g. KF_PIPELINES_TOKEN)")
        raise KubeflowError(f"{flag} {name}: the environment variable {name} is not set or empty")
    return value or None


@dataclass(frozen=True)
class Transport:
    """How `submit` reaches the endpoint: which CAs it trusts, whether it verifies TLS at all,
    and the proxy it goes through (from ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``, as
    curl and pip take it; kfp's client reads none of them itself)."""

    ca_cert: str | None = None  # PEM bundle of a private CA, instead of certifi's
    verify: bool = True  # False only on an explicit --insecure-skip-tls-verify
    proxy: str | None = None
    proxy_source: str = ""  # the variable the proxy came from, for messages

    def client_kwargs(self) -> dict[str, Any]:
        """``kfp.Client`` arguments: ssl_ca_cert, verify_ssl, proxy."""
        kwargs: dict[str, Any] = {}
        if self.ca_cert:
            kwargs["ssl_ca_cert"] = self.ca_cert
        if not self.verify:
            kwargs["verify_ssl"] = False
        if self.proxy:
            kwargs["proxy"] = self.proxy
        return kwargs


def transport_from(host: str, ca_cert: str | None = None, insecure: bool = False,
                   environ: Any = None) -> Transport:
    """The :class:`Transport` for ``host``: the CA file checked now, the proxy from the
    environment unless ``NO_PROXY`` exempts the host."""
    if ca_cert and insecure:
        raise KubeflowError("--ca-cert and --insecure-skip-tls-verify contradict each other: "
                            "trust the private CA with --ca-cert, or (on purpose) verify nothing")
    if ca_cert:
        try:
            text = Path(ca_cert).read_text(errors="replace")
        except OSError as err:
            raise KubeflowError(f"--ca-cert: cannot read {ca_cert} ({err.strerror})") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise KubeflowError(f"--ca-cert: {ca_cert} holds no PEM certificate (-----BEGIN "
                                "CERTIFICATE-----)")
    environ = os.environ if environ is None else environ
    url = urlparse(host if "://" in host else f"https://{host}")
    names = ["HTTPS_PROXY", "https_proxy"] if url.scheme == "https" else ["HTTP_PROXY",
                                                                           "http_proxy"]
    source = next((n for n in names if environ.get(n, "").strip()), "")
    proxy = environ.get(source, "").strip() if source else None
    no_proxy = ",".join(environ.get(n, "") for n in ("NO_PROXY", "no_proxy"))
    if proxy and url.hostname and no_proxy.strip() and _bypassed(url.hostname, no_proxy):
        proxy, source = None, ""
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.username or parsed.password:  # never echo it: it holds a password
            raise KubeflowError(f"${source} names a proxy with credentials, which kfp's client "
                                "cannot send; use a proxy that needs none, or NO_PROXY for "
                                "this host")
        if not parsed.hostname:
            raise KubeflowError(f"${source} is not a proxy URL like http://proxy.example:3128")
        proxy = f"{parsed.scheme}://{parsed.netloc}"
    return Transport(ca_cert, not insecure, proxy, source)


def _bypassed(hostname: str, no_proxy: str) -> bool:
    """``NO_PROXY`` semantics as curl has them: ``*``, exact names, domain suffixes."""
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        entry = entry.split(":")[0]
        if entry == "*" or (entry and (hostname.lower() == entry
                                       or hostname.lower().endswith("." + entry))):
            return True
    return False


def credentials_from(token_env: str | None = TOKEN_ENV, cookie_env: str | None = COOKIE_ENV,
                     in_cluster: bool = False, token_path: str | None = None) -> Credentials:
    """Credentials from the CLI options; the default variables are read only when set.

    A ``token_env`` or ``cookie_env`` other than the default must be set. ``token_path`` implies
    ``in_cluster``; the in-cluster token replaces the bearer token from the environment.
    """
    sources = []
    token = path = None
    if in_cluster or token_path:
        if token_env not in (None, TOKEN_ENV):
            raise KubeflowError("--in-cluster-token and --token-env each give the bearer token: "
                                "pass one of them")
        path = token_path or SA_TOKEN_PATH
        _read_token_file(path)  # fail now, naming the file, not inside the client
        sources.append(f"the ServiceAccount token at {path}")
    elif token_env:
        token = _from_env("--token-env", token_env, required=token_env != TOKEN_ENV)
        if token:
            sources.append(f"the bearer token from ${token_env}")
    cookie = None
    if cookie_env:
        cookie = _from_env("--cookie-env", cookie_env, required=cookie_env != COOKIE_ENV)
        if cookie:
            name, sep, _ = cookie.partition("=")
            if not sep or not name.strip() or any(c in cookie for c in "\r\n"):
                raise KubeflowError(f"--cookie-env {cookie_env}: expected NAME=VALUE in "
                                    f"${cookie_env}, e.g. authservice_session=... copied from a "
                                    "logged-in browser")
            sources.append(f"the {name.strip()} cookie from ${cookie_env}")
    return Credentials(token, path, cookie, " and ".join(sources) or "no credentials")


def auth_message(host: str, status: int, reason: str, detail: str, creds: Credentials,
                 namespace: str | None = None) -> str:
    """One line for a 401 / 403 (or a login redirect): what the server said and what to provide."""
    provide = (f"set {TOKEN_ENV} (a user or ServiceAccount token), run inside the cluster with "
               "--in-cluster-token, or pass --cookie-env with the session cookie of a logged-in "
               "browser (authservice_session=..., on Kubeflow 1.9+ oauth2_proxy_kubeflow=...) "
               "(see docs/kubeflow.md, Authentication)")
    said = f"Kubeflow Pipelines at {host} answered {status} {reason}".rstrip()
    if detail:
        said += f" ({detail})"
    if status == 403 and creds.source != "no credentials":
        where = f"namespace {namespace}" if namespace else "its profile namespace (--namespace)"
        return (f"{said} to {creds.source}: this identity may not do that here; in multi-user "
                f"Kubeflow it must own or contribute to {where}; else {provide}")
    if creds.source == "no credentials":
        return f"{said} and no credentials were sent: {provide}"
    return f"{said} to {creds.source} (expired, or not accepted by this endpoint): {provide}"


def _check_reachable(host: str, transport: Transport | None = None) -> None:
    """Fail fast, naming the host (or the proxy in between), when nothing accepts a TCP
    connection there.

    The kfp client has no connect timeout and retries a refused connection several times; a
    preflight connect gives one clear error within ``CONNECT_TIMEOUT_S``.
    """
    url = urlparse(host if "://" in host else f"https://{host}")
    if not url.hostname:
        raise KubeflowError(f"--host {host!r} is not a URL like http://127.0.0.1:8888")
    target, what = url, f"Kubeflow Pipelines at {host}"
    if transport and transport.proxy:
        target = urlparse(transport.proxy)
        what = f"the proxy {transport.proxy} (from ${transport.proxy_source}) for {host}"
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise KubeflowError(f"cannot reach {what} ({target.hostname}:{port}): {err}") from None


def _error_detail(body: Any) -> str:
    """The server's error text, on one line and short (bodies are JSON or an HTML login page)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            text = str(parsed.get("error") or parsed.get("message") or text)
    except ValueError:
        pass
    if text.lstrip().startswith("<"):
        return ""  # an HTML page says nothing a terminal can use
    return " ".join(text.split())[:300]


def _check_access(host: str, creds: Credentials, namespace: str | None,
                  transport: Transport | None = None) -> None:
    """GET the health endpoint with the credentials before the kfp client does.

    Why: the client retries a failing health check five times, five seconds apart, logging a
    traceback each time; an auth proxy (Dex, oauth2-proxy) answers 401 or redirects to a login
    page there, which deserves the one-line answer of :func:`auth_message` instead. The same
    answer says whether the install is multi-user, where a run needs ``--namespace``.
    """
    import certifi
    import urllib3

    transport = transport or Transport()
    base = host if "://" in host else f"https://{host}"
    tls = ({"cert_reqs": "CERT_NONE"} if not transport.verify else
           {"cert_reqs": "CERT_REQUIRED", "ca_certs": transport.ca_cert or certifi.where()})
    pool = (urllib3.ProxyManager(transport.proxy, **tls) if transport.proxy
            else urllib3.PoolManager(**tls))
    try:
        with warnings.catch_warnings():  # the one warning about skipped TLS checks is ours
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            answer = pool.request("GET", base.rstrip("/") + HEALTHZ, headers=creds.headers(),
                                  redirect=False, retries=False,
                                  timeout=urllib3.Timeout(CONNECT_TIMEOUT_S, read=30.0))
    except urllib3.exceptions.SSLError as err:
        raise KubeflowError(f"TLS to Kubeflow Pipelines at {host} failed ({err}): for a private "
                            "CA pass --ca-cert PEM_FILE (see docs/kubeflow.md)") from None
    except urllib3.exceptions.HTTPError as err:
        raise KubeflowError(f"cannot talk to Kubeflow Pipelines at {host}: {err}") from None
    if answer.status in (401, 403):
        raise KubeflowError(auth_message(host, answer.status, answer.reason or "",
                                         _error_detail(answer.data), creds, namespace))
    if 300 <= answer.status < 400:
        where = urlparse(answer.headers.get("Location", ""))
        login = f"{where.scheme}://{where.netloc}{where.path}" if where.netloc else where.path
        raise KubeflowError(auth_message(host, answer.status, answer.reason or "",
                                         f"a redirect to {login or 'another page'}, usually a "
                                         "login page", creds, namespace))
    if answer.status >= 400:
        raise KubeflowError(f"Kubeflow Pipelines at {host} answered {answer.status} "
                            f"{answer.reason} at {HEALTHZ}: {_error_detail(answer.data)}")
    try:
        multi_user = bool(json.loads(answer.data or b"{}").get("multi_user"))
    except (ValueError, AttributeError):
        multi_user = False
    if multi_user and not namespace:
        raise KubeflowError(f"Kubeflow Pipelines at {host} is a multi-user install, where every "
                            f"run belongs to a profile namespace: {NAMESPACE_HINT}")


NAMESPACE_HINT = ("pass --namespace with your profile's namespace (e.g. "
                  "kubeflow-user-example-com; `kubectl get profiles` lists them, the Kubeflow "
                  "dashboard shows yours at the top)")


def _namespace_hint(detail: str, namespace: str | None) -> str:
    """The server's error, plus what to do when it is about a missing namespace."""
    if not namespace and "namespace" in detail.lower():
        return f"{detail}; {NAMESPACE_HINT}"
    return detail
