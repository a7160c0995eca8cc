"""The card's study reference: quoted only for exactly this setting, noise said beside the lift."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fairat.config import Params, to_dict, with_overrides
from fairat.evidence.comparison import compare
from fairat.evidence.model_card import render_card
from fairat.evidence.study import difference_noise, study_reference
from test_comparison import FAIRAT, PGD_AT

INTERVAL = {"worst": {"mean": 0.054, "low": 0.019, "high": 0.089, "n": 10, "sd": 0.05},
            "average": {"mean": 0.024, "low": 0.017, "high": 0.031, "n": 10, "sd": 0.01},
            "worst_simultaneous": {"low": 0.001, "high": 0.107}}


def _study(folder: Path, params: dict, source: str = "digits", tag: str = "fairat-global") -> Path:
    """A study folder as `aggregate` leaves it: the summary and one cell record per seed."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in (3, 4):
        train = params["train"] | {"seed": seed, "progress": False}
        cell = {"method": train["method"], "seed": seed,
                "provenance": {"data_source": source,
                               "train_config": {"model": params["model"], "train": train}}}
        (folder / f"{tag}-seed{seed}.json").write_text(json.dumps(cell))
    summary = {"split": "test", "paired": {"attack": "autoattack", "baseline": "pgd_at",
                                           "methods": {tag: {"seeds": [3, 4], **INTERVAL}}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "summary.json"


def test_the_study_is_quoted_only_for_exactly_the_setting_it_trained(tmp_path):
    params = to_dict(Params())
    path = _study(tmp_path / "study", params)
    found = study_reference(path, params, "digits")
    assert found["found"] and found["tag"] == "fairat-global" and found["n"] == 10
    assert found["worst"]["low"] == pytest.approx(0.019)
    # another method's section and the run's own seed are not the setting
    other = to_dict(with_overrides(Params(), {"train.wat.eta": 0.5, "train.seed": 9}))
    assert study_reference(path, other, "digits")["found"]
    for change, named in (({"train.fairat.per_class": True}, "train.fairat"),
                          ({"train.epochs": 12}, "train.epochs"),
                          ({"model.width": 32}, "model.width")):
        missed = study_reference(path, to_dict(with_overrides(Params(), change)), "digits")
        assert not missed["found"] and named in missed["note"], change
    missed = study_reference(path, params, "cifar10")
    assert not missed["found"] and "data source" in missed["note"]


@pytest.mark.parametrize("content", [None, "{not json", '{"paired": 3}', '{"split": "test"}'])
def test_a_missing_or_malformed_study_is_named_not_quoted(tmp_path, content):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    found = study_reference(path, to_dict(Params()), "digits")
    assert not found["found"] and "not readable" in found["note"]
    assert not study_reference("", to_dict(Params()), "digits")["found"]


def test_a_study_without_its_cell_records_is_not_quoted(tmp_path):
    path = _study(tmp_path / "study", to_dict(Params()))
    for cell in path.parent.glob("fairat-global-seed*.json"):
        cell.unlink()
    found = study_reference(path, to_dict(Params()), "digits")
    assert not found["found"] and "no readable cell records" in found["note"]


def test_difference_noise_is_the_binomial_standard_error_of_a_difference():
    assert difference_noise(0.6, 0.4, 10, 10) == pytest.approx(math.sqrt(0.024 + 0.024))
    assert difference_noise(1.0, 1.0, 36, 36) == 0.0
    assert math.isnan(difference_noise(0.5, 0.5, 0, 10))


def test_the_card_puts_one_runs_lift_beside_its_noise_and_the_studys_interval(tmp_path):
    params = to_dict(Params())
    decision = {"passed": True, "attack": "worst_case", "reasons": [],
                "measured": {"worst": 0.6, "worst_class": "9", "average": 0.73, "gap": 0.3}}
    c = compare(FAIRAT, PGD_AT, "worst_case", 120.0, 100.0)
    study = study_reference(_study(tmp_path / "study", params), params, "digits")
    card = render_card(params, FAIRAT, decision, {"source": "digits"}, comparison=c, study=study)
    section = card.split("## Comparison with a baseline")[1].split("## ")[0]
    # +20 points on 10 images per class: sqrt(.6*.4/10 + .4*.6/10) = 21.9 points, within noise
    assert "standard error of about 21.9 points" in section
    assert "+20.0 points is within one run's noise" in section
    assert "10 seeds" in section and "worst class +5.4 points, 95% interval [+1.9, +8.9]" in section
    assert "[+0.1, +10.7] corrected" in section and "average +2.4 [+1.7, +3.1]" in section
    # a lift beyond two standard errors is said to be so; a study of another setting is not quoted
    strong = compare(_big(FAIRAT, 100), _big(PGD_AT, 100), "worst_case")
    other = study_reference(tmp_path / "study" / "summary.json",
                            to_dict(with_overrides(Params(), {"train.epochs": 3})), "digits")
    card = render_card(params, _big(FAIRAT, 100), decision, {"source": "digits"},
                       comparison=strong, study=other)
    section = card.split("## Comparison with a baseline")[1].split("## ")[0]
    assert "more than two standard errors" in section
    assert "No multi-seed study to quote" in section and "train.epochs" in section
    assert "95% interval" not in section


def _big(report: dict, n: int) -> dict:
    """The same accuracies on ``n`` images per class instead of 10."""
    out = json.loads(json.dumps(report))
    for entry in out["attacks"].values():
        entry["counts"] = {k: {c: v * n // 10 for c, v in d.items()}
                           for k, d in entry["counts"].items()}
    out["examples_per_class"] = {c: n for c in out["examples_per_class"]}
    return out


def test_the_default_settings_study_is_committed_and_a_dep_of_register():
    """params.yaml names the contest whose validation chose its FairAT setting; the card can quote
    it only while a method of that study trained exactly the default, and DVC re-writes the card
    when the study changes."""
    import yaml

    from fairat.config import load_params

    root = Path(__file__).resolve().parents[2]
    params = to_dict(load_params(root / "params.yaml"))
    found = study_reference(root / params["track"]["study"], params,
                            params["data"]["source"])
    assert found["found"], found
    assert found["tag"].startswith(params["train"]["method"]) and found["n"] >= 10
    register = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["register"]
    assert str(Path(params["track"]["study"]).parent) in register["deps"]
