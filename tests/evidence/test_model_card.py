"""The model card: every section present and filled from the run; registration policy."""

from __future__ import annotations

import dataclasses

import pytest

from fairat.config import GateConfig, Params, ProtocolConfig, to_dict, with_overrides
from fairat.evidence.gate import decide
from fairat.evidence.model_card import CARD_SECTIONS, render_card, summary_text
from fairat.steps.register import registration_wanted
from reports import attack_entry

SHA = "c" * 64


REPORT = {"class_names": ["cat", "dog"], "examples_per_class": {"cat": 10, "dog": 10}, "eps": 0.1,
          "attacks": {"clean": attack_entry({"cat": 9, "dog": 10}), "pgd": attack_entry({"cat": 5, "dog": 8}),
                      "worst_case": attack_entry({"cat": 4, "dog": 7})},
          "provenance": {"model_sha256": SHA, "split": "test", "git_commit": "abc123",
                         "data_content_hash": "d" * 64, "eval_config": {"examples_per_class": None}},
          "consistency": []}
REPORT["attacks"]["pgd"]["settings"] = {"eps": 0.1, "steps": 20, "step_size": 0.025, "loss": "ce"}
# the gate's protocol for this hand-made report: PGD-20 at eps 0.1 on every example, no CW or AA
PROTOCOL = ProtocolConfig(eps=0.1, min_cw_steps=None, autoattack="none")
MANIFEST = {"source": "digits", "class_names": ["cat", "dog"], "content_hash": "d" * 64,
            "splits": {"train": {"n": 100, "counts": {"cat": 50, "dog": 50}},
                       "val": {"n": 20, "counts": {"cat": 10, "dog": 10}}}}
SUMMARY = {"chosen_epoch": 7, "epochs": 10, "chosen_by": "val_robust_avg"}


def _card(cfg: GateConfig, **kw) -> tuple[str, dict]:
    cfg = dataclasses.replace(cfg, protocol=PROTOCOL)
    decision = decide(REPORT, cfg, SHA)
    params = to_dict(Params(gate=cfg))
    return render_card(params, REPORT, decision, MANIFEST, SUMMARY, n_parameters=1234, **kw), decision


def test_card_has_every_section_filled_from_the_run():
    card, _ = _card(GateConfig(min_worst_class=0.3),
                    baseline={"label": "fairat-digits version 1", "method": "pgd_at",
                              "worst": 0.2, "worst_class": "cat", "average": 0.5},
                    registration={"model_name": "fairat-digits", "version": 2, "run_id": "r1"})
    for section in CARD_SECTIONS:
        assert f"## {section}" in card, section
    assert "# Model card: fairat-digits version 2" in card
    assert "PASSED: worst class cat 40.0%, average 55.0%" in card
    assert "1,234 parameters" in card and "epoch 7 of 10" in card
    assert "train: 100 images (cat 50, dog 50)" in card and MANIFEST["content_hash"] in card
    assert "| cat | 10 | 90.0 | 50.0 | 40.0 |" in card
    assert "worst class +20.0 points, average +5.0 points" in card
    assert "standard error of about 15.5 points" in card  # sqrt(.4 * .6 / 10)
    assert "Every check passed." in card and "abc123" in card


def test_card_of_a_blocked_model_lists_the_reasons_and_says_so_first():
    card, decision = _card(GateConfig(min_worst_class=0.9))
    assert card.splitlines()[2].startswith("**Fairness gate: BLOCKED")
    assert "below min_worst_class" in card and "No baseline found" in card
    text = summary_text(decision, "runs:/r/evidence/model_card.md")
    assert text.startswith("Fairness gate BLOCKED") and "below min_worst_class" in text
    assert text.endswith("Model card: runs:/r/evidence/model_card.md")


def test_informational_gate_says_it_never_makes_a_candidate():
    card, decision = _card(GateConfig(min_worst_class=0.0, informational=True))
    assert not decision["passed"] and "INFORMATIONAL (never a candidate)" in card


@pytest.mark.parametrize("register, env, wanted, why", [
    (None, {}, True, "track.register: null"),
    (None, {"DVC_EXP_BASELINE_REV": "abc"}, False, "dvc exp run"),
    (True, {"DVC_EXP_BASELINE_REV": "abc"}, True, "track.register: true"),
    (False, {}, False, "track.register: false"),
])
def test_dvc_experiments_register_only_when_asked(monkeypatch, register, env, wanted, why):
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    params = with_overrides(Params(), {"track.register": register})
    got, reason = registration_wanted(params)
    assert got is wanted and why in reason


def test_the_cards_method_line_is_the_registrys_description():
    from fairat.engine.methods import registry
    from fairat.evidence.model_card import method_line

    for name, spec in registry().items():
        params = to_dict(with_overrides(Params(), {"train.method": name}))
        card = render_card(params, REPORT, decide(REPORT, GateConfig(), SHA), MANIFEST, SUMMARY)
        line = f"- Training method: `{name}`: {spec.describe(params['train'])}."
        assert line in card, name
    # the default (FairAT) says which selection ran and whose it is
    ours = to_dict(with_overrides(Params(), {"train.fairat.per_class": True,
                                             "train.fairat.class_power": 4}).train)
    assert "class_power" not in method_line(ours)  # in words, not key names
    assert "power 4" in method_line(ours)
    assert "the paper's global selection" in method_line(to_dict(Params().train))
    assert method_line({"method": "madry"}) == "not a method this fairat knows"
    old = to_dict(Params().train)
    old["fairat"] = {"warmup_epochs": 5}  # params of another fairat version
    assert method_line(old) == "described by params this fairat version does not read"
