"""MLflow registry rules: stale gate decisions never promote; approval needs complete evidence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fairat.edge import registry
from fairat.engine.metrics import flatten, numeric_metrics
from fairat.fronts.cli import main
from tiny import REPO, registry_run_flags

TINY = registry_run_flags()  # the shared tiny run with a gate a tiny model can pass


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mlflow_sqlite) -> Path:
    """One tiny `fairat run` (all five steps) in its own folder and SQLite store."""
    path = tmp_path_factory.mktemp("registry")
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    mp = pytest.MonkeyPatch()
    mp.chdir(path)
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite(path / "mlruns" / "mlflow.db"))
    assert main(["run", *TINY]) == 0
    yield path
    mp.undo()


@pytest.fixture
def inside(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlruns/mlflow.db")
    return workdir


@pytest.mark.slow
def test_run_registers_a_candidate_with_its_evidence(inside):
    rows = {r["version"]: r for r in registry.list_versions("unit")}
    assert rows[1]["aliases"] == ["candidate"]
    assert not registry.approval_problems({f"fairat.{k}": v for k, v in rows[1].items()})


@pytest.mark.slow
def test_the_logged_model_lists_the_packages_it_needs(inside):
    """Named, not inferred: MLflow's inference re-imports the model in a subprocess and listed
    packages the model never uses."""
    found = list((inside / "mlruns").rglob("requirements.txt"))
    assert found, "the registered model has no requirements.txt"
    lines = found[0].read_text().split()
    assert set(registry.model_requirements()) <= set(lines)
    assert {line.split("==")[0] for line in lines} == {"mlflow", "torch", "numpy", "cloudpickle"}


@pytest.mark.slow
def test_the_registered_model_loads_from_the_registry_and_predicts_like_model_pt(inside,
                                                                                monkeypatch):
    """What a downstream user does with a version: load it by alias and predict a batch. MLflow
    saves it as an exported program (torch.export, "pt2"): it loads with pickle deserialization
    disallowed (MLflow then refuses any archive holding a pickle payload) and needs no fairat
    class; its batch size is free (register's example has two rows, so the batch dimension is
    not fixed at export) and its outputs are model.pt's."""
    import mlflow
    import torch

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    from fairat.engine.checkpoint import load_model
    from fairat.engine.data import load_prepared

    loaded = mlflow.pytorch.load_model("models:/unit@candidate")
    model, _ = load_model(inside / "models" / "model.pt", torch.device("cpu"))
    x = load_prepared(inside / "data" / "prepared").test.images[:5].float().div(255)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_report_swapped_while_registering_registers_nothing(inside, monkeypatch, capsys):
    """Register reads the report once; when the file on disk is not the bytes it read (a swap
    between reading and acting), registration stops before anything reaches the registry."""
    path = inside / "metrics/eval.json"
    fake = json.loads(path.read_text())
    fake["attacks"]["clean"]["summary"]["average"] = 1.0
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (json.dumps(fake).encode()
                                                          if self.resolve() == path.resolve()
                                                          else real(self)))
    before = (inside / "metrics/registered.json").read_bytes()
    versions = len(registry.list_versions("unit"))
    assert main(["register", *TINY]) != 0
    assert "changed while registering" in capsys.readouterr().err
    assert (inside / "metrics/registered.json").read_bytes() == before
    assert len(registry.list_versions("unit")) == versions


@pytest.mark.slow
def test_a_gate_decision_for_another_report_never_promotes(inside, capsys):
    report = json.loads((inside / "metrics/eval.json").read_text())
    report["consistency"] = [{"severity": "warning", "message": "edited after the gate"}]
    (inside / "metrics/eval.json").write_text(json.dumps(report))  # gate.json is now stale
    assert main(["register", *TINY]) == 0
    record = json.loads((inside / "metrics/registered.json").read_text())
    assert record["alias"] is None and not record["passed"]
    rows = {r["version"]: r for r in registry.list_versions("unit")}
    new = rows[record["version"]]
    assert new["gate_passed"] == "false" and "another evaluation report" in new["gate_reasons"]
    assert rows[1]["aliases"] == ["candidate"]  # the alias stays on the version that passed
    assert main(["approve", "unit", str(record["version"]), "--by", "bob"]) == 2
    assert "re-run it" in capsys.readouterr().err


