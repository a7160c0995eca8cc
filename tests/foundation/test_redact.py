"""Credentials never reach a message: the one redaction helper and the paths that print URLs."""

from __future__ import annotations

import pytest

from fairat.errors import DataError, RegistryError
from fairat.fronts.cli import main
from fairat.redact import redact


@pytest.mark.parametrize("text, want", [
    ("endpoint https://user:pass@minio:9000/x", "endpoint https://user:***@minio:9000/x"),
    ("postgresql://mlflow:p@ss@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("'postgresql+psycopg2://u:s3cr%40t@db/x'", "'postgresql+psycopg2://u:***@db/x'"),
    ("clone https://ghp_abcdef@github.com/o/r", "clone https://***@github.com/o/r"),
    ("GET http://h/o?X-Amz-Signature=abc123&part=2&password=zz#f",
     "GET http://h/o?X-Amz-Signature=***&part=2&password=***#f"),
    ("mysql://db/x?user=u&password=pw", "mysql://db/x?user=u&password=***"),
    # nothing secret: unchanged
    ("s3://bucket/key and sqlite:////tmp/mlruns/mlflow.db", None),
    ("mail a@b.com about http://host:5000/path@v2", None),
])
def test_redact_masks_url_credentials(text, want):
    assert redact(text) == (text if want is None else want)


def test_redact_masks_secret_environment_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "correct-horse")
    monkeypatch.setenv("FAIRAT_GUARD_SECRET", "abc")  # too short to mask safely: left alone
    monkeypatch.setenv("HOME_DIRECTORY_NAME", "wJalrXUtnFEMI")  # not named like a secret
    text = "sig wJalrXUtnFEMI/K7MDENG, pw correct-horse, abc"
    assert redact(text) == "sig ***, pw ***, abc"


def test_project_errors_are_redacted_when_made(monkeypatch):
    uri = "postgresql://mlflow:dbpassw0rd@db:5432/mlflow"
    for error in (RegistryError, DataError):
        err = error(f"cannot open an MLflow run at {uri}: refused")
        assert "dbpassw0rd" not in str(err) and "mlflow:***@db" in str(err)
        assert "dbpassw0rd" not in repr(err)


def test_cli_error_line_is_redacted(tmp_path, capsys):
    """A data root given as a URL with a password: `prepare` names it, without the password."""
    params = tmp_path / "params.yaml"
    params.write_text((__import__("pathlib").Path(__file__).parents[2] / "params.yaml").read_text())
    code = main(["prepare", "--params", str(params), "--out", str(tmp_path / "d"),
                 "-S", "data.source=imagefolder",
                 "-S", "data.root=https://reader:t0ps3cret@files.example/x.tar.gz"])
    err = capsys.readouterr().err
    assert code == 2 and "data.root" in err and "reader:***@files.example" in err
    assert "t0ps3cret" not in err


def test_guard_cli_does_not_echo_a_tracking_password(monkeypatch, capsys):
    monkeypatch.setenv("FAIRAT_GUARD_SECRET", "webhook-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:dbpassw0rd@db:5432/mlflow")
    assert main(["guard", "serve"]) == 2
    err = capsys.readouterr().err
    assert "mlflow:***@db" in err and "dbpassw0rd" not in err


def test_guard_log_lines_are_redacted(capsys):
    from fairat.edge import guard

    guard._stderr("fairat guard: error MlflowException: API request to "
                  "https://admin:adm1npw@mlflow.internal/api/2.0/x failed")
    err = capsys.readouterr().err
    assert "admin:***@mlflow.internal" in err and "adm1npw" not in err


def test_mlflow_run_link_does_not_print_a_tracking_password(monkeypatch, capsys):
    """MLflow prints "View run ... at: <tracking URI>/#/..." after every run on a server; with
    user:password in MLFLOW_TRACKING_URI that line carried the password to stdout."""
    from types import SimpleNamespace

    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from fairat.edge import registry

    uri = "http://alice:s3rverpw@127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # restored after
    client = TrackingServiceClient(uri)
    run = SimpleNamespace(data=SimpleNamespace(tags={}),
                          info=SimpleNamespace(experiment_id="1", run_name="r"))
    monkeypatch.setattr(client.store, "get_run", lambda run_id: run)
    client._log_url("abc")  # what mlflow.end_run does
    assert "s3rverpw" in capsys.readouterr().out  # MLflow on its own
    import mlflow

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    registry._mlflow()  # how fairat opens MLflow (the global URI it sets is undone after)
    client._log_url("abc")
    assert "s3rverpw" not in capsys.readouterr().out
