"""Kubeflow: `fairat pipeline submit`, a real SDK round trip.

The submit tests talk to a stand-in KFP API server on 127.0.0.1 that answers the v2beta1 REST calls
the kfp client makes (healthz, experiment lookup and creation, run creation) and records them with
their headers, so the whole client stack (kfp.Client -> kfp_server_api -> urllib3 -> HTTP) really
runs, credentials included; on demand it refuses a route with 401, 403 or a login redirect.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from fairat.cluster.params import knobs
from kfp_fixtures import PARAMS, REPO
from servers import JsonHandler


# ---------------------------------------------------------------- submission: a real SDK round trip

class _StandInKFP(JsonHandler):
    """Answers the KFP v2beta1 calls `create_run_from_pipeline_package` makes; records them.

    ``headers`` holds each request's (method, path, lower-cased headers); ``refuse`` maps a path
    to the status it answers instead (401 like an auth proxy without credentials, 403 like a
    profile the identity may not use, 302 like oauth2-proxy sending a browser to its login page).
    """

    calls: list[tuple[str, str, dict, object]] = []
    headers_seen: list[tuple[str, str, dict]] = []
    refuse: dict[str, int] = {}
    multi_user = False  # what healthz says; True like a Kubeflow platform install
    LOGIN = "https://dex.example.com/dex/auth?client_id=kubeflow-oidc-authservice&state=xyz"

    def _record(self, body: object = None) -> tuple[str, dict]:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.calls.append((self.command, url.path, query, body))
        self.headers_seen.append((self.command, url.path,
                                  {k.lower(): v for k, v in self.headers.items()}))
        return url.path, query

    def _refused(self, path: str) -> bool:
        status = self.refuse.get(path)
        if status == 302:
            self.send_response(302)
            self.send_header("Location", self.LOGIN)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif status == 401:
            self._reply({"error": "Unauthenticated: no user identity", "code": 16}, 401)
        elif status == 403:
            self._reply({"error": "user is not authorized in namespace", "code": 7}, 403)
        return status is not None

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path, _ = self._record()
        if self._refused(path):
            return
        if path == "/apis/v2beta1/healthz":
            self._reply({"multi_user": self.multi_user, "commit_sha": "stand-in"})
        elif path == "/apis/v2beta1/experiments":
            self._reply({"experiments": [], "total_size": 0})  # none yet: the client creates it
        else:
            self._reply({"error": f"unexpected GET {path}"}, 404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path, _ = self._record(body)
        if self._refused(path):
            return
        if path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-1", "experiment_id": body["experiment_id"],
                         "display_name": body["display_name"], "state": "PENDING"})
        else:
            self._reply({"error": f"unexpected POST {path}"}, 404)


@pytest.fixture
def stand_in_kfp(monkeypatch):
    for var in ("KF_PIPELINES_TOKEN", "KF_PIPELINES_COOKIE", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)  # none of the machine's credentials
    _StandInKFP.calls = []
    _StandInKFP.headers_seen = []
    _StandInKFP.refuse = {}
    _StandInKFP.multi_user = False
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)  # none of the machine's proxies
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _StandInKFP.calls
    server.shutdown()
    server.server_close()


def test_submit_sends_the_pipeline_and_overridden_parameters(stand_in_kfp, tmp_path, monkeypatch,
                                                             capsys):
    from fairat.fronts.cli import main

    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp context from the machine
    code = main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml"),
                 "--experiment", "fairness", "--run-name", "nightly",
                 "-S", "train.epochs=3", "-S", "train.fairat.augment=[cutout]",
                 "--gpus-per-node", "4"])
    assert code == 0, capsys.readouterr().err
    assert "submitted run run-1" in capsys.readouterr().out

    routes = [(method, path) for method, path, _, _ in calls]
    assert ("POST", "/apis/v2beta1/experiments") in routes
    experiment = next(body for method, path, _, body in calls
                      if (method, path) == ("POST", "/apis/v2beta1/experiments"))
    assert experiment["display_name"] == "fairness"
    (run,) = [body for method, path, _, body in calls if (method, path) == ("POST",
                                                                         "/apis/v2beta1/runs")]
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "fairat"
    assert "exec-train" in spec["deploymentSpec"]["executors"]
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-register"]
    assert "fairat-mlflow" in {s["secretName"] for s in secrets["secretAsEnv"]}
    sent = run["runtime_config"]["parameters"]
    assert sent["train__epochs"] == 3 and sent["train__fairat__augment"] == '["cutout"]'
    assert sent["gpus_per_node"] == "4" and sent["train__attack__eps"] == PARAMS.train.attack.eps
    assert set(sent) == {k.name for k in knobs(PARAMS)} | {"gpus_per_node"}
    # the run's defaults are the submitted params too, so the UI shows what ran
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["train__epochs"]["defaultValue"] == 3


def test_submit_reports_an_endpoint_error_with_status_and_body(stand_in_kfp, tmp_path,
                                                               monkeypatch, capsys):
    from fairat.fronts.cli import main

    host, calls = stand_in_kfp
    _StandInKFP.refuse = {"/apis/v2beta1/runs": 403}
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["pipeline", "submit", "--host", host, "--params",
                 str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"Kubeflow Pipelines at {host} answered 403" in err and "not authorized" in err
    assert ("POST", "/apis/v2beta1/runs") in [(m, p) for m, p, _, _ in calls]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_to_an_unreachable_host_names_it_and_exits_2(capsys):
    from fairat.fronts.cli import main

    host = f"http://127.0.0.1:{_free_port()}"
    assert main(["pipeline", "submit", "--host", host, "--params",
                 str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach Kubeflow Pipelines at {host}" in err and "Traceback" not in err


def test_submit_refuses_multi_node_without_a_shared_volume_before_contacting_the_host(capsys):
    from fairat.fronts.cli import main

    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--num-nodes", "2",
                 "--params", str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Kubeflow Trainer" in err and "--shared-volume-claim" in err


def test_submit_two_nodes_with_a_shared_volume(stand_in_kfp, tmp_path, monkeypatch, capsys):
    from fairat.fronts.cli import main

    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml"),
                 "--num-nodes", "2", "--gpus-per-node", "8",
                 "--shared-volume-claim", "fairat-work"]) == 0, capsys.readouterr().err
    (run,) = [body for method, path, _, body in calls if (method, path) == ("POST",
                                                                         "/apis/v2beta1/runs")]
    sent = run["runtime_config"]["parameters"]
    assert sent["num_nodes"] == 2 and sent["gpus_per_node"] == "8"  # text: see test_kfp_driver
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    assert executors["exec-train"]["pvcMount"][0]["constant"] == "fairat-work"


# ---------------------------------------------------------------- submission: authentication

SECRET_TOKEN = "fairat-test-token-7f3c9e1d5b"  # fake; must never leave the request headers
SECRET_COOKIE = "authservice_session=fairat-test-session-4a8b2c"


def _submit(host, *extra):
    from fairat.fronts.cli import main

    return main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml"),
                 *extra])


def _assert_never_leaked(secret, capsys, caplog, tmp_path, calls=()):
    out, err = capsys.readouterr()
    assert secret not in out and secret not in err and secret not in caplog.text
    for _, _, _, body in calls:  # the pipeline package and the run arguments sent
        assert secret not in json.dumps(body)
    for path in tmp_path.rglob("*"):  # ~/.config/kfp/context.json and friends
        assert not path.is_file() or secret not in path.read_text(errors="replace"), path
    return out, err


def test_submit_sends_the_bearer_token_from_the_environment(stand_in_kfp, tmp_path, monkeypatch,
                                                            capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    caplog.set_level(logging.DEBUG)
    assert _submit(host) == 0, capsys.readouterr().err
    seen = _StandInKFP.headers_seen
    assert {path for _, path, _ in seen} >= {"/apis/v2beta1/healthz", "/apis/v2beta1/runs"}
    assert all(h.get("authorization") == f"Bearer {SECRET_TOKEN}" for _, _, h in seen), seen
    assert all("cookie" not in h for _, _, h in seen)
    out, _ = _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path, calls)
    assert "with the bearer token from $KF_PIPELINES_TOKEN" in out


def test_submit_reads_the_token_from_another_variable_and_refuses_an_unset_one(
        stand_in_kfp, tmp_path, monkeypatch, capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TEAM_KFP_TOKEN", SECRET_TOKEN)
    assert _submit(host, "--token-env", "TEAM_KFP_TOKEN") == 0, capsys.readouterr().err
    assert all(h.get("authorization") == f"Bearer {SECRET_TOKEN}"
               for _, _, h in _StandInKFP.headers_seen)
    _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path, calls)
    assert _submit(host, "--token-env", "NO_SUCH_KFP_TOKEN") == 2
    assert "NO_SUCH_KFP_TOKEN is not set" in capsys.readouterr().err


def test_a_token_on_the_command_line_is_refused_without_echoing_it(stand_in_kfp, capsys):
    host, calls = stand_in_kfp
    assert _submit(host, "--token-env", "eyJhbGciOi.JSUzI1NiJ9-" + SECRET_TOKEN) == 2
    err = capsys.readouterr().err
    assert "NAME of an environment variable" in err and SECRET_TOKEN not in err
    assert _submit(host, "--token-env", "abc123secret") == 2  # could be a name: still not shown
    err = capsys.readouterr().err
    assert "not set" in err and "abc123secret" not in err
    assert calls == []  # nothing was sent


def test_submit_with_the_in_cluster_service_account_token(stand_in_kfp, tmp_path, monkeypatch,
                                                          capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "not-this-one")  # the in-cluster token replaces it
    token_file = tmp_path / "sa" / "token"
    token_file.parent.mkdir()
    token_file.write_text(SECRET_TOKEN + "\n")
    assert _submit(host, "--in-cluster-token", "--token-path", str(token_file)) == 0, \
        capsys.readouterr().err
    assert all(h.get("authorization") == f"Bearer {SECRET_TOKEN}"
               for _, _, h in _StandInKFP.headers_seen)
    out, _ = _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path / "home-less", calls)
    assert f"the ServiceAccount token at {token_file}" in out
    assert _submit(host, "--in-cluster-token", "--token-path", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert "cannot read the ServiceAccount token" in err and len(err.splitlines()) == 1


def test_submit_sends_the_session_cookie(stand_in_kfp, tmp_path, monkeypatch, capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_COOKIE", SECRET_COOKIE)
    assert _submit(host) == 0, capsys.readouterr().err
    seen = _StandInKFP.headers_seen
    assert seen and all(h.get("cookie") == SECRET_COOKIE for _, _, h in seen), seen
    assert all("authorization" not in h for _, _, h in seen)
    out, _ = _assert_never_leaked(SECRET_COOKIE.split("=", 1)[1], capsys, caplog, tmp_path, calls)
    assert "the authservice_session cookie from $KF_PIPELINES_COOKIE" in out
    monkeypatch.setenv("KF_PIPELINES_COOKIE", "just-a-value")
    assert _submit(host) == 2
    err = capsys.readouterr().err
    assert "expected NAME=VALUE" in err and "just-a-value" not in err


@pytest.mark.parametrize("route,status,reason", [
    ("/apis/v2beta1/healthz", 401, "401 Unauthorized"),
    ("/apis/v2beta1/healthz", 403, "403 Forbidden"),
    ("/apis/v2beta1/healthz", 302, "302 Found"),
    ("/apis/v2beta1/experiments", 401, "401 Unauthorized"),
    ("/apis/v2beta1/runs", 403, "403 Forbidden")])
@pytest.mark.parametrize("with_token", [False, True])
def test_401_and_403_give_one_line_naming_what_to_provide(stand_in_kfp, tmp_path, monkeypatch,
                                                          capsys, caplog, route, status, reason,
                                                          with_token):
    import time

    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    if with_token:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    _StandInKFP.refuse = {route: status}
    started = time.monotonic()
    assert _submit(host, "--namespace", "team-a") == 2
    assert time.monotonic() - started < 20  # no retries of the refused health check
    _, err = _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path, calls)
    (line,) = err.splitlines()  # one line, no traceback
    assert line.startswith(f"fairat pipeline submit: error: Kubeflow Pipelines at {host} "
                           f"answered {reason}")
    assert "KF_PIPELINES_TOKEN" in line and "--cookie-env" in line
    assert "authservice_session" in line and "docs/kubeflow.md" in line
    if with_token:
        assert "the bearer token from $KF_PIPELINES_TOKEN" in line
    else:
        assert "no credentials were sent" in line
    if status == 302:
        assert "https://dex.example.com/dex/auth" in line and "state=" not in line
    if status == 403 and with_token:
        assert "namespace team-a" in line
    if route != "/apis/v2beta1/healthz":
        assert ("GET", "/apis/v2beta1/healthz") in [(m, p) for m, p, _, _ in calls]


def test_compiled_package_holds_no_credentials(tmp_path, monkeypatch, capsys):
    from fairat.fronts.cli import main

    monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("KF_PIPELINES_COOKIE", SECRET_COOKIE)
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--params",
                 str(REPO / "params.yaml")]) == 0
    text = out.read_text()
    streams = "".join(capsys.readouterr())
    for secret in (SECRET_TOKEN, SECRET_COOKIE):
        assert secret not in text and secret not in streams


def test_help_names_every_default():
    import kfp.client

    from fairat.fronts.cli import build_parser
    from pipelines.cli import CLUSTER_DEFAULTS, SA_TOKEN_PATH
    from pipelines.fairat_pipeline import ClusterSettings

    defaults = ClusterSettings()
    # the help's spelled-out defaults are the pipeline's (None for the auth secret: follows
    # --mlflow-secret, whose default is the same name)
    assert CLUSTER_DEFAULTS == {**{k: getattr(defaults, k) for k in CLUSTER_DEFAULTS},
                                "mlflow_auth_secret": None}
    assert defaults.mlflow_auth_secret == defaults.mlflow_secret
    assert SA_TOKEN_PATH == kfp.client.KF_PIPELINES_SA_TOKEN_PATH
    parser = build_parser()
    pipeline = parser._subparsers._group_actions[0].choices["pipeline"]
    actions = pipeline._subparsers._group_actions[0].choices
    for action in ("compile", "submit"):
        text = " ".join(actions[action].format_help().split())
        for name in (defaults.image, defaults.s3_secret, defaults.mlflow_secret,
                     defaults.endpoints_config_map, "train runs in its own pod",
                     "the pipeline pod's", "default: params.yaml"):
            assert name in text, (action, name)
    text = " ".join(actions["submit"].format_help().split())
    for name in ("default: KF_PIPELINES_TOKEN", "default: KF_PIPELINES_COOKIE", SA_TOKEN_PATH,
                 "default: fairat", "default: none, single-user", "nvidia.com/gpu"):
        assert name in text, name
    # the GPU pod settings (compile and submit) and the connection options (submit)
    for action in ("compile", "submit"):
        text = " ".join(actions[action].format_help().split())
        for name in ("--gpu-toleration KEY[=VALUE][:EFFECT]", "--gpu-node-selector KEY=VALUE",
                     "--train-cpu-request CPU", "--train-memory-request MEMORY",
                     "--shm-size SIZE", f"(default: {defaults.shm_size})",
                     "--train-retries N", f"(default: {defaults.train_retries})",
                     "--image-pull-secret NAME", "{commit} in it becomes the checkout's commit"):
            assert name in text, (action, name)
    text = " ".join(actions["submit"].format_help().split())
    for name in ("--ca-cert PEM_FILE", "--insecure-skip-tls-verify", "HTTPS_PROXY", "NO_PROXY",
                 "--gpus-per-node"):
        assert name in text, name


def test_submit_refuses_a_bad_checkpoint_url_before_contacting_the_host(capsys):
    from fairat.fronts.cli import main

    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--params",
                 str(REPO / "params.yaml"), "--checkpoint-url", "minio/bucket"]) == 2
    assert "--checkpoint-url: not an S3 prefix URL" in capsys.readouterr().err


def test_submit_refuses_a_negative_gpu_count_before_contacting_the_host(capsys):
    from fairat.fronts.cli import main

    code = main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--params",
                 str(REPO / "params.yaml"), "--gpus-per-node", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--gpus-per-node: gpus_per_node: expected a non-negative" in err
    assert "cannot reach" not in err and "Traceback" not in err



# ---------------------------------------------------------------- submission: namespace, proxy, TLS

def test_a_multi_user_install_without_a_namespace_gets_a_hint(stand_in_kfp, tmp_path,
                                                              monkeypatch, capsys):
    host, calls = stand_in_kfp
    _StandInKFP.multi_user = True
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _submit(host) == 2
    err = capsys.readouterr().err
    assert "is a multi-user install" in err and "pass --namespace" in err
    assert "kubectl get profiles" in err and "Traceback" not in err
    assert ("POST", "/apis/v2beta1/runs") not in [(m, p) for m, p, _, _ in calls]
    assert _submit(host, "--namespace", "team-a") == 0, capsys.readouterr().err
    (run,) = [b for m, p, _, b in calls if (m, p) == ("POST", "/apis/v2beta1/runs")]
    assert run["experiment_id"] == "exp-1"


def test_submit_goes_through_the_proxy_from_the_environment(stand_in_kfp, tmp_path, monkeypatch,
                                                            capsys):
    """The stand-in also acts as the proxy: a proxied request carries the absolute URL of a host
    that only the proxy can reach (``.invalid`` never resolves)."""
    proxy, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HTTP_PROXY", proxy)
    host = "http://kfp.invalid:8888"
    assert _submit(host) == 0, capsys.readouterr().err
    assert f"through the proxy {proxy} (from $HTTP_PROXY)" in capsys.readouterr().out
    assert ("POST", "/apis/v2beta1/runs") in [(m, p) for m, p, _, _ in calls]
    assert all(h["host"] == "kfp.invalid:8888" for _, _, h in _StandInKFP.headers_seen)
    # NO_PROXY exempts the host: it is then reached directly, and .invalid cannot be
    monkeypatch.setenv("NO_PROXY", "localhost,.invalid")
    assert _submit(host) == 2
    assert "cannot reach Kubeflow Pipelines at http://kfp.invalid:8888" in capsys.readouterr().err


def test_proxy_settings_are_read_and_checked_like_curl():
    from pipelines.connection import KubeflowError, transport_from

    env = {"HTTPS_PROXY": "http://proxy.corp:3128", "HTTP_PROXY": "http://other:80",
           "NO_PROXY": "localhost,.svc.cluster.local"}
    assert transport_from("https://kf.example.com", environ=env).proxy == "http://proxy.corp:3128"
    assert transport_from("http://kf.example.com", environ=env).proxy == "http://other:80"
    assert transport_from("https://ml-pipeline.kubeflow.svc.cluster.local",
                          environ=env).proxy is None
    assert transport_from("https://kf.example.com", environ={}).proxy is None
    with pytest.raises(KubeflowError, match=r"\$HTTPS_PROXY names a proxy with credentials") as err:
        transport_from("https://kf.example.com", environ={"HTTPS_PROXY": "http://u:s3cret@p:1"})
    assert "s3cret" not in str(err.value)


def _self_signed(tmp_path):
    """A CA-less self-signed certificate for 127.0.0.1 (the private CA of a test cluster)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fairat test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def tls_stand_in(stand_in_kfp, tmp_path):
    """The stand-in behind TLS with a private CA's certificate."""
    import ssl

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInKFP)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}", cert, stand_in_kfp[1]
    server.shutdown()
    server.server_close()


