"""Fairness gate: the pure decision table-tested, and the step's fail-closed file handling."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fairat.config import ConfigError, GateConfig, Params
from fairat.engine.metrics import summarize
from fairat.evidence.gate import decide, gate_metrics, write_sidecar
from fairat.io import sha256_file
from fairat.steps.gate import gate_step
from reports import attack_entry

SHA = "a" * 64


N = 10  # examples per class in the hand-made reports


def _report(worst: dict[str, int], attack: str = "worst_case") -> dict:
    """A consistent report: clean 9/10 per class, PGD one more robust example than the worst case."""
    attacks = {"clean": attack_entry({c: 9 for c in worst}),
               "pgd": attack_entry({c: k + 1 for c, k in worst.items()}),
               attack: attack_entry(worst)}
    return {"attacks": attacks, "class_names": list(worst),
            "examples_per_class": {c: N for c in worst},
            "provenance": {"model_sha256": SHA, "split": "test"}, "consistency": []}


GOOD = _report({"cat": 4, "dog": 5, "car": 7})


def _raise(report: dict, attack: str, cls: str, correct: int, counts_too: bool) -> None:
    """Raise one class's accuracy of ``attack`` (and its summary), optionally its counts too."""
    entry = report["attacks"][attack]
    entry["per_class"][cls] = correct / N
    entry["summary"] = summarize(entry["per_class"])
    if counts_too:
        entry["counts"]["correct"][cls] = correct


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
    # a hand-edited report: per-class numbers raised with their summary, counts left behind
    (GateConfig(), _broken(lambda r: _raise(r, "worst_case", "cat", 9, counts_too=False)),
     False, "is not its counts"),
    # ... or counts raised too, above what PGD measured for that class
    (GateConfig(), _broken(lambda r: _raise(r, "worst_case", "cat", 8, counts_too=True)),
     False, "exceed 'pgd'"),
    # ... or a robust attack above clean accuracy
    (GateConfig(), _broken(lambda r: _raise(r, "pgd", "car", 10, counts_too=True)),
     False, "exceed 'clean'"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"]["summary"].update(average=0.9)),
     False, "summary average"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"]["summary"].update(
        worst_class="dog")), False, "summary worst_class"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"].pop("counts")), False,
     "no valid per-class counts"),
    (GateConfig(), _broken(lambda r: r["attacks"]["worst_case"]["counts"]["correct"].update(
        cat=11)), False, "no valid per-class counts"),
    (GateConfig(), _broken(lambda r: r["attacks"].pop("clean")), False, "no clean accuracy"),
    (GateConfig(), _broken(lambda r: r.update(examples_per_class={"cat": 1, "dog": 1, "car": 1})),
     False, "examples_per_class"),
    # a model no better than chance on a class (clean 3/10 with 3 classes; robust 0/10 there)
    (GateConfig(min_worst_class=0.0, min_average=0.1),
     _report({"cat": 0, "dog": 5, "car": 7}) | {"attacks": {
         **_report({"cat": 0, "dog": 5, "car": 7})["attacks"],
         "clean": attack_entry({"cat": 3, "dog": 9, "car": 9})}}, False, "above chance"),
    (GateConfig(min_clean_class=0.95), GOOD, False, "at least min_clean_class 0.950"),
    # thresholds that judge nothing, and the informational gate
    (GateConfig(min_worst_class=0.0), GOOD, False, "thresholds are all zero"),
    (GateConfig(min_worst_class=0.0, max_gap=1.0), GOOD, False, "thresholds are all zero"),
    (GateConfig(min_worst_class=0.0, informational=True), GOOD, False, "informational"),
    (GateConfig(min_worst_class=0.3, informational=True), GOOD, False, "informational"),
    (GateConfig(min_worst_class=0.0, max_gap=0.5), GOOD, True, None),
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
    write_sidecar(tmp_path / "eval.json")  # as the evaluate step does
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


def _raised(report: dict) -> dict:
    """The same report with cat's worst case raised consistently (numbers, summary, counts)."""
    edited = copy.deepcopy(report)
    _raise(edited, "worst_case", "cat", 5, counts_too=True)
    sha = edited["provenance"]["model_sha256"]
    assert decide(edited, GateConfig(min_worst_class=0.3), sha)["passed"]  # consistent on its own
    return edited


def _current_report(tmp_path, model) -> dict:
    report = _broken(lambda r: r["provenance"].update(model_sha256=sha256_file(model)))
    (tmp_path / "eval.json").write_text(json.dumps(report))
    write_sidecar(tmp_path / "eval.json")
    return report


@pytest.mark.parametrize("tamper, reason_part", [
    # edited after evaluate wrote it (a consistent edit: numbers, summary and counts together)
    (lambda path, report: path.write_text(json.dumps(_raised(report))),
     "not the file the evaluate step wrote"),
    # the report of another evaluate run of the same model, with that run's own numbers
    (lambda path, report: path.write_text(json.dumps(report | {"seconds": {"pgd": 1.0}})),
     "not the file the evaluate step wrote"),
    # no record from evaluate at all
    (lambda path, report: Path(f"{path}.sha256").unlink(), "no sha256 record"),
])
def test_gate_step_blocks_a_report_evaluate_did_not_write(tmp_path, tamper, reason_part):
    model = _model_file(tmp_path)
    report = _current_report(tmp_path, model)
    params = Params(gate=GateConfig(min_worst_class=0.3))
    assert gate_step(params, tmp_path / "eval.json", model, tmp_path / "gate.json")["passed"]
    tamper(tmp_path / "eval.json", report)
    decision = gate_step(params, tmp_path / "eval.json", model, tmp_path / "gate.json")
    assert not decision["passed"]
    assert any(reason_part in r for r in decision["reasons"]), decision["reasons"]


def test_gate_step_blocks_when_the_model_is_missing(tmp_path):
    report = _broken(lambda r: None)
    (tmp_path / "eval.json").write_text(json.dumps(report))
    decision = gate_step(Params(), tmp_path / "eval.json", tmp_path / "nope.pt",
                         tmp_path / "gate.json")
    assert not decision["passed"]
    assert "model file" in decision["reasons"][0]


def test_gate_judges_the_bytes_whose_hash_it_records(tmp_path, monkeypatch):
    """A report swapped for a better one just while the gate reads it (then swapped back, so the
    file on disk matches evaluate's sidecar) must not pass on the swapped-in numbers."""
    model = _model_file(tmp_path)
    genuine = _current_report(tmp_path, model)  # cat 4/10: below the 0.45 threshold
    params = Params(gate=GateConfig(min_worst_class=0.45))
    assert not gate_step(params, tmp_path / "eval.json", model, tmp_path / "gate.json")["passed"]
    fake, path = json.dumps(_raised(genuine)), tmp_path / "eval.json"  # cat 5/10: would pass
    served = []
    real_bytes, real_text = Path.read_bytes, Path.read_text

    def swapped_once(read, encode):
        def reader(self, *args, **kwargs):
            if self == path and not served:
                served.append(True)
                return encode(fake)
            return read(self, *args, **kwargs)
        return reader

    monkeypatch.setattr(Path, "read_bytes", swapped_once(real_bytes, str.encode))
    monkeypatch.setattr(Path, "read_text", swapped_once(real_text, lambda text: text))
    decision = gate_step(params, path, model, tmp_path / "gate.json")
    assert served, "the gate never read the report"
    assert not decision["passed"]
    assert any("not the file the evaluate step wrote" in r for r in decision["reasons"]), \
        decision["reasons"]
