"""S3 through boto3: upload, download (atomic), folder sync and clear errors.

Where the bucket lives comes from the environment only, never from params or committed config:

- ``FAIRAT_S3_ENDPOINT_URL``: an S3-compatible endpoint (MinIO, moto, Ceph...). When unset, the
  standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and then ``MLFLOW_S3_ENDPOINT_URL`` are
  used; when none is set, AWS S3 itself.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and the rest of boto3's credential chain).
- ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` (default ``us-east-1``).

Why the short timeouts: a dead endpoint must fail in seconds with a message naming it, not hang a
pipeline for minutes. Downloads go to a temporary file beside the target and are renamed into place,
so a failed download leaves nothing half-written and an existing file untouched. Object keys that
would land outside the target folder are refused before anything is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from fairat.io import atomic_path
from fairat.redact import redact

ENDPOINT_VARS = ("FAIRAT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                 "MLFLOW_S3_ENDPOINT_URL")
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 3


Failure = Literal["unreachable", "interrupted", "no_credentials", "no_bucket", "no_key", "denied",
                  "unsafe_key", "invalid", "failed"]


class StorageError(RuntimeError):
    """An S3 operation failed; the message names the endpoint, bucket and key and says what to do.

    ``kind`` says which failure it was, for callers that react differently (e.g. create a bucket).
    The message is redacted when the error is made: an endpoint URL's password, a secret query
    value or a secret from the environment never reaches a log (:func:`fairat.redact.redact`).
    """

    def __init__(self, message: str, kind: Failure = "failed") -> None:
        super().__init__(redact(message))
        self.kind = kind


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # no leading slash; "" is the bucket root

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def child(self, name: str) -> "S3Url":
        return S3Url(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)


def parse_s3_url(url: str) -> S3Url:
    """``s3://bucket/some/prefix`` -> S3Url("bucket", "some/prefix"); anything else is refused."""
    if not url.startswith("s3://"):
        raise StorageError(f"not an S3 URL (expected s3://bucket/prefix): {url!r}", "invalid")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"S3 URL has no bucket: {url!r}", "invalid")
    if "@" in bucket or ":" in bucket:  # s3://KEY:SECRET@bucket: not repeated, even redacted
        raise StorageError("S3 URL has credentials or a port where the bucket goes; credentials "
                           "come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) "
                           "and the endpoint from FAIRAT_S3_ENDPOINT_URL", "invalid")
    return S3Url(bucket, key.strip("/"))


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_prefix_url(url: str) -> S3Url:
    """:func:`parse_s3_url`, also requiring a valid bucket name (3-63 lower-case letters, digits,
    dots, hyphens), for URLs that arrive as run parameters. A URL that fails is not repeated in
    the message: it might hold a credential typed in the wrong place (``s3://KEY:SECRET@...``)."""
    bucket, _, key = url[len("s3://"):].partition("/") if url.startswith("s3://") else ("", "", "")
    if not _BUCKET.match(bucket):
        raise StorageError("not an S3 prefix URL: expected s3://bucket/prefix with a bucket "
                           "name of 3-63 lower-case letters, digits, dots and hyphens "
                           "(credentials never go into the URL: they come from the environment)",
                           "invalid")
    return S3Url(bucket, key.strip("/"))


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (first of ENDPOINT_VARS set), or None for AWS."""
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def _where(bucket: str | None = None, key: str | None = None) -> str:
    place = f"endpoint {endpoint_url() or 'AWS S3 (no endpoint set)'}"
    if bucket:
        place += f", bucket {bucket!r}"
    if key:
        place += f", key {key!r}"
    return place


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment, with retries and short timeouts."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                    s3={"addressing_style": "path"} if endpoint_url() else None)
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), region_name=region,
                                          config=config)


def _translate(exc: Exception, bucket: str | None, key: str | None = None) -> StorageError:
    """Map a botocore/s3transfer failure to a StorageError that says where and what to do."""
    from botocore import exceptions as bx

    where = _where(bucket, key)
    cause: BaseException | None = exc  # boto3 wraps the botocore error it caught: unwrap it
    while cause is not None and not isinstance(cause, (bx.BotoCoreError, bx.ClientError)):
        cause = getattr(cause, "last_exception", None) or cause.__cause__ or cause.__context__
    exc = cause if isinstance(cause, Exception) else exc
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                        bx.ReadTimeoutError, bx.ConnectionClosedError)):
        return StorageError(f"cannot reach S3 ({where}): {exc}. Is the server running and "
                            f"FAIRAT_S3_ENDPOINT_URL right?", "unreachable")
    if isinstance(exc, (bx.IncompleteReadError, bx.ResponseStreamingError)):
        return StorageError(f"transfer interrupted ({where}) after retries: {exc}", "interrupted")
    if isinstance(exc, bx.NoCredentialsError):
        return StorageError(f"no S3 credentials ({where}): set AWS_ACCESS_KEY_ID and "
                            f"AWS_SECRET_ACCESS_KEY in the environment", "no_credentials")
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"NoSuchBucket"} or (code in {"404", "NotFound"} and not key):
            return StorageError(f"bucket does not exist ({where})", "no_bucket")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return StorageError(f"no such object ({where})", "no_key")
        if code in {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch"}:
            return StorageError(f"access denied ({where}): check AWS_ACCESS_KEY_ID / "
                                f"AWS_SECRET_ACCESS_KEY and the bucket policy", "denied")
        message = exc.response.get("Error", {}).get("Message", "")
        return StorageError(f"S3 request failed ({where}): {code} {message}".rstrip())
    return StorageError(f"S3 transfer failed ({where}): {type(exc).__name__}: {exc}")


def _failures() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer import exceptions as tx

    return (BotoCoreError, ClientError, Boto3Error, tx.RetriesExceededError,
            tx.S3UploadFailedError, tx.S3DownloadFailedError)


def ensure_bucket(bucket: str, client: Any = None) -> None:
    """Create ``bucket`` unless it already exists (idempotent)."""
    client = client or s3_client()
    try:
        client.head_bucket(Bucket=bucket)
        return
    except _failures() as exc:
        err = _translate(exc, bucket)
        if err.kind != "no_bucket":
            raise err from exc
    region = client.meta.region_name
    try:
        if region and region != "us-east-1":  # S3 wants the region spelled out elsewhere
            client.create_bucket(Bucket=bucket,
                                 CreateBucketConfiguration={"LocationConstraint": region})
        else:
            client.create_bucket(Bucket=bucket)
    except _failures() as exc:
        raise _translate(exc, bucket) from exc


def upload_file(local: str | Path, url: str, client: Any = None) -> None:
    """Upload one file to ``s3://bucket/key`` (multipart for large files, retried)."""
    target = parse_s3_url(url)
    if not target.key:
        raise StorageError(f"upload needs a key, not a bare bucket: {url!r}", "invalid")
    client = client or s3_client()
    try:
        client.upload_file(str(local), target.bucket, target.key)
    except _failures() as exc:
        raise _translate(exc, target.bucket, target.key) from exc