def test_a_private_ca_is_trusted_with_ca_cert_and_refused_without(tls_stand_in, tmp_path,
                                                                   monkeypatch, capsys):
    host, cert, calls = tls_stand_in
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _submit(host) == 2
    err = capsys.readouterr().err
    assert "TLS to Kubeflow Pipelines" in err and "--ca-cert" in err and "Traceback" not in err
    assert _submit(host, "--ca-cert", str(cert)) == 0, capsys.readouterr().err
    assert ("POST", "/apis/v2beta1/runs") in [(m, p) for m, p, _, _ in calls]


def test_insecure_skip_tls_verify_is_explicit_and_warned(tls_stand_in, tmp_path, monkeypatch,
                                                         capsys):
    host, cert, calls = tls_stand_in
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _submit(host, "--insecure-skip-tls-verify") == 0
    out, err = capsys.readouterr()
    assert "TLS verification of" in err and "is off" in err and "submitted run run-1" in out
    assert _submit(host, "--insecure-skip-tls-verify", "--ca-cert", str(cert)) == 2
    assert "contradict each other" in capsys.readouterr().err
    (tmp_path / "not.pem").write_text("hello")
    assert _submit(host, "--ca-cert", str(tmp_path / "not.pem")) == 2
    assert "holds no PEM certificate" in capsys.readouterr().err


