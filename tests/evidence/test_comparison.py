"""The lift over the PGD-AT baseline trained beside the model: numbers from hand-made reports,
refusal of edited or incomparable evidence, the card's table, the CLI and dvc.yaml wiring."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from fairat.config import Params, TrainConfig, to_dict
from fairat.errors import DataError
from fairat.evidence.comparison import (BASELINE_METHOD, METHOD_FIELDS, compare,
                                        comparison_lines, comparison_metrics, comparison_tags,
                                        verified_report)
from fairat.evidence.gate import write_sidecar
from fairat.evidence.model_card import render_card
from fairat.fronts.cli import main
from fairat.io import sha256_file
from fairat.steps.compare import compare_step
from reports import attack_entry

ROOT = Path(__file__).resolve().parents[2]
N = 10
MACHINE = "cpu: Test CPU; 2 cores usable, 2 torch threads, 1 process"


def _report(method: str, robust: dict[str, int], **train: object) -> dict:
    """A consistent report: clean 10/10, PGD one more robust than AutoAttack (the worst case)."""
    config = {"model": to_dict(Params().model),
              "train": to_dict(Params().train) | {"method": method, **train}}
    return {"attacks": {"clean": attack_entry({c: N for c in robust}),
                        "pgd": attack_entry({c: min(k + 1, N) for c, k in robust.items()}),
                        "autoattack": attack_entry(robust), "worst_case": attack_entry(robust)},
            "class_names": list(robust), "examples_per_class": {c: N for c in robust},
            "eps": 0.1, "consistency": [],
            "provenance": {"split": "test", "data_content_hash": "d" * 16, "model_sha256": "a" * 64,
                           "train_config": config, "train_machine": MACHINE, "train_sessions": 1}}


FAIRAT = _report("fairat", {"7": 9, "8": 7, "9": 6})
PGD_AT = _report("pgd_at", {"7": 9, "8": 6, "9": 4})


def test_lift_is_this_models_weakest_class_minus_the_baselines():
    c = compare(FAIRAT, PGD_AT, "worst_case", seconds=120.0, baseline_seconds=100.0)
    assert c["comparable"] and c["reasons"] == []
    assert c["worst"] == pytest.approx(0.6) and c["baseline_worst"] == pytest.approx(0.4)
    assert c["worst_lift"] == pytest.approx(0.2)
    assert c["average_lift"] == pytest.approx((22 - 19) / 30)
    assert c["baseline_worst_class"] == "9" and c["baseline_weakest_now"] == pytest.approx(0.6)
    assert c["time_ratio"] == pytest.approx(1.2)
    assert set(comparison_metrics(c)) >= {"worst_lift", "average_lift", "time_ratio"}
    tags = comparison_tags(c)
    assert tags["fairat.worst_lift_over_baseline"] == "0.200000"
    assert tags["fairat.baseline_worst"] == "0.400000" and tags["fairat.baseline_comparable"] == "true"


def test_a_worse_model_shows_a_negative_lift():
    c = compare(PGD_AT, _report("pgd_at", {"7": 9, "8": 7, "9": 6}), "worst_case")
    assert c["worst_lift"] == pytest.approx(-0.2) and c["time_ratio"] is None


def _edited(report: dict, edit) -> dict:
    out = copy.deepcopy(report)
    edit(out)
    return out


@pytest.mark.parametrize("baseline, reason_part", [
    (_edited(PGD_AT, lambda r: r["provenance"].update(data_content_hash="e" * 16)), "other data"),
    (_edited(PGD_AT, lambda r: r["provenance"].update(split="val")), "other split"),
    (_edited(PGD_AT, lambda r: r.update(eps=0.05)), "another radius"),
    (_report("trades", {"7": 9, "8": 6, "9": 4}), "trained with 'trades'"),
    (_report("pgd_at", {"7": 9, "8": 6, "9": 4}, epochs=3), "train.epochs differ"),
    (_report("pgd_at", {"7": 9, "8": 6, "9": 4}, seed=1, lr=0.1), "train.lr, train.seed differ"),
    (_edited(PGD_AT, lambda r: r["provenance"]["train_config"]["model"].update(width=32)),
     "another architecture"),
    (_edited(PGD_AT, lambda r: r["attacks"].pop("worst_case")), "no 'worst_case' result"),
])
def test_an_incomparable_baseline_gives_reasons_and_no_lift(baseline, reason_part):
    c = compare(FAIRAT, baseline, "worst_case", 10.0, 10.0)
    assert not c["comparable"] and any(reason_part in r for r in c["reasons"]), c["reasons"]
    assert "worst_lift" not in c and "worst_lift" not in comparison_metrics(c)
    assert "fairat.worst_lift_over_baseline" not in comparison_tags(c)


def test_the_methods_own_knobs_do_not_make_a_baseline_incomparable():
    mine = _report("fairat", {"7": 9, "8": 7, "9": 6}, trades_beta=3.0,
                   fairat=to_dict(Params().train.fairat) | {"hard_ratio": 0.5})
    assert compare(mine, PGD_AT, "worst_case")["comparable"]


def test_baseline_stage_reads_every_training_param_but_the_methods_own():
    """dvc.yaml's baseline_train must re-run when any param PGD-AT reads changes, and only then."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["baseline_train"]
    listed = {p.split(".", 1)[1] for p in stage["params"] if p.startswith("train.")}
    wanted = {f.name for f in fields(TrainConfig)} - set(METHOD_FIELDS)
    assert listed == wanted
    assert f"-S train.method={BASELINE_METHOD}" in stage["cmd"]


