"""The robust-fairness study script: one tiny real cell on digits, then the aggregate over it."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from fairat.config import load_params, with_overrides

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("robust_fairness", ROOT / "benchmarks/robust_fairness.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)

TINY = {"data.val_per_class": 5, "model.width": 8, "train.epochs": 2, "train.max_batches": 3,
        "train.attack.steps": 1, "train.val_attack_steps": 1, "train.fairat.warmup": 0.5,
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
    # where the time was measured, so a cost ratio never compares two machines
    assert record["train"]["machine"].startswith("cpu: ") and record["train"]["sessions"] == 1
    assert 0 < record["train"]["seconds_all_sessions"] <= record["wall_seconds"]["train"]
    assert record["train"]["cpu_seconds_all_sessions"] > 0
    assert record["provenance"]["train_machine"] == record["train"]["machine"]
    assert set(record["load_average"]) == {"start", "end"}
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
    # a later session: a fresh work folder holding only the kept model (the runner copies it in)
    later = tmp_path / "later" / "pgd_at-seed0"
    later.mkdir(parents=True)
    shutil.copy(work / "pgd_at-seed0/model.pt", later / "model.pt")
    kept = study.reevaluate_cell(with_overrides(params, {"evaluate.examples_per_class": 1}),
                                 "pgd_at", 0, later.parent, results, into=results / "later")
    assert kept["eval"]["pgd"]["n"] == 10 and (later.parent / "data/manifest.json").exists()
    with open(work / "pgd_at-seed0/model.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="not the model"):
        study.reevaluate_cell(params, "pgd_at", 0, work, results)
    with pytest.raises(FileNotFoundError, match="run the cell first"):
        study.reevaluate_cell(params, "trades", 0, work, results)


def test_mean_ci95_is_the_student_t_interval():
    ci = study.mean_ci95([0.1, 0.2, 0.3])
    half = 4.303 * 0.1 / 3 ** 0.5  # t(0.975, df=2) * sd / sqrt(n)
    assert ci["mean"] == pytest.approx(0.2) and ci["low"] == pytest.approx(0.2 - half)
    assert study.mean_ci95([0.5])["low"] is None


def _fake_cell(folder, method, seed, worst, average, train_s, machine="legacy"):
    """A cell record; machine "legacy" writes one from before cells recorded sessions."""
    summary = {"worst": worst, "average": average, "gap": 0.1, "worst_class": "0"}
    train = {"examples_per_second": 1.0}
    if machine != "legacy":  # the time over all sessions, not the last session's wall time
        train.update(seconds_all_sessions=train_s, sessions=1, machine=machine)
    cell = {"tag": f"{method}-seed{seed}", "method": method, "seed": seed, "variant": "",
            "eval": {"autoattack": {"summary": summary, "per_class": {"0": worst, "1": average}}},
            "wall_seconds": {"train": 1.0 if machine != "legacy" else train_s, "evaluate": 1.0},
            "train": train}
    (folder / f"{method}-seed{seed}.json").write_text(json.dumps(cell))


def test_the_cost_ratio_pairs_only_cells_trained_on_the_same_machine(tmp_path):
    """Two CPUs' speeds are no method's cost: a seed whose cells ran on different (or one
    unrecorded) machines leaves the ratio, and none left says so instead of a number."""
    epyc, xeon = "cpu: AMD EPYC; 2 cores", "cpu: Intel Xeon; 2 cores"
    for seed, (mine, theirs, m) in enumerate([(epyc, epyc, 1.1), (xeon, xeon, 1.3),
                                              (xeon, epyc, 3.0), ("legacy", xeon, 4.0)]):
        _fake_cell(tmp_path, "pgd_at", seed, 0.5, 0.8, 100.0, theirs)
        _fake_cell(tmp_path, "fairat", seed, 0.6, 0.8, 100.0 * m, mine)
    entry = study.paired_differences(tmp_path)["methods"]["fairat"]
    assert entry["seeds"] == [0, 1, 2, 3] and entry["train_time_ratio"]["n"] == 2
    assert entry["train_time_ratio"]["median"] == pytest.approx(1.2)
    table = study.paired_table(study.paired_differences(tmp_path), study.aggregate(tmp_path))
    assert "| 1.20 (2 of 4) |" in table
    for seed in (0, 1):
        _fake_cell(tmp_path, "fairat", seed, 0.6, 0.8, 100.0, "cuda: a GPU")
    entry = study.paired_differences(tmp_path)["methods"]["fairat"]
    assert entry["train_time_ratio"]["median"] is None
    assert "n/a (other machines)" in study.paired_table(study.paired_differences(tmp_path),
                                                       study.aggregate(tmp_path))


def test_the_cost_ratio_uses_cpu_seconds_where_both_cells_recorded_them(tmp_path):
    """A cell timed beside other work has long wall seconds and the same CPU seconds: where both
    cells of a pair recorded their training process's CPU time, the ratio is of CPU time."""
    xeon = "cpu: Intel Xeon; 2 cores"
    for seed in (0, 1):
        _fake_cell(tmp_path, "pgd_at", seed, 0.5, 0.8, 100.0, xeon)
        _fake_cell(tmp_path, "fairat", seed, 0.6, 0.8, 300.0, xeon)  # wall: ran under load
    for method, cpu in (("pgd_at", 90.0), ("fairat", 99.0)):
        for seed in (0, 1):
            path = tmp_path / f"{method}-seed{seed}.json"
            cell = json.loads(path.read_text())
            cell["train"]["cpu_seconds_all_sessions"] = cpu
            path.write_text(json.dumps(cell))
    entry = study.paired_differences(tmp_path)["methods"]["fairat"]
    assert entry["train_time_ratio"]["median"] == pytest.approx(1.1)
    assert entry["train_time_ratio"]["timed"] == "cpu"
    assert "| 1.10 (CPU s) |" in study.paired_table(study.paired_differences(tmp_path),
                                                     study.aggregate(tmp_path))
    cell = json.loads((tmp_path / "pgd_at-seed1.json").read_text())
    del cell["train"]["cpu_seconds_all_sessions"]  # one pair timed by the wall clock only
    (tmp_path / "pgd_at-seed1.json").write_text(json.dumps(cell))
    entry = study.paired_differences(tmp_path)["methods"]["fairat"]
    assert entry["train_time_ratio"]["timed"] == "cpu+wall" and entry["train_time_ratio"]["n"] == 2


