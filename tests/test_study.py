"""The robust-fairness study script: one tiny real cell on digits, then the aggregate over it."""

import importlib.util
import json
from pathlib import Path

import pytest

from fairat.config import load_params, with_overrides

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("robust_fairness", ROOT / "benchmarks/robust_fairness.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

TINY = {"data.val_per_class": 5, "model.width": 8, "train.epochs": 2, "train.max_batches": 3,
        "train.attack.steps": 1, "train.val_attack_steps": 1, "train.fairat.warmup_epochs": 1,
        "train.progress": False, "evaluate.examples_per_class": 4, "evaluate.pgd_steps": 2,
        "evaluate.autoattack": "custom", "evaluate.autoattack_attacks": ["apgd-ce"],
        "evaluate.autoattack_per_class": 2}


def test_cells_write_results_that_aggregate_over_seeds(tmp_path):
    params = with_overrides(load_params(ROOT / "params.yaml"), TINY)
    for seed in (0, 1):
        study.run_cell(params, "fairat", seed, tmp_path / "work", tmp_path / "results")
    record = json.loads((tmp_path / "results/fairat-seed1.json").read_text())
    assert record["seed"] == 1 and record["params"]["train"]["seed"] == 1
    assert record["train"]["history"][-1]["hard_count"] > 0
    assert set(record["wall_seconds"]) == {"prepare", "train", "evaluate"}
    summary = study.aggregate(tmp_path / "results")
    entry = summary["methods"]["fairat"]
    assert entry["seeds"] == [0, 1] and entry["autoattack"]["worst"]["n"] == 2
    table = study.markdown_table(summary, ("clean", "autoattack"))
    assert table.splitlines()[2].startswith("| fairat | 2 |")
    study.plot_per_class(summary, "autoattack", tmp_path / "fig.png")
    study.plot_hard_examples(tmp_path / "results", tmp_path / "hard.png")
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "hard.png").exists()


def test_validation_cells_are_kept_apart_from_the_test_table():
    assert study.cell_tag("fairat", 0, "val", "ratio0.3") == "val/fairat-ratio0.3-seed0"
    assert study.cell_tag("pgd_at", 2, "test", "") == "pgd_at-seed2"


def test_reevaluate_changes_only_the_evaluation_and_keeps_the_old_one_visible(tmp_path):
    params = with_overrides(load_params(ROOT / "params.yaml"), TINY)
    work, results = tmp_path / "work", tmp_path / "results"
    first = study.run_cell(params, "pgd_at", 0, work, results)
    smaller = with_overrides(params, {"evaluate.examples_per_class": 3})
    again = study.reevaluate_cell(smaller, "pgd_at", 0, work, results)
    assert again["eval"]["pgd"]["n"] == 30 and first["eval"]["pgd"]["n"] == 40
    assert again["train"] == first["train"]
    assert again["wall_seconds"]["train"] == first["wall_seconds"]["train"]
    assert again["params"]["evaluate"]["examples_per_class"] == 3
    assert again["reevaluated"]["previous_evaluate"]["examples_per_class"] == 4
    assert again["reevaluated"]["previous_summaries"]["pgd"] == first["eval"]["pgd"]["summary"]
    assert json.loads((results / "pgd_at-seed0.json").read_text())["eval"] == again["eval"]
    with pytest.raises(ValueError, match="already evaluated"):
        study.reevaluate_cell(smaller, "pgd_at", 0, work, results)
    aside = study.reevaluate_cell(with_overrides(params, {"evaluate.examples_per_class": 2}),
                                  "pgd_at", 0, work, results, into=results / "autoattack-standard")
    assert aside["eval"]["pgd"]["n"] == 20
    assert json.loads((results / "pgd_at-seed0.json").read_text())["eval"] == again["eval"]
    summary = study.aggregate(results)
    assert summary["cells"] == ["pgd_at-seed0"]  # the side record stays out of the table
    assert summary["autoattack_standard"]["pgd_at-seed0"]["pgd"]["n"] == 20
    with open(work / "pgd_at-seed0/model.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="not the model"):
        study.reevaluate_cell(params, "pgd_at", 0, work, results)
    with pytest.raises(FileNotFoundError, match="run the cell first"):
        study.reevaluate_cell(params, "trades", 0, work, results)
