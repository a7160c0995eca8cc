"""fairat.edge.storage against a real S3 endpoint on loopback (moto's standalone server, over HTTP).

Also: DVC push/pull through an S3 remote, MLflow artifacts on S3, and what happens when the server
is down or dies mid-download (a clear error; nothing half-written; existing files untouched).
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fairat.edge import storage
from fairat.edge.storage import StorageError, parse_s3_url, safe_relative_key
from servers import free_port, start_moto


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# pure helpers

@pytest.mark.parametrize("url, bucket, key", [
    ("s3://b/prefix/x", "b", "prefix/x"), ("s3://b", "b", ""), ("s3://b/", "b", ""),
    ("s3://b/p/", "b", "p"),
])
def test_parse_s3_url(url, bucket, key):
    assert parse_s3_url(url) == storage.S3Url(bucket, key)


@pytest.mark.parametrize("url", ["http://b/x", "b/x", "s3://", "s3:///key", "/tmp/x"])
def test_parse_s3_url_refuses(url):
    with pytest.raises(StorageError):
        parse_s3_url(url)


@pytest.mark.parametrize("key", ["p/../x", "p/a/../../x", "p//etc/passwd", "p/./x", "p/a\\..\\x",
                                 "p/..", "p/C:/x"])
def test_unsafe_keys_refused(key):
    with pytest.raises(StorageError, match="unsafe") as info:
        safe_relative_key("p/", key)
    assert info.value.kind == "unsafe_key"


def test_safe_keys_and_folder_markers():
    assert safe_relative_key("p/", "p/a/b.txt").parts == ("a", "b.txt")
    assert safe_relative_key("p/", "p/a/") is None
    assert safe_relative_key("", "x..y/z") .parts == ("x..y", "z")


def test_endpoint_from_environment_only(monkeypatch):
    for var in storage.ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    assert storage.endpoint_url() is None
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://mlflow-s3:9000")
    assert storage.endpoint_url() == "http://mlflow-s3:9000"
    monkeypatch.setenv("FAIRAT_S3_ENDPOINT_URL", "http://fairat-s3:9000")
    assert storage.endpoint_url() == "http://fairat-s3:9000"
    assert storage.s3_client().meta.endpoint_url == "http://fairat-s3:9000"


@pytest.mark.parametrize("code, expected, kind", [
    ("AccessDenied", "access denied", "denied"), ("InvalidAccessKeyId", "access denied", "denied"),
    ("NoSuchBucket", "bucket does not exist", "no_bucket"),
    ("NoSuchKey", "no such object", "no_key"),
    ("SlowDown", "S3 request failed", "failed"),
])
def test_client_errors_are_named(code, expected, kind, monkeypatch):
    from botocore.exceptions import ClientError

    monkeypatch.setenv("FAIRAT_S3_ENDPOINT_URL", "http://s3.example:9000")
    err = storage._translate(ClientError({"Error": {"Code": code, "Message": "m"}}, "GetObject"),
                             "bkt", "k/x")
    assert expected in str(err) and "http://s3.example:9000" in str(err) and "'bkt'" in str(err)
    assert err.kind == kind


# ---------------------------------------------------------------------------------------------
# against the moto server

def test_file_and_folder_round_trip(s3_env, tmp_path):
    bucket = s3_env
    storage.ensure_bucket(bucket)
    storage.ensure_bucket(bucket)  # idempotent
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 400)

    storage.upload_file(src / "a.txt", f"s3://{bucket}/one/a.txt")
    storage.download_file(f"s3://{bucket}/one/a.txt", tmp_path / "got" / "a.txt")
    assert (tmp_path / "got" / "a.txt").read_text() == "alpha"

    keys = storage.push(src, f"s3://{bucket}/run-1/files")
    assert sorted(keys) == ["run-1/files/a.txt", "run-1/files/sub/b.bin"]
    written = storage.pull(f"s3://{bucket}/run-1/files", tmp_path / "dst")
    assert len(written) == 2
    assert _tree(tmp_path / "dst") == _tree(src)


def test_push_creates_missing_bucket_and_pull_of_empty_prefix_fails(s3_env, tmp_path):
    (tmp_path / "x.txt").write_text("x")
    storage.push(tmp_path, f"s3://{s3_env}/p")
    assert storage.s3_client().get_object(Bucket=s3_env, Key="p/x.txt")["Body"].read() == b"x"
    with pytest.raises(StorageError, match="nothing under"):
        storage.pull(f"s3://{s3_env}/nothing-here", tmp_path / "out")


def test_folder_mirror_pushes_what_changed_and_restores_into_an_empty_folder(s3_env, tmp_path):
    """The checkpoints' copy on S3 (fairat.steps.train): nothing there yet is a fresh start."""
    src, url = tmp_path / "checkpoints", f"s3://{s3_env}/ckpt/fairat-0123456789abcdef"
    with pytest.raises(StorageError, match="bucket does not exist.*create it first"):
        storage.FolderMirror(src, url).check()
    storage.ensure_bucket(s3_env)
    mirror = storage.FolderMirror(src, url)
    mirror.check()
    assert mirror.restore() == [] and not src.exists()
    src.mkdir()
    (src / "last.pt").write_bytes(b"epoch 1")
    (src / "best.pt").write_bytes(b"epoch 1")
    (src / ".last.pt.x1y2.tmp").write_bytes(b"half")  # an atomic write in flight: not pushed
    assert mirror.push() == ["ckpt/fairat-0123456789abcdef/best.pt",
                             "ckpt/fairat-0123456789abcdef/last.pt"]
    (src / "last.pt").write_bytes(b"epoch 2!")
    assert mirror.push() == ["ckpt/fairat-0123456789abcdef/last.pt"]  # best.pt is unchanged
    fresh = storage.FolderMirror(tmp_path / "retried-pod", url)
    assert sorted(p.name for p in fresh.restore()) == ["best.pt", "last.pt"]
    assert (tmp_path / "retried-pod" / "last.pt").read_bytes() == b"epoch 2!"
    assert fresh.push() == []  # what was just fetched is not sent back
    with pytest.raises(StorageError, match="expected s3://bucket/prefix"):
        storage.parse_prefix_url("s3://Bad_Bucket/x")