def download_file(url: str, local: str | Path, client: Any = None) -> None:
    """Download ``s3://bucket/key`` to ``local`` atomically: on failure ``local`` is untouched."""
    source = parse_s3_url(url)
    client = client or s3_client()
    try:
        with atomic_path(local) as tmp, open(tmp, "wb") as f:
            client.download_fileobj(source.bucket, source.key, f)
    except _failures() as exc:
        err = _translate(exc, source.bucket, source.key)
        if err.kind == "no_key" and not _bucket_exists(client, source.bucket):
            # HEAD answers a bare 404 for a missing bucket too: say which one is missing
            err = StorageError(f"bucket does not exist ({_where(source.bucket)})", "no_bucket")
        raise err from exc


def _bucket_exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except _failures():
        return False


def safe_relative_key(prefix: str, key: str) -> PurePosixPath | None:
    """The part of ``key`` below ``prefix`` as a safe relative path, None for folder markers.

    Raises StorageError for keys that would escape the target folder (``..``, absolute, ``\\``).
    """
    rel = key[len(prefix):] if prefix else key
    if prefix and not key.startswith(prefix):
        raise StorageError(f"key {key!r} is not under prefix {prefix!r}", "unsafe_key")
    if rel.endswith("/") or rel == "":
        return None
    path = PurePosixPath(rel)
    segments = rel.split("/")  # raw segments: PurePosixPath would drop "." and "//"
    if "\\" in rel or path.is_absolute() or ":" in segments[0] \
            or any(seg in {"", ".", ".."} for seg in segments):
        raise StorageError(f"refusing unsafe object key {key!r}: it would land outside the "
                           f"target folder", "unsafe_key")
    return path


def _list_keys(client: Any, source: S3Url) -> list[str]:
    prefix = f"{source.key}/" if source.key else ""
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=source.bucket,
                                                                      Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    except _failures() as exc:
        raise _translate(exc, source.bucket) from exc
    return keys


def upload_dir(local_dir: str | Path, url: str, client: Any = None) -> list[str]:
    """Upload every file under ``local_dir`` to ``url/<relative path>``; returns the keys."""
    local_dir, target = Path(local_dir), parse_s3_url(url)
    if not local_dir.is_dir():
        raise StorageError(f"not a folder: {local_dir}", "invalid")
    client = client or s3_client()
    keys = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        dest = target.child(path.relative_to(local_dir).as_posix())
        upload_file(path, str(dest), client)
        keys.append(dest.key)
    return keys