def test_paired_differences_pair_by_seed_and_skip_unpaired_seeds(tmp_path):
    for seed, (b, f) in enumerate([(0.5, 0.6), (0.4, 0.45), (0.6, 0.7)]):
        _fake_cell(tmp_path, "pgd_at", seed, b, 0.8, 10.0)
        _fake_cell(tmp_path, "fairat", seed, f, 0.8, 20.0)
    _fake_cell(tmp_path, "fairat", 7, 0.9, 0.9, 20.0)  # no baseline for seed 7: left out
    paired = study.paired_differences(tmp_path)
    entry = paired["methods"]["fairat"]
    assert entry["seeds"] == [0, 1, 2]
    assert entry["worst"]["mean"] == pytest.approx((0.1 + 0.05 + 0.1) / 3)
    assert entry["worst"]["low"] > 0  # every seed gains: the interval excludes zero
    assert entry["average"]["mean"] == pytest.approx(0.0)
    assert entry["train_time_ratio"]["median"] == pytest.approx(2.0)
    summary = study.aggregate(tmp_path)
    assert "| fairat | 3 | +8.3 [" in study.paired_table(paired, summary)
    assert study.per_class_table(summary).splitlines()[0] == "| method | 0 | 1 |"


def test_aggregate_pairs_with_another_baseline_into_its_own_summary(tmp_path, capsys):
    """`aggregate --baseline random_copies`: "aimed copies or just more copies" is one paired
    table; the pgd_at summary is left as it was, and neither summary is read back as a cell."""
    for seed, (b, c, f) in enumerate([(0.5, 0.55, 0.6), (0.4, 0.5, 0.45), (0.6, 0.6, 0.7)]):
        _fake_cell(tmp_path, "pgd_at", seed, b, 0.8, 10.0)
        _fake_cell(tmp_path, "random_copies", seed, c, 0.8, 10.0)
        _fake_cell(tmp_path, "fairat", seed, f, 0.8, 10.0)
    assert study.main(["aggregate", "--results", str(tmp_path)]) == 0
    assert study.main(["aggregate", "--results", str(tmp_path), "--baseline",
                       "random_copies"]) == 0
    versus = json.loads((tmp_path / "summary-vs-random_copies.json").read_text())["paired"]
    assert versus["baseline"] == "random_copies" and set(versus["methods"]) == {"pgd_at", "fairat"}
    assert versus["methods"]["fairat"]["worst"]["mean"] == pytest.approx((0.05 - 0.05 + 0.1) / 3)
    default = json.loads((tmp_path / "summary.json").read_text())["paired"]
    assert default["baseline"] == "pgd_at"
    assert "worst class vs random_copies" in capsys.readouterr().out
    assert set(study.aggregate(tmp_path)["methods"]) == {"pgd_at", "random_copies", "fairat"}
    # the figure's dots are the per-seed pairs, kept in the summary
    assert default["methods"]["fairat"]["worst_values"] == pytest.approx([0.1, 0.05, 0.1])
    figures = tmp_path / "figures"
    assert study.main(["aggregate", "--results", str(tmp_path), "--figures", str(figures)]) == 0
    png = (figures / "lifts_vs_pgd_at_test.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def _val_cell(folder: Path, method: str, variant: str, seed: int, worst: float,
              average: float) -> None:
    tag = f"{method}{'-' + variant if variant else ''}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{tag}.json").write_text(json.dumps({
        "tag": f"val/{tag}", "method": method, "variant": variant, "seed": seed, "split": "val",
        "eval": {"worst_case": {"summary": {"worst": worst, "average": average}}}}))