def test_missing_key_and_bucket_leave_local_file_untouched(s3_env, tmp_path):
    storage.ensure_bucket(s3_env)
    local = tmp_path / "model.pt"
    local.write_bytes(b"old contents")
    with pytest.raises(StorageError, match="no such object.*'missing.pt'"):
        storage.download_file(f"s3://{s3_env}/missing.pt", local)
    with pytest.raises(StorageError, match="bucket does not exist.*'no-such-bucket-x'"):
        storage.download_file("s3://no-such-bucket-x/model.pt", local)
    assert local.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind


def test_unsafe_keys_refused_before_anything_is_written(s3_env, tmp_path):
    client = storage.s3_client()
    storage.ensure_bucket(s3_env, client)
    for key in ["pre/ok.txt", "pre/../escaped.txt"]:
        client.put_object(Bucket=s3_env, Key=key, Body=b"data")
    target = tmp_path / "deep" / "target"
    with pytest.raises(StorageError, match=r"unsafe object key 'pre/\.\./escaped.txt'"):
        storage.download_dir(f"s3://{s3_env}/pre", target)
    assert not (tmp_path / "deep" / "escaped.txt").exists()
    assert not target.exists() or _tree(target) == {}


def test_server_down_is_a_clear_fast_error(monkeypatch, tmp_path):
    port = free_port()  # nothing listens here
    monkeypatch.setenv("FAIRAT_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    local = tmp_path / "keep.txt"
    local.write_text("keep")
    start = time.monotonic()
    with pytest.raises(StorageError,
                       match=rf"cannot reach S3 \(endpoint http://127.0.0.1:{port}") as info:
        storage.download_file("s3://bkt/keep.txt", local)
    assert info.value.kind == "unreachable"
    with pytest.raises(StorageError, match="cannot reach S3.*bucket 'bkt'"):
        storage.push(tmp_path, "s3://bkt/p")
    assert time.monotonic() - start < 20
    assert local.read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_server_stopped_after_upload(tmp_path, monkeypatch):
    """The data is safe in the bucket, the server goes away: the pull fails, nothing clobbered."""
    server = start_moto(tmp_path)
    try:
        monkeypatch.setenv("FAIRAT_S3_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        src = tmp_path / "src"
        src.mkdir()
        (src / "m.txt").write_text("new")
        storage.push(src, "s3://bkt-stop/p")
    finally:
        server.stop()
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "m.txt").write_text("old")
    with pytest.raises(StorageError, match=f"cannot reach S3 \\(endpoint {server.url}"):
        storage.pull("s3://bkt-stop/p", dst)
    assert _tree(dst) == {"m.txt": b"old"}


class _TruncatingS3(http.server.BaseHTTPRequestHandler):
    """An 'S3' that announces 4096 bytes and hangs up after 1000: a download dying mid-way."""

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "4096")
        self.send_header("Content-Type", "binary/octet-stream")
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Last-Modified", "Tue, 24 Nov 2026 10:00:00 GMT")
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self._headers()

    def do_GET(self):  # noqa: N802
        self._headers()
        self.wfile.write(b"n" * 1000)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_download_dying_mid_way_leaves_existing_file_untouched(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingS3)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("FAIRAT_S3_ENDPOINT_URL", f"http://127.0.0.1:{httpd.server_port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        local = tmp_path / "model.pt"
        local.write_bytes(b"old model")
        where = f"127.0.0.1:{httpd.server_port}"
        with pytest.raises(StorageError, match=f"interrupted .*{where}.*'model.pt'") as info:
            storage.download_file("s3://bkt/model.pt", local)
        assert info.value.kind == "interrupted"
        assert local.read_bytes() == b"old model"
        assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_storage_cli_push_pull(s3_env, tmp_path, capsys):
    from fairat.fronts.cli import main

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("cli")
    assert main(["storage", "push", str(tmp_path / "src"), f"s3://{s3_env}/cli"]) == 0
    assert main(["storage", "pull", f"s3://{s3_env}/cli", str(tmp_path / "dst")]) == 0
    assert (tmp_path / "dst" / "f.txt").read_text() == "cli"
    assert main(["storage", "pull", f"s3://{s3_env}/none", str(tmp_path / "x")]) == 1
    assert "nothing under" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# DVC remote on S3

def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    (repo / "data").mkdir()
    (repo / "data" / "train.bin").write_bytes(bytes(range(256)) * 300)
    (repo / "data" / "labels.txt").write_text("0 1 2\n")
    _dvc(repo, "add", "-q", "data")
    return repo


def test_dvc_push_then_pull_restores_data(s3_env, dvc_repo):
    import argparse

    from fairat.fronts import storage_cli

    storage.ensure_bucket(s3_env)
    parser = argparse.ArgumentParser(prog="fairat")
    storage_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["storage", "dvc-remote", f"s3://{s3_env}/dvcstore",
                              "--repo", str(dvc_repo)])
    assert storage_cli.run(args) == 0  # = storage.configure_dvc_remote(repo, url)
    committed = (dvc_repo / ".dvc" / "config").read_text()
    local = (dvc_repo / ".dvc" / "config.local").read_text()
    assert f"s3://{s3_env}/dvcstore" in committed and "127.0.0.1" not in committed
    assert "endpointurl" in local and "fairat-test" not in committed + local  # no credentials
    before = _tree(dvc_repo / "data")

    _dvc(dvc_repo, "push")
    stored = storage.s3_client().list_objects_v2(Bucket=s3_env, Prefix="dvcstore/")
    assert stored["KeyCount"] >= 3  # two files and the .dir listing
    for path in (dvc_repo / "data", dvc_repo / ".dvc" / "cache"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    _dvc(dvc_repo, "pull")
    assert _tree(dvc_repo / "data") == before


def test_dvc_push_with_server_down_fails_clearly_and_keeps_data(dvc_repo, monkeypatch):
    port = free_port()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    # one attempt: botocore's retries back off ~9 s against a closed port, and what is tested
    # here is the message and the data left intact, not the retry policy
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage.configure_dvc_remote(dvc_repo, "s3://bkt/dvcstore", endpoint=f"http://127.0.0.1:{port}")
    before = _tree(dvc_repo / "data")
    start = time.monotonic()
    proc = _dvc(dvc_repo, "push", check=False)
    assert proc.returncode != 0
    assert f"Could not connect to the endpoint URL: \"http://127.0.0.1:{port}" in proc.stderr
    assert time.monotonic() - start < 60
    assert _tree(dvc_repo / "data") == before
    status = _dvc(dvc_repo, "status")  # workspace and cache still agree
    assert "changed" not in status.stdout and "deleted" not in status.stdout


# ---------------------------------------------------------------------------------------------
# MLflow artifacts on S3

def test_mlflow_artifacts_go_to_s3(s3_env, tmp_path, monkeypatch, mlflow_sqlite):
    from mlflow import MlflowClient

    storage.ensure_bucket(s3_env)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking_uri=mlflow_sqlite(tmp_path / "mlflow.db"))  # no global state
    exp = client.create_experiment("s3-artifacts", artifact_location=f"s3://{s3_env}/mlflow")
    report = tmp_path / "eval.json"
    report.write_text('{"robust": 0.5}')
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(report), artifact_path="metrics")
    client.set_terminated(run.info.run_id)

    key = f"mlflow/{run.info.run_id}/artifacts/metrics/eval.json"
    body = storage.s3_client().get_object(Bucket=s3_env, Key=key)["Body"].read()
    assert body == report.read_bytes()
    back = client.download_artifacts(run.info.run_id, "metrics/eval.json", str(tmp_path))
    assert Path(back).read_bytes() == report.read_bytes()
    assert not (tmp_path / "mlruns").exists()  # nothing fell back to a local artifact store


