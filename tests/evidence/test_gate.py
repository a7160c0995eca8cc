"""Fairness gate: the pure decision table-tested, and the step's fail-closed file handling."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fairat.config import ConfigError, GateConfig, Params, ProtocolConfig, from_dict
from fairat.engine.metrics import summarize
from fairat.evidence.gate import decide, gate_metrics, write_sidecar
from fairat.io import sha256_file
from fairat.steps.gate import gate_step
from reports import attack_entry

SHA = "a" * 64


N = 10  # examples per class in the hand-made reports


EPS = 0.1
PGD20 = {"eps": EPS, "steps": 20, "step_size": 0.025, "loss": "ce", "restarts": 1}
STANDARD_AA = {"version": "standard", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
               "norm": "Linf", "eps": EPS, "examples_per_class": None}


def _report(worst: dict[str, int], attack: str = "worst_case") -> dict:
    """A consistent report made with the default protocol (PGD-20, CW-20, standard AutoAttack on
    every example at the training radius): clean 9/10 per class, PGD and CW one more robust
    example than the worst case, AutoAttack equal to it."""
    attacks = {"clean": attack_entry({c: 9 for c in worst}),
               "pgd": attack_entry({c: k + 1 for c, k in worst.items()}),
               "cw": attack_entry({c: k + 1 for c, k in worst.items()}),
               "autoattack": attack_entry(worst), attack: attack_entry(worst)}
    attacks["pgd"]["settings"] = dict(PGD20)
    attacks["cw"]["settings"] = dict(PGD20, loss="cw")
    attacks["autoattack"]["settings"] = dict(STANDARD_AA)
    return {"attacks": attacks, "class_names": list(worst), "eps": EPS,
            "examples_per_class": {c: N for c in worst},
            "provenance": {"model_sha256": SHA, "split": "test",
                           "eval_config": {"examples_per_class": None},
                           "train_config": {"train": {"attack": {"eps": EPS}}}},
            "consistency": []}


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
    (GateConfig(attack="autoattack", protocol=ProtocolConfig(autoattack="none")),
     _broken(lambda r: r["attacks"].pop("autoattack")), False, "has no 'autoattack' results"),
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
    (GateConfig(min_clean_class=0.95), GOOD, False, "at least min_clean_class 95.0%"),
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
    for attack in ("autoattack", "worst_case"):
        _raise(edited, attack, "cat", 5, counts_too=True)
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


# ----------------------------------------------------------------------------- the protocol

def _weakened(**changes) -> dict:
    report = copy.deepcopy(GOOD)
    for key, value in changes.items():
        key(report, value)
    return report


def test_the_weak_evaluation_from_issue_29_is_blocked(digits, trained_model):
    """`evaluate -S evaluate.eps=0.001 -S evaluate.require_train_eps=false -S evaluate.pgd_steps=1
    -S evaluate.cw=false -S evaluate.autoattack=none`, run for real: a genuine report whose
    numbers would pass, blocked by the default policy for every way it is weaker."""
    from fairat.config import EvalConfig
    from fairat.engine.evaluation import evaluate

    weak = EvalConfig(eps=0.001, require_train_eps=False, pgd_steps=1, cw=False,
                      autoattack="none", examples_per_class=20, progress=False, device="cpu")
    report = evaluate(trained_model, digits.test.images, digits.test.labels,
                      digits.test.class_names, weak, "cpu",
                      {"model_sha256": SHA, "split": "test",
                       "train_config": {"train": {"attack": {"eps": 0.1}}}})
    report = json.loads(json.dumps(report))  # as the gate reads it from the file
    lenient = GateConfig(attack="clean", min_worst_class=0.0, min_average=0.01,
                         min_clean_class=0.0)
    decision = decide(report, lenient, SHA)
    reasons = "\n".join(decision["reasons"])
    assert not decision["passed"]
    for part in ("evaluated at L-inf eps 0.001; the gate accepts only eps 0.1",
                 "PGD ran 1 steps; the gate needs at least 20", "no CW result",
                 "no AutoAttack result", "evaluated 20 examples per class; the gate needs every"):
        assert part in reasons, reasons
    # the same report passes only a policy that names exactly this evaluation
    accepting = ProtocolConfig(eps=0.001, min_pgd_steps=1, min_cw_steps=None, autoattack="none",
                               min_examples_per_class=20)
    allowed = decide(report, GateConfig(attack="clean", min_worst_class=0.0, min_average=0.01,
                                        min_clean_class=0.0, protocol=accepting), SHA)
    assert allowed["passed"], allowed["reasons"]


def _set_settings(attack: str, **values):
    return lambda r: r["attacks"][attack]["settings"].update(values)


@pytest.mark.parametrize("mutate, reason_part", [
    (_set_settings("pgd", steps=10), "PGD ran 10 steps"),
    (_set_settings("cw", steps=5), "CW ran 5 steps"),
    (_set_settings("cw", loss="ce"), "cw used loss 'ce'"),
    (_set_settings("pgd", eps=0.2), "pgd ran at eps 0.2"),
    (_set_settings("autoattack", version="custom", attacks=["apgd-ce"]), "standard suite"),
    (_set_settings("autoattack", norm="L2"), "norm 'L2'"),
    (_set_settings("autoattack", autoattack_impl="homemade"), "'homemade' is not one of"),
    (_set_settings("autoattack", examples_per_class=5), "AutoAttack ran on 5 examples"),
    (lambda r: r.update(eps=0.05), "eps 0.05; the gate accepts only eps 0.1"),
    (lambda r: r["provenance"].pop("train_config"), "cannot tell which radius"),
    (lambda r: r["provenance"].pop("eval_config"), "records no evaluation settings"),
])
def test_a_weaker_protocol_is_blocked_with_its_reason(mutate, reason_part):
    decision = decide(_broken(mutate), GateConfig(min_worst_class=0.3), SHA)
    assert not decision["passed"]
    assert any(reason_part in r for r in decision["reasons"]), decision["reasons"]


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_either_autoattack_implementation_is_accepted(impl):
    report = _broken(_set_settings("autoattack", autoattack_impl=impl))
    assert decide(report, GateConfig(min_worst_class=0.3), SHA)["passed"]


def test_a_stated_minimum_per_class_and_an_explicit_radius():
    subset = _broken(lambda r: r["provenance"]["eval_config"].update(examples_per_class=10))
    assert not decide(subset, GateConfig(min_worst_class=0.3), SHA)["passed"]
    ten = GateConfig(min_worst_class=0.3, protocol=ProtocolConfig(min_examples_per_class=10))
    assert decide(subset, ten, SHA)["passed"]
    eleven = GateConfig(min_worst_class=0.3, protocol=ProtocolConfig(min_examples_per_class=11))
    assert "too few examples evaluated per class" in " ".join(decide(subset, eleven,
                                                                     SHA)["reasons"])
    other = GateConfig(min_worst_class=0.3, protocol=ProtocolConfig(eps=8 / 255))
    assert "the gate accepts only eps 0.0313725" in " ".join(decide(GOOD, other, SHA)["reasons"])
    with pytest.raises(ConfigError, match="gate.protocol.min_pgd_steps"):
        from_dict(Params, {"gate": {"protocol": {"min_pgd_steps": 0}}})