def test_submit_merges_params_overlays_in_order_and_names_the_key_secrets(stand_in_kfp, tmp_path,
                                                                         monkeypatch, capsys):
    """--params repeated merges as the main CLI does (later files win, -S last); the signing
    key's Secret reaches the submitted platform spec by name."""
    from fairat.fronts.cli import main

    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    first = tmp_path / "cpu.yaml"
    first.write_text("train:\n  epochs: 7\n  attack:\n    steps: 3\nevaluate:\n  pgd_steps: 9\n")
    second = tmp_path / "short.yaml"
    second.write_text("train:\n  epochs: 5\n")
    code = main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml"),
                 "--params", str(first), "--params", str(second), "-S", "evaluate.pgd_steps=11",
                 "--signing-key-secret", "fairat-signing"])
    assert code == 0, capsys.readouterr().err
    (run,) = [body for method, path, _, body in calls if (method, path) == ("POST",
                                                                         "/apis/v2beta1/runs")]
    sent = run["runtime_config"]["parameters"]
    assert sent["train__epochs"] == 5  # the last file wins
    assert sent["train__attack__steps"] == 3  # sections merge key by key
    assert sent["train__attack__eps"] == PARAMS.train.attack.eps  # the base's, untouched
    assert sent["evaluate__pgd_steps"] == 11  # -S after every file
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    assert {m["envVar"] for s in executors["exec-gate"]["secretAsEnv"]
            for m in s["keyToEnv"]} == {"FAIRAT_SIGNING_KEY"}


def test_compile_merges_params_overlays_into_the_defaults(tmp_path, capsys):
    from fairat.fronts.cli import main

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  epochs: 4\n")
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--params",
                 str(REPO / "params.yaml"), "--params", str(overlay)]) == 0
    defaults = next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert defaults["train__epochs"]["defaultValue"] == 4
    assert defaults["train__attack__eps"]["defaultValue"] == PARAMS.train.attack.eps
    # an overlay alone lands on the built-in defaults (which equal params.yaml)
    assert main(["pipeline", "compile", "--out", str(out), "--params", str(overlay)]) == 0
    alone = next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert alone == defaults
    # a missing overlay is one clear line, nothing written
    out.unlink()
    assert main(["pipeline", "compile", "--out", str(out), "--params",
                 str(REPO / "params.yaml"), "--params", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "params file not found" in err and "nope.yaml" in err and not out.exists()
