"""Fairness gate: the pure decision table-tested, and the step's fail-closed file handling."""

from __future__ import annotations

import copy
import json

import pytest

from fairat.config import ConfigError, GateConfig, Params
from fairat.evidence.gate import decide, gate_metrics
from fairat.io import sha256_file
from fairat.steps.gate import gate_step

SHA = "a" * 64


def _report(per_class: dict[str, float], attack: str = "worst_case") -> dict:
    values = list(per_class.values())
    worst = min(per_class, key=per_class.get)
    best = max(per_class, key=per_class.get)
    summary = {"average": sum(values) / len(values), "worst": per_class[worst],
               "worst_class": worst, "best": per_class[best], "best_class": best,
               "gap": per_class[best] - per_class[worst], "std": 0.0}
    return {"attacks": {attack: {"per_class": per_class, "summary": summary}},
            "provenance": {"model_sha256": SHA, "split": "test"}, "consistency": []}


GOOD = _report({"cat": 0.40, "dog": 0.50, "car": 0.70})


def _broken(mutate):
    report = copy.deepcopy(GOOD)
    mutate(report)
    return report


@pytest.mark.parametrize("cfg, report, passed, reason_part", [
    (GateConfig(min_worst_class=0.40), GOOD, True, None),
    (GateConfig(min_worst_class=0.41), GOOD, False, "below min_worst_class"),
    (GateConfig(min_worst_class=0.1, min_average=0.6), GOOD, False, "below min_average"),
    (GateConfig(min_worst_class=0.1, min_average=0.5), GOOD, True, None),
    (GateConfig(min_worst_class=0.1, max_gap=0.2), GOOD, False, "above max_gap"),
    (GateConfig(min_worst_class=0.1, max_gap=0.3), GOOD, True, None),
    (GateConfig(attack="autoattack"), GOOD, False, "has no 'autoattack' results"),
    (GateConfig(split="val"), GOOD, False, "computed on the 'test' split"),
    (GateConfig(), None, False, "missing"),
    (GateConfig(), [1, 2], False, "not a JSON object"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"]["summary"].pop("worst")),
     False, "lacks 'worst'"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"]["summary"].update(average=float("nan"))),
     False, "not a fraction"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"]["per_class"].update(cat=1.5)),
     False, "not all fractions"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"]["summary"].update(worst=0.9)),
     False, "disagrees with its per-class minimum"),
    (GateConfig(), _broken(lambda r: r["provenance"].update(model_sha256="b" * 64)),
     False, "stale evaluation"),
    (GateConfig(), _broken(lambda r: r.pop("provenance")), False, "no provenance"),
    (GateConfig(), _broken(lambda r: r.pop("consistency")), False, "consistency"),
    (GateConfig(), _broken(lambda r: r["consistency"].append(
        {"severity": "error", "message": "AutoAttack above PGD"})), False, "AutoAttack above PGD"),
])
def test_gate_decision_table(cfg, report, passed, reason_part):
    decision = decide(report, cfg, SHA)
    assert decision["passed"] is passed
    if passed:
        assert decision["reasons"] == []
        assert decision["measured"]["worst_class"] == "cat"
    else:
        assert any(reason_part in r for r in decision["reasons"]), decision["reasons"]


def test_gate_lists_every_failed_threshold_at_once():
    cfg = GateConfig(min_worst_class=0.9, min_average=0.9, max_gap=0.01)
    reasons = decide(GOOD, cfg, SHA)["reasons"]
    assert len(reasons) == 3


def test_consistency_warning_does_not_block():
    report = _broken(lambda r: r["consistency"].append({"severity": "warning", "message": "x"}))
    assert decide(report, GateConfig(), SHA)["passed"]


def test_gate_metrics_are_flat_numbers():
    metrics = gate_metrics(decide(GOOD, GateConfig(min_worst_class=0.4), SHA))
    assert metrics == pytest.approx({"passed": 1.0, "worst_case_average": 1.6 / 3,
                                     "worst_case_worst": 0.4, "worst_case_gap": 0.3})
    assert gate_metrics(decide(None, GateConfig(), SHA)) == {"passed": 0.0}


@pytest.mark.parametrize("key, value", [("min_worst_class", 1.5), ("min_average", -0.1),
                                        ("max_gap", 2.0)])
def test_gate_thresholds_are_validated(key, value):
    with pytest.raises(ConfigError, match=key):
        GateConfig(**{key: value})


def _model_file(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    return model


def test_gate_step_passes_a_current_report_and_records_hashes(tmp_path):
    model = _model_file(tmp_path)
    report = _broken(lambda r: r["provenance"].update(model_sha256=sha256_file(model)))
    (tmp_path / "eval.json").write_text(json.dumps(report))
    params = Params(gate=GateConfig(min_worst_class=0.3))
    decision = gate_step(params, tmp_path / "eval.json", model, tmp_path / "out/gate.json")
    written = json.loads((tmp_path / "out/gate.json").read_text())
    assert decision["passed"] and written["passed"]
    assert written["model_sha256"] == sha256_file(model)
    assert written["report_sha256"] == sha256_file(tmp_path / "eval.json")


@pytest.mark.parametrize("report_text, reason_part", [
    (None, "is missing"),
    ("{not json", "not valid JSON"),
    (json.dumps(GOOD), "stale evaluation"),  # GOOD names another model's hash
])
def test_gate_step_fails_closed(tmp_path, report_text, reason_part):
    model = _model_file(tmp_path)
    if report_text is not None:
        (tmp_path / "eval.json").write_text(report_text)
    decision = gate_step(Params(), tmp_path / "eval.json", model, tmp_path / "gate.json")
    written = json.loads((tmp_path / "gate.json").read_text())
    assert not decision["passed"] and not written["passed"]
    assert any(reason_part in r for r in written["reasons"]), written["reasons"]


def test_gate_step_blocks_when_the_model_is_missing(tmp_path):
    report = _broken(lambda r: None)
    (tmp_path / "eval.json").write_text(json.dumps(report))
    decision = gate_step(Params(), tmp_path / "eval.json", tmp_path / "nope.pt",
                         tmp_path / "gate.json")
    assert not decision["passed"]
    assert "model file" in decision["reasons"][0]
