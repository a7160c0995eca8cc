"""End to end through the real CLI: prepare -> train a few batches -> evaluate with AutoAttack."""

import json
import subprocess
import sys

import pytest
import yaml

from fairat.fronts.cli import main

TINY = [
    "-S", "data.val_per_class=5",
    "-S", "model.width=8",
    "-S", "train.epochs=2", "-S", "train.max_batches=8", "-S", "train.batch_size=64",
    "-S", "train.attack.steps=2", "-S", "train.val_attack_steps=2",
    "-S", "train.fairat.warmup=0.5", "-S", "train.progress=false",
    "-S", "evaluate.examples_per_class=6", "-S", "evaluate.pgd_steps=5",
    "-S", "evaluate.autoattack=standard", "-S", "evaluate.autoattack_per_class=1",
]


@pytest.mark.slow
def test_run_trains_and_evaluates_with_autoattack(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(open(_repo("params.yaml")).read())
    assert main(["run", *TINY]) == 0
    report = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert set(report["attacks"]) == {"clean", "pgd", "cw", "autoattack", "worst_case"}
    aa = report["attacks"]["autoattack"]
    assert aa["n"] == 10 and set(aa["per_class"]) == {str(d) for d in range(10)}
    assert aa["settings"]["version"] == "standard"
    prov = report["provenance"]
    manifest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    assert prov["data_content_hash"] == manifest["content_hash"]
    assert prov["model_epoch"] in (1, 2) and "validation" in prov["model_selected_by"]
    assert len(prov["model_sha256"]) == 64
    for out in ("models/model.pt", "models/checkpoints/last.pt", "metrics/train.json",
                "plots/train.csv", "plots/eval_classwise.png", "reports/eval_report.md", "reports/model_card.md"):
        assert (tmp_path / out).exists(), out
    history = (tmp_path / "plots/train.csv").read_text().splitlines()
    assert len(history) == 3 and "hard_per_class.0" in history[0]
    assert "autoattack" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("train.attack.eps=-0.1", "train.attack.eps: -0.1 must lie in [0, 1]"),
    ("train.method=madry", "train.method: 'madry' is not one of"),
    ("data.source=mnist", "data.source: 'mnist' is not one of"),
    ("train.epochz=3", "unknown key 'epochz'"),
    ("trainepochs", "expected KEY=VALUE"),
])
def test_bad_params_stop_at_once_with_a_clear_message(tmp_path, capsys, override, message):
    params = tmp_path / "params.yaml"
    params.write_text(open(_repo("params.yaml")).read())
    assert main(["prepare", "--params", str(params), "--out", str(tmp_path / "d"), "-S", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "error" in err
    assert not (tmp_path / "d").exists()


def test_missing_inputs_are_named(tmp_path, capsys):
    assert main(["evaluate", "--params", _repo("params.yaml"), "--data", str(tmp_path / "none"),
                 "--model", str(tmp_path / "model.pt")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_console_help_answers_without_a_params_file():
    out = subprocess.run([sys.executable, "-m", "fairat", "train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--resume" in out and "torchrun" in out


def test_default_params_match_the_documented_defaults():
    params = yaml.safe_load(open(_repo("params.yaml")))
    assert params["data"]["source"] == "digits" and params["train"]["method"] == "fairat"


def _repo(name):
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2] / name)


@pytest.mark.slow
def test_run_with_baseline_trains_pgd_at_beside_the_model_and_cards_the_lift(tmp_path, monkeypatch,
                                                                            capsys, mlflow_sqlite):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store: mlruns/ in tmp_path
    mlflow_sqlite(tmp_path / "mlruns" / "mlflow.db")  # fresh, its schema made once a session
    (tmp_path / "params.yaml").write_text(open(_repo("params.yaml")).read())
    tiny = [*TINY, "-S", "evaluate.autoattack=none", "-S", "gate.attack=clean",
            "-S", "evaluate.cw=false",
            "-S", "gate.min_worst_class=0.0", "-S", "gate.min_average=0.01",
            "-S", "gate.min_clean_class=0.0",
            "-S", "gate.protocol.min_pgd_steps=1", "-S", "gate.protocol.min_cw_steps=null",
            "-S", "gate.protocol.autoattack=none", "-S", "gate.protocol.min_examples_per_class=1"]
    # the machine line names torch's thread count, which fairat picks from the load at each
    # step's start; on a shared test machine the two trainings could pick differently
    monkeypatch.setenv("FAIRAT_THREADS", "1")
    assert main(["run", "--with-baseline", *tiny]) == 0
    baseline = json.loads((tmp_path / "metrics/baseline/eval.json").read_text())
    assert baseline["provenance"]["train_config"]["train"]["method"] == "pgd_at"
    mine = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert mine["provenance"]["train_config"]["train"]["method"] == "fairat"
    comparison = json.loads((tmp_path / "metrics/comparison.json").read_text())
    lift = (mine["attacks"]["clean"]["summary"]["worst"]
            - baseline["attacks"]["clean"]["summary"]["worst"])
    assert comparison["worst_lift"] == pytest.approx(lift)
    assert (tmp_path / "plots/comparison_classwise.png").stat().st_size > 0  # the approver's chart
    card = (tmp_path / "reports/model_card.md").read_text()
    assert "baseline was trained beside this model" in card
    assert f"worst class {100 * lift:+.1f} points" in card
    train = json.loads((tmp_path / "metrics/train.json").read_text())
    assert mine["provenance"]["train_seconds"] == pytest.approx(train["seconds"])
    assert "not hash-checked" not in card  # the cost came from the checked reports
    # both trained here, in one session each: the ratio is a cost, and the card says where
    machine = mine["provenance"]["train_machine"]
    assert machine and machine == baseline["provenance"]["train_machine"]
    assert mine["provenance"]["train_sessions"] == 1 and mine["provenance"]["machine"] == machine
    if comparison.get("time_ratio") is not None:  # dvc's metrics file omits a withheld ratio
        assert comparison["time_ratio"] > 0 and f"Both trained on {machine}" in card
    else:  # the suite's other worker shared the cores: the card says so instead of a ratio
        assert "No time ratio" in card and "under load" in card, card
    assert f"{100 * lift:+.1f} points; average" in capsys.readouterr().out  # compare's line
