"""Kubeflow: the whole pipeline run end to end through kfp.local (slow), in attested mode.

The local runner ignores Kubernetes settings, so the signing key reaches the tasks the way the
``--signing-key-secret`` Secret does on a cluster, as ``FAIRAT_SIGNING_KEY`` in their environment
(each task is a subprocess of this one): evaluate and the gate sign, register verifies from the
artifacts the tasks hand each other.
"""

from __future__ import annotations

import json

import pytest

from fairat.config import with_overrides
from fairat.cluster.params import pipeline_arguments
from kfp_fixtures import PARAMS


# ---------------------------------------------------------------- local run through kfp.local

TINY = {"data.val_per_class": 5, "model.width": 8, "train.epochs": 2, "train.max_batches": 4,
        "train.batch_size": 64, "train.attack.steps": 2, "train.val_attack_steps": 2,
        "train.fairat.warmup": 0.5, "train.progress": False, "train.device": "cpu",
        "evaluate.examples_per_class": 5, "evaluate.pgd_steps": 3, "evaluate.autoattack": "none",
        "evaluate.device": "cpu", "gate.min_worst_class": 0.0, "track.model_name": "fairat-kfp",
        # a tiny model: judged on clean accuracy, with one threshold (all-zero gates are refused)
        "gate.attack": "clean", "gate.min_average": 0.01, "gate.min_clean_class": 0.0,
        "gate.protocol.min_pgd_steps": 1, "gate.protocol.min_cw_steps": None,
        "gate.protocol.autoattack": "none", "gate.protocol.min_examples_per_class": 1}


@pytest.mark.slow
def test_pipeline_runs_end_to_end_with_kfp_local(tmp_path, monkeypatch, mlflow_sqlite):
    from kfp import local

    from pipelines.fairat_pipeline import build_pipeline

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption,
                                                              PrivateFormat)

    from fairat.evidence.attestation import (DECISION_STATEMENT, REPORT_STATEMENT,
                                             envelope_from_sidecar, key_id, verify)

    private = Ed25519PrivateKey.generate()
    monkeypatch.setenv("FAIRAT_SIGNING_KEY", private.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode())
    for var in ("FAIRAT_SIGNING_KEY_FILE", "FAIRAT_VERIFY_KEY", "FAIRAT_VERIFY_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite(tmp_path / "mlflow.db"))
    monkeypatch.chdir(tmp_path)  # the components' working folder: keep strays out of the repo
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    arguments = {**pipeline_arguments(with_overrides(PARAMS, TINY)), "gpus_per_node": "0"}
    task = build_pipeline(PARAMS)(**arguments)
    assert task is not None

    (run_dir,) = (tmp_path / "root").iterdir()
    registered = json.loads((run_dir / "register" / "registration" / "registered.json")
                            .read_text())
    assert registered["passed"] is True and registered["alias"] == "candidate"
    assert not (run_dir / "register-2").exists()  # the blocked branch did not run
    decision = json.loads((run_dir / "gate" / "decision" / "gate.json").read_text())
    assert decision["passed"] is True and decision["thresholds"]["min_worst_class"] == 0.0
    # attested: the gate signed its decision, evaluate (and baseline-evaluate) their reports
    public = private.public_key()
    statement, problems = verify(decision["attestation"], public, DECISION_STATEMENT)
    assert not problems and decision["attestation"]["key_id"] == key_id(public)
    assert statement["model_sha256"] == decision["model_sha256"]
    for task in ("evaluate", "evaluate-2"):
        sidecar = (run_dir / task / "report" / "eval.json.sha256").read_text()
        _, problems = verify(envelope_from_sidecar(sidecar), public, REPORT_STATEMENT)
        assert not problems, (task, problems)
    for path in ("prepare/data/manifest.json", "train/model/model.pt", "train/summary/train.json",
                 "evaluate/report/eval.json", "evaluate/report/eval_classwise.png",
                 "evaluate/report_md", "evaluate/chart"):
        assert (run_dir / path).exists(), path
    assert "# Class-wise robustness report" in (run_dir / "evaluate" / "report_md").read_text()
    # the PGD-AT baseline beside the model, compared and on the card
    base = json.loads((run_dir / "evaluate-2" / "report" / "eval.json").read_text())
    assert base["provenance"]["train_config"]["train"]["method"] == "pgd_at"
    comparison = json.loads((run_dir / "compare" / "comparison" / "comparison.json").read_text())
    mine = json.loads((run_dir / "evaluate" / "report" / "eval.json").read_text())
    attack = decision["attack"]
    assert comparison["worst_lift"] == pytest.approx(
        mine["attacks"][attack]["summary"]["worst"] - base["attacks"][attack]["summary"]["worst"])
    card = (run_dir / "register" / "card").read_text()
    assert "baseline was trained beside this model" in card

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")  # not the global URI
    version = client.get_model_version_by_alias("fairat-kfp", "candidate")
    assert version.version == registered["version"]
