"""Team mode: the pipeline against `mlflow server` with PostgreSQL as backend and S3 artifacts.

What a team runs in production, on loopback: PostgreSQL (Debian's package, started by
tests/servers.py in a throw-away cluster), moto's S3 server, and `mlflow server` serving artifacts
from ``s3://<bucket>/mlflow``. The pipeline's commands see only ``MLFLOW_TRACKING_URI``: no S3
endpoint or credentials, since the server proxies artifacts (credentials stay on the server).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tiny import PASSABLE_GATE, REPO, TINY_RUN, cli_flags


def _s3_keys(server, prefix: str = "mlflow/") -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=server.s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="fairat-test-key",
                          aws_secret_access_key="fairat-test-secret")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket,
                                                                  Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def _pg_names(uri: str, sql: str) -> set[str]:
    import psycopg2

    with psycopg2.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return {row[0] for row in cur.fetchall()}


def test_team_server_keeps_registry_in_postgres_and_artifacts_in_s3(mlflow_server,
                                                                     postgres_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.create_experiment(f"smoke-{uuid.uuid4().hex[:6]}")
    run = client.create_run(exp)
    note = tmp_path / "note.txt"
    note.write_text("team mode")
    client.log_artifact(run.info.run_id, str(note), artifact_path="evidence")
    client.set_terminated(run.info.run_id)
    name = f"smoke-model-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/evidence",
                                     run_id=run.info.run_id)
    client.set_registered_model_alias(name, "candidate", mv.version)

    assert client.get_model_version_by_alias(name, "candidate").version == mv.version
    assert name in _pg_names(postgres_server.uri, "SELECT name FROM registered_models")
    assert run.info.run_id in _pg_names(postgres_server.uri, "SELECT run_uuid FROM runs")
    assert any(k.endswith(f"{run.info.run_id}/artifacts/evidence/note.txt")
               for k in _s3_keys(mlflow_server))


def _fairat(*args: str) -> None:
    """One command, in this process: what is tested here is where things are stored (a stage in
    its own process is what tests/fronts/test_pipeline_dvc.py runs), and each process start
    costs about 10 s of imports that the suite's time cannot afford."""
    from fairat.fronts.cli import main

    start = time.monotonic()
    assert main(list(args)) == 0, f"fairat {' '.join(args)} failed"
    print(f"fairat {args[0]}: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_pipeline_end_to_end_in_team_mode(mlflow_server, tmp_path, monkeypatch):
    """prepare -> train -> evaluate -> gate -> register against the team server, twice: a gate that
    blocks (no alias) and one that passes (alias `candidate`); models land in the S3 bucket."""
    from mlflow import MlflowClient

    name = f"fairat-team-{uuid.uuid4().hex[:6]}"
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for key in [k for k in os.environ if k.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL",
                                                                 "FAIRAT_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(key, raising=False)
    # the only thing a team member's shell needs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.chdir(tmp_path)
    # the shared tiny run (tests/tiny.py): what is tested here is where things are stored
    tiny = cli_flags(TINY_RUN) + ["-S", f"track.model_name={name}",
                                  "-S", f"track.experiment={name}"]
    _fairat("prepare", *tiny)
    _fairat("train", *tiny)
    _fairat("evaluate", *tiny)

    client = MlflowClient(tracking_uri=mlflow_server.url)
    records = {}
    for threshold in ("1.0", "0.0"):  # a worst class at 100% robust accuracy: blocks; 0: passes
        gate = [*tiny, *cli_flags(PASSABLE_GATE), "-S", f"gate.min_worst_class={threshold}"]
        _fairat("gate", *gate)
        _fairat("register", *gate)
        decision = json.loads((tmp_path / "metrics" / "gate.json").read_text())
        record = json.loads((tmp_path / "metrics" / "registered.json").read_text())
        records[threshold] = record
        mv = client.get_model_version(name, str(record["version"]))
        assert mv.tags["fairat.gate_passed"] == str(decision["passed"]).lower()
        assert "fairat.worst_class_robust" in mv.tags and "fairat.model_sha256" in mv.tags
        aliases = client.get_registered_model(name).aliases
        if decision["passed"]:
            assert aliases.get("candidate") == str(record["version"])
        else:
            assert aliases.get("candidate") != str(record["version"])
        assert record["passed"] == decision["passed"]
    assert records["1.0"]["passed"] is False and records["0.0"]["passed"] is True
    assert client.get_registered_model(name).aliases == {"candidate":
                                                         str(records["0.0"]["version"])}
    # artifacts went through the server into the bucket: the logged models and the evidence
    keys = _s3_keys(mlflow_server)
    for record in records.values():
        model_id = record["model_uri"].rsplit("/", 1)[-1]
        assert any(model_id in k and k.endswith("/MLmodel") for k in keys), (model_id, keys)
        assert record["evidence_path"].startswith("evidence/")  # one folder per registration
        assert any(f"{record['run_id']}/artifacts/{record['evidence_path']}/eval.json" in k
                   for k in keys)
    run = client.get_run(records["0.0"]["run_id"])
    logged = json.dumps([run.data.params, run.data.tags])
    assert "fairat-test-secret" not in logged and "fairat-test-key" not in logged


def test_missing_postgres_fails_with_the_setup_hint(monkeypatch):
    import servers

    monkeypatch.setattr(servers.glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.fail.Exception, match="scripts/install-test-services.sh"):
        servers.postgres_bin()