def _write(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    write_sidecar(path)
    return path


@pytest.mark.parametrize("edit, note_part", [
    (lambda r: r["provenance"].update(train_machine="cuda: NVIDIA H100 80GB HBM3; 16 cores usable, "
                                      "16 torch threads, 1 process"), "different machines"),
    (lambda r: r["provenance"].update(train_machine=None, train_sessions=2), "2 sessions"),
    (lambda r: r["provenance"].pop("train_machine"), "does not record the machine"),
    # one machine, but other work shared its cores while the baseline trained
    (lambda r: r["provenance"].update(train_max_load=7.3, train_cores=2), "under load"),
])
def test_times_from_different_or_unknown_machines_give_no_cost_ratio(edit, note_part):
    """A baseline pod on another node (or a run resumed elsewhere) must not put a hardware ratio
    on the card as the method's cost; the lift itself is still comparable."""
    c = compare(FAIRAT, _edited(PGD_AT, edit), "worst_case", 120.0, 100.0)
    assert c["comparable"] and c["worst_lift"] == pytest.approx(0.2)
    assert c["time_ratio"] is None and note_part in c["cost_note"], c["cost_note"]
    assert "time_ratio" not in comparison_metrics(c)
    tags = comparison_tags(c)
    assert "fairat.time_ratio_over_baseline" not in tags
    assert note_part in tags["fairat.time_ratio_note"]
    assert any("no cost ratio" in line and note_part in line for line in comparison_lines(c))
    card = render_card(to_dict(Params()), FAIRAT, {"passed": True, "attack": "worst_case",
                       "reasons": [], "measured": {}}, {"source": "digits"}, comparison=c)
    section = card.split("## Comparison with a baseline")[1].split("## ")[0]
    assert "No time ratio:" in section and note_part in section and "1.20x" not in section


def test_an_edited_baseline_report_is_refused(tmp_path):
    path = _write(tmp_path / "baseline" / "eval.json", PGD_AT)
    report, sha = verified_report(path, "the baseline's")
    assert report["class_names"] == ["7", "8", "9"] and sha == sha256_file(path)
    faked = _edited(PGD_AT, lambda r: r.update(eps=0.1000001))
    path.write_text(json.dumps(faked))  # sidecar now names other bytes
    with pytest.raises(DataError, match="baseline's evaluation report.*not the file the evaluate"):
        verified_report(path, "the baseline's")
    (tmp_path / "baseline" / "eval.json.sha256").unlink()
    with pytest.raises(DataError, match="no sha256 record"):
        verified_report(path, "the baseline's")


def test_a_malformed_report_is_refused(tmp_path):
    broken = _edited(PGD_AT, lambda r: r["attacks"]["worst_case"]["per_class"].update({"9": 0.9}))
    with pytest.raises(DataError, match="baseline"):
        verified_report(_write(tmp_path / "eval.json", broken), "the baseline's")


def test_compare_command_writes_the_metric_and_refuses_bad_evidence(tmp_path, capsys):
    mine, base = _write(tmp_path / "eval.json", FAIRAT), _write(tmp_path / "b" / "eval.json", PGD_AT)
    (tmp_path / "train.json").write_text(json.dumps({"seconds": 30.0}))
    (tmp_path / "b" / "train.json").write_text(json.dumps({"seconds": 20.0}))
    out = tmp_path / "comparison.json"
    argv = ["compare", "--params", str(ROOT / "params.yaml"), "-S", "track.enabled=false",
            "--report", str(mine), "--metrics", str(tmp_path / "train.json"),
            "--baseline-report", str(base), "--baseline-metrics", str(tmp_path / "b" / "train.json"),
            "--comparison", str(out)]
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert written["worst_lift"] == pytest.approx(0.2) and written["time_ratio"] == pytest.approx(1.5)
    printed = capsys.readouterr().out
    assert "+20.0 points" in printed and "not hash-checked" in printed  # reports carry no time
    base.write_text(base.read_text().replace('"eps": 0.1', '"eps": 0.2'))
    assert main(argv) == 2
    assert "the baseline's evaluation report" in capsys.readouterr().err
    assert json.loads(out.read_text()) == written  # nothing half-written on refusal


def test_the_cost_comes_from_the_checked_reports_not_an_edited_summary(tmp_path, capsys):
    """The model file records its training time and evaluate copies it into the hash-checked
    report: a metrics file edited to make the method look cheap changes nothing."""
    timed = {name: _edited(report, lambda r, t=t: r["provenance"].update(train_seconds=t))
             for name, report, t in (("mine", FAIRAT, 36.0), ("base", PGD_AT, 30.0))}
    mine = _write(tmp_path / "eval.json", timed["mine"])
    base = _write(tmp_path / "b" / "eval.json", timed["base"])
    (tmp_path / "train.json").write_text(json.dumps({"seconds": 1.0}))  # "edited"
    c = compare_step(Params(), mine, base, tmp_path / "c.json", tmp_path / "train.json")
    assert c["time_ratio"] == pytest.approx(1.2) and c["seconds_checked"]
    assert "1.20x" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["time_ratio"] == pytest.approx(1.2)


def test_card_shows_the_lift_next_to_the_cost_or_why_not(tmp_path):
    params = to_dict(Params())
    decision = {"passed": True, "attack": "worst_case", "reasons": [],
                "measured": {"worst": 0.6, "worst_class": "9", "average": 0.73, "gap": 0.3}}
    c = compare(FAIRAT, PGD_AT, "worst_case", 120.0, 100.0) | {"baseline_run_id": "r" * 8}
    card = render_card(params, FAIRAT, decision, {"source": "digits"}, comparison=c)
    section = card.split("## Comparison with a baseline")[1].split("## ")[0]
    assert "| baseline | pgd_at | 40.0% (9)" in section and "60.0%" in section
    assert "worst class +20.0 points" in section and "1.20x" in section and "rrrrrrrr" in section
    assert f"Both trained on {MACHINE}" in section
    assert f"| trained on | `{MACHINE}` |" in card
    bad = compare(FAIRAT, _report("pgd_at", {"7": 9, "8": 6, "9": 4}, epochs=3), "worst_case")
    card = render_card(params, FAIRAT, decision, {"source": "digits"}, comparison=bad)
    assert "cannot be compared" in card and "train.epochs differ" in card
    assert "points" not in card.split("## Comparison with a baseline")[1].split("## ")[0]


def test_compare_step_without_a_training_run_only_writes_the_metric(tmp_path):
    mine, base = _write(tmp_path / "eval.json", FAIRAT), _write(tmp_path / "b.json", PGD_AT)
    c = compare_step(Params(), mine, base, tmp_path / "c.json")
    assert c["comparable"] and c["baseline_run_id"] is None and (tmp_path / "c.json").is_file()


def test_a_load_within_the_cores_keeps_the_cost_ratio():
    """A training that had its cores (load up to cores + LOAD_MARGIN) keeps its ratio; an old
    report without the load fields keeps it too (nothing says it was shared)."""
    quiet = _edited(PGD_AT, lambda r: r["provenance"].update(train_max_load=2.4, train_cores=2))
    assert compare(FAIRAT, quiet, "worst_case", 120.0, 100.0)["time_ratio"] == pytest.approx(1.2)
    assert compare(FAIRAT, PGD_AT, "worst_case", 120.0, 100.0)["time_ratio"] == pytest.approx(1.2)


def test_the_training_record_keeps_the_highest_load_and_fewest_cores():
    from fairat.engine.schedule import training_record

    sessions = [{"machine": "m", "seconds": 1.0, "examples_trained": 10, "max_load": 1.2,
                 "cores": 2},
                {"machine": "m", "seconds": 2.0, "examples_trained": 20, "max_load": 3.5,
                 "cores": 2}]
    record = training_record(sessions)
    assert record["max_load"] == 3.5 and record["cores"] == 2 and record["seconds"] == 3.0
    old = [{"machine": "m", "seconds": 1.0, "examples_trained": 10}]  # before loads were recorded
    assert training_record(old)["max_load"] is None and training_record(old)["cores"] is None