def test_each_method_chooses_on_its_complete_variants_and_says_how_noisy():
    spec = importlib.util.spec_from_file_location("choose_variant",
                                                  ROOT / "benchmarks/choose_variant.py")
    choose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(choose)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        val = Path(tmp) / "val"
        for seed, (a, b) in enumerate([(0.6, 0.5), (0.7, 0.5), (0.5, 0.6)]):
            _val_cell(val, "wat", "", seed, a, 0.8)
            _val_cell(val, "wat", "pgd", seed, b, 0.9)
        _val_cell(val, "wat", "eta0.3", 0, 0.99, 0.9)  # one lucky seed of three: left out
        _val_cell(val, "pgd_at", "", 0, 0.4, 0.8)
        chosen = choose.choose(Path(tmp))
    wat = chosen["methods"]["wat"]
    assert wat["chosen"] == "" and wat["runner_up"] == "pgd" and wat["incomplete"] == ["eta0.3"]
    assert wat["variants"][""]["worst"] == pytest.approx(0.6)
    assert wat["variants"][""]["worst_se"] == pytest.approx(0.1 / 3 ** 0.5)
    lead = wat["lead_over_runner_up"]
    assert lead["mean"] == pytest.approx(0.2 / 3) and lead["low"] < 0 < lead["high"]
    assert chosen["methods"]["pgd_at"]["chosen"] == "" and "runner_up" not in chosen["methods"]["pgd_at"]
    table = choose.choice_table(chosen)
    assert "| wat | **(default)** | 3 | 60.0 ± 5.8 | 80.0 |" in table


def test_simultaneous_intervals_widen_with_the_number_of_methods_compared():
    values = [0.05, 0.10, 0.02, 0.08, 0.04]
    plain, one = study.mean_ci95(values), study.simultaneous_ci95(values, 1)
    assert one["low"] == pytest.approx(plain["low"], abs=1e-3)  # 1 comparison: the plain interval
    eight = study.simultaneous_ci95(values, 8)
    assert eight["low"] < one["low"] and eight["high"] > one["high"]
    assert study.simultaneous_ci95([0.1], 8) == {"low": None, "high": None}


def test_a_setting_exported_from_its_record_leaves_seed_split_and_method_to_the_cell(tmp_path):
    spec = importlib.util.spec_from_file_location("choose_variant",
                                                  ROOT / "benchmarks/choose_variant.py")
    choose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(choose)
    from fairat.config import to_dict
    from fairat.overlays import load_params_files

    params = to_dict(with_overrides(load_params(ROOT / "params.yaml"), {
        "train.epochs": 7, "train.fairat.class_power": 2.0, "data.seed": 3, "train.seed": 3,
        "evaluate.split": "val", "gate.split": "val"}))
    record = tmp_path / "fairat-pc-pow2-seed3.json"
    record.write_text(json.dumps({"params": params}))
    assert choose.main(["--from-record", str(record), "--out", str(tmp_path / "b.yaml")]) == 0
    again = load_params_files([ROOT / "params.yaml", tmp_path / "b.yaml"])
    assert (again.train.epochs, again.train.fairat.class_power) == (7, 2.0)
    default = load_params(ROOT / "params.yaml")
    assert (again.data.seed, again.train.seed, again.evaluate.split, again.gate.split) == (
        default.data.seed, default.train.seed, default.evaluate.split, default.gate.split)