@pytest.mark.slow
def test_approval_refuses_a_version_without_evidence(inside, capsys):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(registry.tracking_uri())
    source = client.get_model_version("unit", "1").source
    bare = client.create_model_version("unit", source)  # registered by hand, no gate tags
    assert main(["approve", "unit", str(bare.version), "--by", "bob"]) == 2
    err = capsys.readouterr().err
    assert "fairat.gate_passed is missing" in err and "fairat.model_sha256 is missing" in err
    assert "champion" not in client.get_registered_model("unit").aliases


def test_approve_needs_a_name_and_an_existing_version(tmp_path, monkeypatch, capsys,
                                                       mlflow_sqlite):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite(tmp_path / "mlflow.db"))
    assert main(["approve", "nothing", "1", "--by", "bob"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(registry.RegistryError, match="--by"):
        registry.approve("nothing", 1, " ")


def test_tracking_uri_prefers_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert registry.tracking_uri() == "http://127.0.0.1:5000"


def test_flatten_and_numeric_metrics():
    tree = {"train": {"attack": {"eps": 0.1}, "augment": ["a", "b"]}, "flag": True}
    assert flatten(tree) == {"train.attack.eps": 0.1, "train.augment": ["a", "b"],
                                      "flag": True}
    record = {"epoch": 2, "val": {"cat": 0.5, "dog": float("nan")}, "ok": True, "name": "x"}
    assert numeric_metrics(record) == {"epoch": 2.0, "val.cat": 0.5}


def _fresh_evidence(inside) -> None:
    """Evaluate and gate again, so the test starts from evaluate's untouched, logged report."""
    assert main(["evaluate", *TINY]) == 0 and main(["gate", *TINY]) == 0


@pytest.mark.slow
def test_a_forged_report_registered_twice_never_becomes_candidate(inside, capsys):
    """A consistent edit with its sidecar rewritten passes the local gate; register blocks it on
    the hash evaluate logged, and must not store the forged hash where it would pass next time."""
    from mlflow.tracking import MlflowClient

    from fairat.evidence.gate import write_sidecar

    _fresh_evidence(inside)
    run_id = json.loads((inside / "metrics/train.json").read_text())["mlflow_run_id"]
    client = MlflowClient(registry.tracking_uri())
    honest = client.get_run(run_id).data.tags["fairat.report_sha256"]
    candidate = client.get_registered_model("unit").aliases.get("candidate")
    path = inside / "metrics/eval.json"
    forged = json.loads(path.read_text())
    forged["seconds"] = {k: 0.0 for k in forged["seconds"]}  # consistent: no check reads it
    path.write_text(json.dumps(forged))
    write_sidecar(path)
    assert main(["gate", *TINY]) == 0
    assert json.loads((inside / "metrics/gate.json").read_text())["passed"] is True
    for attempt in (1, 2):
        assert main(["register", *TINY]) == 0
        record = json.loads((inside / "metrics/registered.json").read_text())
        assert record["passed"] is False and record["alias"] is None, attempt
        assert client.get_registered_model("unit").aliases.get("candidate") == candidate
        assert client.get_run(run_id).data.tags["fairat.report_sha256"] == honest
    assert "not the one evaluate logged" in capsys.readouterr().out
    _fresh_evidence(inside)


@pytest.mark.slow
def test_a_training_summary_without_a_run_id_refuses_to_register(inside, capsys):
    path = inside / "metrics/train.json"
    original = path.read_text()
    summary = json.loads(original)
    del summary["mlflow_run_id"]
    path.write_text(json.dumps(summary))
    versions = len(registry.list_versions("unit"))
    try:
        assert main(["register", *TINY]) != 0
        assert "mlflow_run_id is missing" in capsys.readouterr().err
        assert len(registry.list_versions("unit")) == versions
        assert main(["evaluate", *TINY]) != 0  # evaluate checks the run before its attacks
        assert "mlflow_run_id is missing" in capsys.readouterr().err
    finally:
        path.write_text(original)
