"""End to end: `dvc repro` in a temporary copy of the repo, from data to a registered model.

Covers the contract users rely on: every output appears, MLflow holds a version tagged with the
gate decision, `candidate` is set only when the gate passed, a second `dvc repro` does nothing, a
`dvc exp run` registers only when asked, a FairAT knob makes the model's stages stale and not the
PGD-AT baseline's beside it (which a unit test shows depends on every param it reads), a gate
threshold makes only the gate, register and compare's chart stale, the registered version can be
approved, and bad params stop the pipeline at once with a message naming the key. (A blocked
version refused by `fairat approve`: tests/edge/test_registry.py and tests/edge/test_guard.py.)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fairat.edge import registry
from fairat.evidence.model_card import CARD_SECTIONS
from fairat.fronts.cli import main
from fairat.fronts.dvc_deps import STAGES

REPO = Path(__file__).resolve().parents[2]
COPY = ["fairat", "pipelines", "components", "params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore",
        "results/digits-contest",  # the study the card quotes (params track.study), a register dep
        "models/.gitignore"]
TINY = {
    "data": {"val_per_class": 5},
    "model": {"width": 8},
    "train": {"epochs": 2, "max_batches": 4, "batch_size": 64, "val_attack_steps": 2,
              "progress": False, "attack": {"steps": 2}, "fairat": {"warmup": 0.5}},
    "evaluate": {"examples_per_class": 5, "pgd_steps": 3, "autoattack": "none"},
    # a tiny model: the gate judges clean accuracy (a pass is reachable) and keeps a threshold
    # (an all-zero gate is refused); its classes may sit below chance
    "gate": {"min_worst_class": 0.0, "attack": "clean", "min_average": 0.01, "min_clean_class": 0.0,
             "protocol": {"min_pgd_steps": 1, "min_cw_steps": None, "autoattack": "none",
                          "min_examples_per_class": 1}},
}


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _set_params(repo: Path, extra: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(_merge(params, extra), sort_keys=False))


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: mlruns/ inside the repo copy
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


def _ran(result: subprocess.CompletedProcess) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout}


@pytest.fixture
def repo(tmp_path, monkeypatch, mlflow_sqlite) -> Path:
    """A git + DVC repo holding this project's pipeline files and tiny params."""
    dest = tmp_path / "repo"
    for rel in COPY:
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    _set_params(dest, TINY)
    mlflow_sqlite(dest / "mlruns" / "mlflow.db")  # the default store, fresh (git-ignored)
    git_env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for key, value in git_env.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=dest, check=True)
    monkeypatch.chdir(dest)  # registry.* reads the default store relative to the repo
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return dest


def _versions(repo: Path) -> dict[int, dict]:
    return {row["version"]: row for row in registry.list_versions("fairat-digits")}


@pytest.mark.slow
def test_dvc_repro_from_scratch_registers_caches_and_gates(repo, capsys):
    first = _dvc(repo, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _ran(first) == set(STAGES)
    for out in ("data/prepared/manifest.json", "models/model.pt", "models/checkpoints/last.pt",
                "models/baseline/model.pt", "metrics/baseline/eval.json", "metrics/comparison.json",
                "metrics/train.json", "plots/train.csv", "metrics/eval.json", "metrics/eval_summary.json",
                "plots/eval_classwise.png", "plots/comparison_classwise.png",
                "reports/model_card.md", "metrics/gate.json",
                "metrics/registered.json", "dvc.lock", "mlruns/mlflow.db"):
        assert (repo / out).exists(), out
    # DVC then says "Use `dvc push`": with no remote configured, the run says how to add one
    assert "has no remote" in first.stdout and "fairat storage dvc-remote" in first.stdout
    assert "--by YOUR_NAME" in first.stdout  # a next step that works where $USER is unset
    gate = json.loads((repo / "metrics/gate.json").read_text())
    registered = json.loads((repo / "metrics/registered.json").read_text())
    assert gate["passed"] and registered["alias"] == "candidate" and registered["version"] == 1
    version = _versions(repo)[1]
    assert version["aliases"] == ["candidate"] and version["gate_passed"] == "true"
    manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
    assert version["data_content_hash"] == manifest["content_hash"]
    assert float(version["worst_class_robust"]) == pytest.approx(gate["measured"]["worst"], abs=1e-6)
    # the training run holds params, per-epoch metrics, the evaluation and the model
    from mlflow.tracking import MlflowClient

    client = MlflowClient(registry.tracking_uri())
    run = client.get_run(registered["run_id"])
    assert run.data.params["train.method"] == "fairat"
    assert "val_robust_avg" in run.data.metrics and "test.worst_case.worst" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    # the PGD-AT baseline beside it: its own run, linked from the model's run and version
    baseline_id = json.loads((repo / "metrics/baseline/train.json").read_text())["mlflow_run_id"]
    assert client.get_run(baseline_id).data.params["train.method"] == "pgd_at"
    assert run.data.tags["fairat.baseline_run_id"] == baseline_id
    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    assert run.data.metrics["baseline.worst_lift"] == pytest.approx(comparison["worst_lift"])
    baseline_report = json.loads((repo / "metrics/baseline/eval.json").read_text())
    assert comparison["baseline_worst"] == pytest.approx(
        baseline_report["attacks"]["clean"]["summary"]["worst"])  # TINY gates on clean
    assert float(version["worst_lift_over_baseline"]) == pytest.approx(comparison["worst_lift"],
                                                                       abs=1e-6)

    again = _dvc(repo, "repro")
    assert again.returncode == 0 and _ran(again) == set(), again.stdout
    assert json.loads((repo / "metrics/registered.json").read_text()) == registered

    # the model card: written after the gate, every section filled, summarised on the version
    card = (repo / "reports/model_card.md").read_text()
    for section in CARD_SECTIONS:
        assert f"## {section}" in card, section
    assert "# Model card: fairat-digits version 1" in card and "PASSED" in card
    assert manifest["content_hash"] in card and registered["run_id"] in card
    assert "baseline was trained beside this model" in card and baseline_id in card
    description = client.get_model_version("fairat-digits", "1").description
    assert description.startswith("Fairness gate PASSED")
    assert f"{registered['evidence_path']}/model_card.md" in description  # its own evidence folder

    # commit the run, as a team does, so experiments are compared with it
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "first run"], cwd=repo, check=True)
    # a DVC experiment re-runs register (track changed) but creates no version unless asked
    exp = _dvc(repo, "exp", "run", "-S", "track.owner=someone")
    assert exp.returncode == 0 and _ran(exp) == {"register"}, exp.stdout + exp.stderr
    assert "not registered: this is a `dvc exp run` experiment" in exp.stdout
    assert list(_versions(repo)) == [1]
    asked = _dvc(repo, "exp", "run", "-S", "track.register=true")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert list(_versions(repo)) == [1, 2]
    # the README's comparison of experiments shows the worst class and the lift, in few columns
    documented = next(line for line in (REPO / "README.md").read_text().splitlines()
                      if line.startswith("dvc exp show"))
    table = _dvc(repo, *shlex.split(documented.partition("#")[0])[1:], "--csv")
    header = table.stdout.splitlines()[0].split(",")
    assert table.returncode == 0 and len(header) <= 10, header
    for column in ("worst_case.worst", "worst_case.average", "worst_lift", "average_lift",
                   "train.method", "passed"):
        assert column in header, (column, header)
    assert len(table.stdout.splitlines()) >= 4  # the workspace, the commit, both experiments

    # the evaluation summary DVC shows is the report's worst case
    summary = json.loads((repo / "metrics/eval_summary.json").read_text())
    report = json.loads((repo / "metrics/eval.json").read_text())
    assert summary["worst_case"]["worst"] == report["attacks"]["worst_case"]["summary"]["worst"]
    assert summary["worst_case"]["class"] == report["attacks"]["worst_case"]["per_class"]
    shown = json.loads(_dvc(repo, "metrics", "show", "--json").stdout)
    assert any("metrics/eval_summary.json" in json.dumps(v) for v in shown.values())

    # what an edit makes stale, read from `dvc status` (the stages after a stale one follow it
    # through their file deps; running them would only re-prove DVC's DAG, at a minute a repro)
    _set_params(repo, {"train": {"fairat": {"hard_ratio": 0.3}}})
    stale = _stale(repo)
    assert "train" in stale and not stale & {"prepare", "baseline_train", "baseline_evaluate"}
    diff = _dvc(repo, "params", "diff", "--json")
    ratio = json.loads(diff.stdout)["params.yaml"]["train.fairat.hard_ratio"]
    assert (ratio["old"], ratio["new"]) == (0.2, 0.3)
    _set_params(repo, {"train": {"fairat": {"hard_ratio": 0.2}}, "gate": {"min_worst_class": 1.0}})
    # a gate threshold: the gate, register and compare's chart (its threshold line), no training
    assert _stale(repo) == {"compare", "gate", "register"}

    # the candidate the pipeline registered (the asked-for experiment's) is approved and listed
    assert _versions(repo)[2]["aliases"] == ["candidate"]
    assert main(["approve", "fairat-digits", "2", "--by", "alice", "--note", "ok", "--yes"]) == 0
    approved = _versions(repo)[2]
    assert approved["aliases"] == ["candidate", "champion"]
    assert approved["approved_by"] == "alice" and approved["approval_note"] == "ok"
    assert main(["models"]) == 0
    assert "candidate,champion" in capsys.readouterr().out


def _stale(repo: Path) -> set[str]:
    """Stages `dvc status` reports as changed (deps, params or outs)."""
    status = _dvc(repo, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    return {name.split(":")[-1] for name in json.loads(status.stdout or "{}")}


@pytest.mark.slow
@pytest.mark.parametrize("key, value, message", [
    ("train.attack.eps", -0.1, "train.attack.eps: -0.1 must lie in [0, 1]"),
])
def test_bad_params_stop_dvc_repro_at_once(repo, key, value, message):
    section, *rest = key.split(".")
    extra: dict = {}
    node = extra.setdefault(section, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value
    _set_params(repo, extra)
    result = _dvc(repo, "repro")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (repo / "models/model.pt").exists()


@pytest.mark.parametrize("override, message", [
    ("train.attack.eps=-0.1", "train.attack.eps: -0.1 must lie in [0, 1]"),
    ("train.method=sgd", "train.method"),
    ("data.source=imagenet", "data.source"),
])
def test_bad_params_stop_every_command_with_the_key(tmp_path, monkeypatch, capsys, override,
                                                   message):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for command in ("prepare", "train", "evaluate", "gate", "register"):
        assert main([command, "-S", override]) == 2
        err = capsys.readouterr().err
        assert message in err and f"fairat {command}: error" in err
    assert not any(tmp_path.glob("**/*.pt")) and not (tmp_path / "mlruns").exists()