def download_dir(url: str, local_dir: str | Path, client: Any = None,
                 missing_ok: bool = False) -> list[Path]:
    """Download every object under ``url/`` into ``local_dir``, each file atomically.

    Every key is checked before the first byte is written: one unsafe key refuses the whole pull.
    Nothing under ``url/`` is an error unless ``missing_ok`` (then nothing is written).
    """
    source, local_dir = parse_s3_url(url), Path(local_dir)
    client = client or s3_client()
    prefix = f"{source.key}/" if source.key else ""
    keys = _list_keys(client, source)
    if not keys:
        if missing_ok:
            return []
        raise StorageError(f"nothing under {source} ({_where(source.bucket)})", "no_key")
    plan = [(key, rel) for key in keys if (rel := safe_relative_key(prefix, key)) is not None]
    written = []
    for key, rel in plan:
        dest = local_dir.joinpath(*rel.parts)
        download_file(str(S3Url(source.bucket, key)), dest, client)
        written.append(dest)
    return written


class FolderMirror:
    """An S3 prefix kept as a copy of a local folder that may not outlive its machine.

    Why: a Kubernetes pod's disk is gone when the pod is retried; training checkpoints written
    there must also live where the next pod finds them. :meth:`restore` fetches what the prefix
    holds (each file atomically; an empty prefix is a fresh start, not an error) and :meth:`push`
    uploads the files that changed since the last push or restore (size or modification time), in
    name order. An S3 object appears whole or not at all, so a push cut short leaves each object
    either old or new, never half-written.
    """

    def __init__(self, local_dir: str | Path, url: str, client: Any = None) -> None:
        self.local_dir, self.url = Path(local_dir), url
        self.target = parse_prefix_url(url)  # a bad URL fails here, before any work
        self._client = client
        self._pushed: dict[str, tuple[int, int]] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def check(self) -> None:
        """Fail now, with the endpoint and bucket named, when the bucket cannot be used."""
        try:
            self.client.head_bucket(Bucket=self.target.bucket)
        except _failures() as exc:
            err = _translate(exc, self.target.bucket)
            if err.kind == "no_bucket":
                err = StorageError(f"{err}: create it first (fairat never creates a bucket "
                                   f"for checkpoints, so a typo cannot go unnoticed)", "no_bucket")
            raise err from exc

    def _signature(self, path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns

    def restore(self) -> list[Path]:
        """Download everything under the prefix into the folder; [] when there is nothing yet."""
        written = download_dir(self.url, self.local_dir, self.client, missing_ok=True)
        for path in written:
            self._pushed[path.relative_to(self.local_dir).as_posix()] = self._signature(path)
        return written

    def push(self) -> list[str]:
        """Upload the files that changed since the last push or restore; returns their keys.

        Hidden files (the temporary files of atomic writes) are skipped.
        """
        keys = []
        if not self.local_dir.is_dir():
            return keys
        for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local_dir).as_posix()
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            signature = self._signature(path)
            if self._pushed.get(rel) == signature:
                continue
            dest = self.target.child(rel)
            upload_file(path, str(dest), self.client)
            self._pushed[rel] = signature
            keys.append(dest.key)
        return keys


def push(local_dir: str | Path, url: str) -> list[str]:
    """`fairat storage push`: make sure the bucket exists, then upload a folder; returns keys."""
    target = parse_s3_url(url)
    client = s3_client()
    ensure_bucket(target.bucket, client)
    return upload_dir(local_dir, url, client)


def pull(url: str, local_dir: str | Path) -> list[Path]:
    """`fairat storage pull`: download a folder written by :func:`push`; returns local paths."""
    return download_dir(url, local_dir)


def configure_dvc_remote(repo_dir: str | Path, url: str, name: str = "storage",
                         endpoint: str | None = None) -> None:
    """Make ``url`` the default DVC remote of the repo at ``repo_dir``.

    The bucket URL goes into ``.dvc/config`` (committed, no secret in it); the endpoint into
    ``.dvc/config.local`` (git-ignored by DVC), with short timeouts so a dead server fails fast.
    Credentials are not written anywhere: dvc-s3 reads ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY`` from the environment. ``endpoint`` defaults to :func:`endpoint_url`.
    """
    parse_s3_url(url)
    endpoint = endpoint or endpoint_url()
    _dvc(repo_dir, "remote", "add", "--default", "--force", name, url)
    local = {"connect_timeout": str(int(CONNECT_TIMEOUT_S)),
             "read_timeout": str(int(READ_TIMEOUT_S))}
    if endpoint:
        local["endpointurl"] = endpoint
    for option, value in local.items():
        _dvc(repo_dir, "remote", "modify", "--local", name, option, value)


def _dvc(repo_dir: str | Path, *args: str) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo_dir, text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise StorageError(f"`dvc {' '.join(args[:2])}` failed in {repo_dir}: "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout
