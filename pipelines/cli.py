"""`fairat pipeline compile | submit`: the Kubeflow pipeline from the command line.

Why a module apart from the CLI: compiling needs kfp and submitting needs a cluster, while
`fairat --help` must answer without either, so kfp (and the pipeline definition) are imported only
inside the functions that use them. For the same reason the cluster-setting defaults the help shows
are spelled out here (:data:`CLUSTER_DEFAULTS`); a test keeps them equal to ``ClusterSettings``.

Submitting compiles the pipeline with defaults from the given params file and passes every knob
explicitly as a run argument, so the run is exactly ``--params`` plus ``-S`` overrides whatever the
committed YAML says. A host that cannot be reached or that answers with an error stops with a
message naming the host (exit code 2), never with a library traceback.

Authentication (:class:`Credentials`): a bearer token read from an environment variable
(``--token-env``, default ``KF_PIPELINES_TOKEN``), the in-cluster ServiceAccount token file
(``--in-cluster-token`` / ``--token-path``) or a session cookie read from an environment variable
(``--cookie-env``, default ``KF_PIPELINES_COOKIE``). Secrets never come from the command line
(``ps`` and shell history show it), and are never printed, logged, compiled into the package or
passed as pipeline arguments; messages name where a credential came from, never its value.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fairat.config import ConfigError, Params, load_params

# CLI flag -> ClusterSettings field (pipelines.fairat_pipeline).
CLUSTER_FLAGS = {"--image": "image", "--s3-secret": "s3_secret",
                 "--mlflow-secret": "mlflow_secret", "--mlflow-auth-secret": "mlflow_auth_secret",
                 "--endpoints-config-map": "endpoints_config_map",
                 "--shared-volume-claim": "shared_volume_claim",
                 "--trainer-namespace": "trainer_namespace"}
# ClusterSettings' defaults, spelled out for --help without importing kfp (a test compares them).
# mlflow_auth_secret None: the --mlflow-secret (ClusterSettings' default is the same name).
CLUSTER_DEFAULTS: dict[str, str | None] = {
    "image": "ghcr.io/fairat/fairat:0.1.0", "s3_secret": "fairat-s3",
    "mlflow_secret": "fairat-mlflow", "mlflow_auth_secret": None,
    "endpoints_config_map": "fairat-endpoints", "shared_volume_claim": None,
    "trainer_namespace": None}
CLUSTER_HELP = {
    "image": "container image of every task (default: %(default)s)",
    "s3_secret": "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, mounted as optional "
                 "(default: %(default)s)",
    "mlflow_secret": "Secret with MLFLOW_TRACKING_URI, required by train, evaluate and register "
                     "(default: %(default)s)",
    "mlflow_auth_secret": "Secret with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                          "mounted as optional (default: the --mlflow-secret, fairat-mlflow)",
    "endpoints_config_map": "ConfigMap with AWS_ENDPOINT_URL and MLFLOW_S3_ENDPOINT_URL, mounted "
                            "as optional (default: %(default)s)",
    "shared_volume_claim": "ReadWriteMany PersistentVolumeClaim; set: train runs as a Kubeflow "
                           "Trainer TrainJob, needed for --num-nodes above 1 (default: none, train "
                           "runs in its own pod)",
    "trainer_namespace": "namespace the TrainJob is created in (default: the pipeline pod's)"}
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


def cluster_settings(values: dict[str, Any]) -> Any:
    """ClusterSettings with the given non-None fields replaced."""
    from pipelines.fairat_pipeline import ClusterSettings

    return ClusterSettings(**{k: v for k, v in values.items() if v is not None})


def compile_to(out_path: str | Path, params_file: str | Path, settings: Any = None) -> Path:
    """Compile the pipeline IR (YAML) with parameter defaults from ``params_file``."""
    from pipelines.fairat_pipeline import ClusterSettings, compile_pipeline

    return compile_pipeline(out_path, params_file, settings or ClusterSettings())


def _check_reachable(host: str) -> None:
    """Fail fast, naming the host, when nothing accepts a TCP connection there.

    The kfp client has no connect timeout and retries a refused connection several times; a
    preflight connect gives one clear error within ``CONNECT_TIMEOUT_S``.
    """
    url = urlparse(host if "://" in host else f"https://{host}")
    if not url.hostname:
        raise KubeflowError(f"--host {host!r} is not a URL like http://127.0.0.1:8888")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise KubeflowError(f"cannot reach Kubeflow Pipelines at {host} "
                            f"({url.hostname}:{port}): {err}") from None


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


def _check_access(host: str, creds: Credentials, namespace: str | None) -> None:
    """GET the health endpoint with the credentials before the kfp client does.

    Why: the client retries a failing health check five times, five seconds apart, logging a
    traceback each time; an auth proxy (Dex, oauth2-proxy) answers 401 or redirects to a login
    page there, which deserves the one-line answer of :func:`auth_message` instead.
    """
    import certifi
    import urllib3

    base = host if "://" in host else f"https://{host}"
    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
    try:
        answer = pool.request("GET", base.rstrip("/") + HEALTHZ, headers=creds.headers(),
                              redirect=False, retries=False,
                              timeout=urllib3.Timeout(CONNECT_TIMEOUT_S, read=30.0))
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


def submit(host: str, params: Params, experiment: str = "fairat", run_name: str | None = None,
           namespace: str | None = None, resources: dict[str, Any] | None = None,
           settings: Any = None, enable_caching: bool | None = None,
           credentials: Credentials | None = None) -> dict[str, str]:
    """Compile with ``params`` as defaults and start a run; returns {run_id, experiment_id, host}.

    Args:
        host: KFP API endpoint, e.g. ``http://127.0.0.1:8888`` (a port-forward of ml-pipeline-ui).
        params: the full params (file plus overrides); every knob is sent as a run argument.
        resources: pipeline arguments ``accelerator_type``, ``gpus_per_node``, ``num_nodes``,
            ``checkpoint_url``.
        enable_caching: None keeps the compiled per-task caching; False forces every step to run.
        credentials: what authenticates the requests (:func:`credentials_from`); None: nothing.
    """
    import kfp
    import kfp_server_api
    import urllib3

    from fairat.cluster.params import pipeline_arguments
    from pipelines.fairat_pipeline import ClusterSettings, build_pipeline, write_package

    settings = settings or ClusterSettings()
    creds = credentials or Credentials()
    num_nodes = (resources or {}).get("num_nodes", 1)
    if (resources or {}).get("checkpoint_url"):
        from fairat.edge.storage import StorageError, parse_prefix_url

        try:
            parse_prefix_url(resources["checkpoint_url"])
        except StorageError as err:
            raise KubeflowError(f"--checkpoint-url: {err}") from None
    if num_nodes < 1:
        raise KubeflowError(f"--num-nodes {num_nodes} must be >= 1")
    if num_nodes > 1 and not settings.shared_volume_claim:
        # the run would fail in its train step after prepare; say so before submitting
        raise KubeflowError(f"--num-nodes {num_nodes} runs training as a Kubeflow Trainer "
                            "TrainJob, which needs a shared ReadWriteMany volume: pass "
                            "--shared-volume-claim NAME (see docs/kubeflow.md)")
    _check_reachable(host)
    _check_access(host, creds, namespace)
    arguments = {**pipeline_arguments(params), **(resources or {})}
    with tempfile.TemporaryDirectory(prefix="fairat-kfp-") as tmp:
        package = write_package(build_pipeline(params, settings), Path(tmp) / "fairat_pipeline.yaml")
        try:
            with warnings.catch_warnings():  # the client warns on every construction
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host, namespace=namespace or "kubeflow",
                                    **creds.client_kwargs())
            result = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name,
                experiment_name=experiment, namespace=namespace, enable_caching=enable_caching)
        except kfp_server_api.ApiException as err:
            if err.status in (401, 403):
                raise KubeflowError(auth_message(host, err.status, err.reason or "",
                                                 _error_detail(err.body), creds,
                                                 namespace)) from None
            raise KubeflowError(f"Kubeflow Pipelines at {host} answered {err.status} "
                                f"{err.reason}: {_error_detail(err.body)}") from None
        except (urllib3.exceptions.HTTPError, TimeoutError, OSError) as err:
            raise KubeflowError(f"cannot talk to Kubeflow Pipelines at {host}: {err}") from None
    run = result.run_info
    return {"run_id": run.run_id, "experiment_id": run.experiment_id or "", "host": host}


def add_parser(sub: Any) -> None:
    """Add `fairat pipeline compile | submit` to the CLI's subcommands."""
    p = sub.add_parser("pipeline", help="compile the Kubeflow pipeline or submit a run",
                       description="The same pipeline on Kubeflow Pipelines (see docs/kubeflow.md).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("compile", "write the pipeline IR YAML"),
                       ("submit", "start a run on a Kubeflow Pipelines endpoint")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--params", default="params.yaml", type=Path,
                       help="params file the parameter defaults come from (default: %(default)s)")
        cluster = a.add_argument_group("compile-time cluster settings (names only; the values "
                                       "live in the cluster)")
        for flag, field_name in CLUSTER_FLAGS.items():
            cluster.add_argument(flag, dest=field_name, default=CLUSTER_DEFAULTS[field_name],
                                 help=CLUSTER_HELP[field_name])
        cluster.add_argument("--keep-failed-trainjob", action="store_true",
                             help="leave a failed TrainJob for inspection instead of deleting "
                                  "it (a cancelled run's TrainJob is deleted either way; "
                                  "default: delete)")
        cluster.add_argument("--no-baseline", action="store_true",
                             help="leave out the PGD-AT baseline trained beside the model (half "
                                  "the training cost; the card then shows no lift; default: "
                                  "train it, as dvc repro does)")
    compile_p, submit_p = actions.choices["compile"], actions.choices["submit"]
    compile_p.add_argument("--out", default="pipelines/fairat_pipeline.yaml", type=Path,
                           help="output YAML (default: %(default)s)")
    submit_p.add_argument("--host", required=True,
                          help="KFP API endpoint, e.g. http://127.0.0.1:8888 (a port-forward) or "
                               "https://kubeflow.example.com/pipeline (through the gateway)")
    submit_p.add_argument("--experiment", default="fairat",
                          help="experiment the run is filed under (default: %(default)s)")
    submit_p.add_argument("--run-name", default=None,
                          help="run name shown in the UI (default: kfp's, the pipeline name and "
                               "the time)")
    submit_p.add_argument("--namespace", default=None,
                          help="profile namespace of a multi-user Kubeflow, e.g. "
                               "kubeflow-user-example-com (default: none, single-user)")
    submit_p.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="override one param (repeatable)")
    submit_p.add_argument("--accelerator-type", default=None,
                          help="GPU resource name (default: the pipeline's, nvidia.com/gpu)")
    submit_p.add_argument("--gpus-per-node", type=int, default=None,
                          help="GPUs for the train task; >1 runs torchrun (default: 1)")
    submit_p.add_argument("--num-nodes", type=int, default=None,
                          help="training nodes; above 1 a Kubeflow Trainer TrainJob trains "
                               "(needs --shared-volume-claim) (default: 1)")
    submit_p.add_argument("--checkpoint-url", default=None, metavar="S3_URL",
                          help="s3://bucket/prefix for train's epoch checkpoints, so a retried "
                               "train pod resumes (default: none, pod scratch space)")
    submit_p.add_argument("--no-cache", action="store_true",
                          help="run every step even where a cached result exists")
    auth = submit_p.add_argument_group(
        "authentication (docs/kubeflow.md): secrets come from the environment or a file, never "
        "from the command line, and are never printed")
    auth.add_argument("--token-env", default=TOKEN_ENV, metavar="NAME",
                      help="environment variable holding a bearer token (a user or "
                           "ServiceAccount token), sent as 'Authorization: Bearer'; the default "
                           "is read when set, another NAME must be set (default: %(default)s)")
    auth.add_argument("--in-cluster-token", action="store_true",
                      help="send the pod's projected ServiceAccount token (audience "
                           "pipelines.kubeflow.org), re-read on every request, instead of "
                           "--token-env")
    auth.add_argument("--token-path", default=None, metavar="PATH",
                      help=f"where --in-cluster-token reads the token; implies it (default: "
                           f"{SA_TOKEN_PATH})")
    auth.add_argument("--cookie-env", default=COOKIE_ENV, metavar="NAME",
                      help="environment variable holding the session cookie NAME=VALUE of a "
                           "logged-in browser: authservice_session=... (Dex + oidc-authservice) or "
                           "oauth2_proxy_kubeflow=... (oauth2-proxy, Kubeflow 1.9+); "
                           "the default is read when set, another NAME must be set "
                           "(default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    """Run `fairat pipeline ...`; errors print one line and return 2."""
    settings_values = {name: getattr(args, name) for name in CLUSTER_FLAGS.values()}
    settings_values["keep_failed_trainjob"] = args.keep_failed_trainjob or None
    settings_values["baseline"] = False if args.no_baseline else None
    if settings_values["mlflow_auth_secret"] is None:  # one secret serves both, unless told
        settings_values["mlflow_auth_secret"] = settings_values["mlflow_secret"]
    try:
        settings = cluster_settings(settings_values)
        if args.action == "compile":
            out = compile_to(args.out, args.params, settings)
            print(f"compiled the fairat pipeline -> {out}")
            return 0
        resources = {k: v for k, v in (("accelerator_type", args.accelerator_type),
                                       ("gpus_per_node", args.gpus_per_node),
                                       ("num_nodes", args.num_nodes),
                                       ("checkpoint_url", args.checkpoint_url)) if v is not None}
        params = load_params(args.params, args.overrides)
        creds = credentials_from(args.token_env, args.cookie_env, args.in_cluster_token,
                                 args.token_path)
        run = submit(args.host, params, args.experiment, args.run_name, args.namespace,
                     resources, settings, False if args.no_cache else None, creds)
    except (KubeflowError, ConfigError) as err:
        print(f"fairat pipeline {args.action}: error: {err}", file=sys.stderr)
        return 2
    print(f"submitted run {run['run_id']} (experiment {run['experiment_id']}) to {run['host']} "
          f"with {creds.source}")  # where the credentials came from, never their values
    return 0
