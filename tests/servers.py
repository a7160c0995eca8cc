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