def test_endpoint_credentials_never_printed(monkeypatch, tmp_path, capsys):
    """An endpoint URL with user:password in it (botocore repeats the URL in its own error)."""
    from fairat.fronts.cli import main

    port = free_port()  # nothing listens here
    monkeypatch.setenv("FAIRAT_S3_ENDPOINT_URL", f"http://minio:hunter2pw@127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENG")
    with pytest.raises(StorageError, match=r"endpoint http://minio:\*\*\*@127\.0\.0\.1") as info:
        storage.download_file("s3://bkt/keep.txt", tmp_path / "keep.txt")
    assert "hunter2pw" not in str(info.value)
    assert main(["storage", "pull", "s3://bkt/p", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "cannot reach S3" in err and "minio:***@" in err and "hunter2pw" not in err


def test_credentials_in_an_s3_url_refused_without_echo(capsys):
    from fairat.fronts.cli import main

    with pytest.raises(StorageError, match="credentials") as info:
        parse_s3_url("s3://AKIAEXAMPLE:s3cr3tvalue@bucket/x")
    assert "s3cr3tvalue" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    assert main(["storage", "pull", "s3://AKIAEXAMPLE:s3cr3tvalue@bucket/x", "out"]) == 1
    assert "s3cr3tvalue" not in capsys.readouterr().err
