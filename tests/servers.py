"""Real servers on loopback for the storage and team-mode tests (a pytest plugin).

- ``s3_server``: moto's standalone S3 server (``moto_server``), a real HTTP endpoint; never moto's
  in-process patching, so boto3, s3fs/dvc-s3 and MLflow all talk to it over the network.
- ``postgres_server``: Debian's PostgreSQL in a throw-away data dir on a free loopback port.
- ``mlflow_server``: ``mlflow server`` with the PostgreSQL backend store and S3 artifacts.

Every process is started here, in its own session, and stopped here (its whole process group).
Credentials are fake, generated per session, and passed through the environment only.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

import pytest

BIN = Path(sys.executable).parent
SETUP_SCRIPT = "scripts/install-test-services.sh"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "fairat-test-key", "AWS_SECRET_ACCESS_KEY": "fairat-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Poll ``url`` until it answers (any HTTP status) or fail with the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} after {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)  # uvicorn waits for idle keep-alive clients; do not linger
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_server(cmd: list[str], health: str, log: Path, env: dict | None = None,
                 timeout: float = 30) -> Server:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = Server(proc, health, log)
    try:
        wait_http(health, proc, timeout, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_moto(log_dir: Path) -> Server:
    """A fresh moto S3 server on a free port; ``.url`` is its endpoint."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = BIN / "moto_server"
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing: install the test extras, pip install -e '.[dev]'")
    server = start_server([str(exe), "-H", "127.0.0.1", "-p", str(port)], f"{url}/moto-api/",
                          log_dir / f"moto-{port}.log", env={**os.environ, **FAKE_AWS})
    server.url = url
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server shared by the session."""
    server = start_moto(tmp_path_factory.mktemp("s3-server"))
    yield server.url
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> str:
    """Point this test at the session S3 server with fake credentials; returns a new bucket name."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    for var, value in FAKE_AWS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("FAIRAT_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    return f"fairat-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------------
# PostgreSQL + mlflow server (team mode)

def postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/*/bin holding initdb, pg_ctl and postgres."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name
                   .isdigit() else 0)
    for pg_ctl in reversed(found):
        bindir = Path(pg_ctl).parent
        if all((bindir / name).exists() for name in ("initdb", "postgres", "psql")):
            return bindir
    pytest.fail(f"PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: run "
                f"`{SETUP_SCRIPT}` (installs Debian's postgresql) before the tests", pytrace=False)


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root without `runuser`: cannot start PostgreSQL", pytrace=False)
    return [runuser, "-u", "postgres", "--", *cmd]


@dataclass
class Postgres:
    uri: str  # postgresql://user:password@127.0.0.1:port/db (libpq form)
    port: int

    @property
    def sqlalchemy_uri(self) -> str:
        """For MLflow: SQLAlchemy 2.1 maps bare ``postgresql://`` to psycopg 3, we ship psycopg2."""
        return self.uri.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on loopback with a database and a password-protected user."""
    bindir = postgres_bin()
    # the data dir must be reachable by the postgres user: pytest's tmp dirs are root-only
    base = Path(tempfile.mkdtemp(prefix="fairat-pg-"))
    data, sock, log = base / "data", base / "sock", base / "postgres.log"
    sock.mkdir()
    if os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam("postgres")
        for path in (base, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    port, password = free_port(), secrets.token_hex(12)

    def run(cmd: list[str]) -> None:
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True, text=True, cwd=base)

    try:
        run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"])
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "start"])
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr}", pytrace=False)
    try:
        psql = [str(bindir / "psql"), "-h", str(sock), "-p", str(port), "-U", "postgres",
                "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"]
        run([*psql, f"CREATE USER fairat PASSWORD '{password}'"])
        run([*psql, "CREATE DATABASE mlflow OWNER fairat"])
        yield Postgres(f"postgresql://fairat:{password}@127.0.0.1:{port}/mlflow", port)
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class MlflowServer:
    url: str
    bucket: str
    artifact_root: str  # s3://bucket/mlflow
    s3_endpoint: str


@pytest.fixture(scope="session")
def mlflow_server(postgres_server, s3_server, tmp_path_factory) -> Iterator[MlflowServer]:
    """`mlflow server` with PostgreSQL as backend store and S3 (moto) as artifact store."""
    import boto3

    bucket = f"fairat-team-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **FAKE_AWS, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    env.pop("MLFLOW_TRACKING_URI", None)
    boto3.client("s3", endpoint_url=s3_server, region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
                 aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
                 ).create_bucket(Bucket=bucket)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = f"s3://{bucket}/mlflow"
    log = tmp_path_factory.mktemp("mlflow-server") / "mlflow-server.log"
    env["MLFLOW_BACKEND_STORE_URI"] = postgres_server.sqlalchemy_uri  # password not in argv
    cmd = [str(BIN / "mlflow"), "server", "--artifacts-destination", artifacts,
           "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--uvicorn-opts", "--timeout-graceful-shutdown 1"]
    server = start_server(cmd, f"{url}/health", log, env=env, timeout=90)
    yield MlflowServer(url, bucket, artifacts, s3_server)
    server.stop()


# ---------------------------------------------------------------------------------------------
# Stand-in API servers in this process (http.server on loopback, one thread)

class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON and keeps pytest's output clean."""

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


# A stand-in Kubernetes API server for Kubeflow Trainer (TrainJob custom objects)

TRAINER_API = "/apis/trainer.kubeflow.org/v1alpha1"
TORCH_RUNTIME = {  # the torch-distributed ClusterTrainingRuntime, as the SDK reads it
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed",
                 "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {"mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
             "template": {"spec": {"replicatedJobs": [{
                 "name": "node",
                 "template": {"metadata": {"labels": {
                     "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                     "spec": {"template": {"spec": {"containers": [{
                         "name": "node", "image": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime",
                         "command": ["torchrun"]}]}}}}}]}}}}


class StandInKubeAPI:
    """Just the Kubernetes API calls the Kubeflow SDK's TrainerClient makes, over real HTTP.

    TrainJobs (``trainer.kubeflow.org/v1alpha1``, namespaced) can be created, read, listed and
    deleted; the ``torch-distributed`` ClusterTrainingRuntime and the Trainer's version ConfigMap
    can be read; pods are listed (none). ``calls`` records ``(method, path)``; ``jobs`` holds the
    stored TrainJobs by name; ``fate`` (``running`` | ``complete`` | ``failed``) is the status
    every TrainJob reports; ``on_create(body)`` runs when a TrainJob is created (a stand-in for
    what its pods would do, e.g. write rank 0's outputs). Anything else answers 404.
    """

    def __init__(self) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.calls: list[tuple[str, str]] = []
        self.jobs: dict[str, dict] = {}
        self.fate = "running"
        self.on_create = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path, namespace: str = "ml") -> Path:
        """A kubeconfig whose current context is this server (a fake token, plain HTTP)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-kube-token"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in",
                                                          "user": "tester",
                                                          "namespace": namespace}}]}))
        return path

    def add_job(self, name: str, namespace: str = "ml", labels: dict | None = None) -> dict:
        """A TrainJob that exists before the test starts (an earlier launcher created it)."""
        job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
               "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
               "spec": {"runtimeRef": {"name": "torch-distributed",
                                       "kind": "ClusterTrainingRuntime"},
                        "trainer": {"numNodes": 1}}}
        return self._store(job, namespace)

    def _store(self, body: dict, namespace: str) -> dict:
        body.setdefault("metadata", {}).update(
            namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp="2026-11-24T10:00:00Z")
        with self.lock:
            self.jobs[body["metadata"]["name"]] = body
        return body

    def _status(self, job: dict) -> dict:
        kind = {"complete": "Complete", "failed": "Failed"}.get(self.fate)
        if kind is None:
            return {**job, "status": {}}
        condition = {"type": kind, "status": "True", "reason": kind, "message": kind,
                     "lastTransitionTime": "2026-11-24T10:05:00Z"}
        return {**job, "status": {"conditions": [condition]}}

    def _handler(self):
        import re
        from urllib.parse import urlparse

        api = self
        job_path = re.compile(rf"^{TRAINER_API}/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")

        class Handler(JsonHandler):
            def _missing(self, what: str) -> None:
                self._reply({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404,
                             "message": f"{what} not found"}, 404)

            def _route(self) -> tuple[str, re.Match | None]:
                path = urlparse(self.path).path
                with api.lock:
                    api.calls.append((self.command, path))
                return path, job_path.match(path)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path, job = self._route()
                if path == "/api/v1/namespaces/kubeflow-system/configmaps/kubeflow-trainer-public":
                    self._reply({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "kubeflow-trainer-public"},
                                 "data": {"kubeflow_trainer_version": "2.1.0"}})
                elif path == f"{TRAINER_API}/clustertrainingruntimes/torch-distributed":
                    self._reply(TORCH_RUNTIME)
                elif re.match(r"^/api/v1/namespaces/[^/]+/pods$", path):
                    self._reply({"apiVersion": "v1", "kind": "PodList", "items": [],
                                 "metadata": {}})
                elif job and job.group(2):
                    stored = api.jobs.get(job.group(2))
                    if stored is None:
                        self._missing(f'trainjobs.trainer.kubeflow.org "{job.group(2)}"')
                    else:
                        self._reply(api._status(stored))
                elif job:
                    self._reply({"apiVersion": "trainer.kubeflow.org/v1alpha1",
                                 "kind": "TrainJobList", "metadata": {},
                                 "items": [api._status(j) for j in api.jobs.values()]})
                else:
                    self._missing(path)

            def do_POST(self) -> None:  # noqa: N802
                path, job = self._route()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not job or job.group(2):
                    return self._missing(path)
                if body["metadata"]["name"] in api.jobs:
                    return self._reply({"kind": "Status", "apiVersion": "v1", "code": 409,
                                        "status": "Failure", "reason": "AlreadyExists",
                                        "message": "already exists"}, 409)
                stored = api._store(body, job.group(1))
                if api.on_create is not None:
                    api.on_create(stored)
                self._reply(stored, 201)

            def do_DELETE(self) -> None:  # noqa: N802
                path, job = self._route()
                if not (job and job.group(2)) or job.group(2) not in api.jobs:
                    return self._missing(path)
                with api.lock:
                    del api.jobs[job.group(2)]
                self._reply({"kind": "Status", "apiVersion": "v1", "status": "Success"})

        return Handler


@pytest.fixture
def kube_api(tmp_path, monkeypatch) -> Iterator[StandInKubeAPI]:
    """A stand-in Kubernetes API on loopback, made the current kube context ($KUBECONFIG)."""
    api = StandInKubeAPI()
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config
    yield api
    api.stop()
