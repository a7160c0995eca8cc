"""Smoke test of benchmarks/throughput.py: tiny digits run, JSON shape only (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_writes_json(throughput, tmp_path):
    out = tmp_path / "results" / "throughput.json"
    threads = torch.get_num_threads()
    report = throughput.main(["--data", "digits", "--examples", "64", "--batch-size", "32",
                              "--steps", "1", "--model", "small_cnn", "--width", "8",
                              "--threads", "1", "--repeats", "1", "--out", str(out)])
    assert torch.get_num_threads() == threads  # restored after the run
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("machine", "data", "settings", "results", "ratios", "targets", "noise"):
        assert key in saved
    assert saved["data"]["source"] == "digits"
    assert saved["data"]["train_examples"] == 60
    assert saved["machine"]["threads"] == 1 and saved["machine"]["cpu_count"] >= 1
    assert saved["settings"]["attack"]["steps"] == 1
    assert set(saved["results"]) == {"reference_workers0", "pgd_at", "fairat"}
    for name, res in saved["results"].items():
        assert res["examples_per_second"] > 0, name
        assert res["examples_per_epoch"] > 0, name
    assert saved["results"]["fairat"]["copies_per_epoch"] > 0  # hard examples were trained
    ratios = saved["ratios"]
    for key in ("pgd_at_vs_reference", "fairat_cost_vs_pgd_at"):
        assert math.isfinite(ratios[key]) and ratios[key] > 0
    targets = saved["targets"]
    assert targets["pgd_at_vs_reference_min"] == 1.5
    assert targets["fairat_cost_vs_pgd_at_max"] == 1.10
    assert isinstance(targets["pgd_at_vs_reference_met"], bool)
    assert isinstance(targets["fairat_cost_vs_pgd_at_met"], bool)


def test_missing_tarball_falls_back_to_digits(throughput, tmp_path, capsys):
    data, info = throughput.load_data(str(tmp_path / "absent.tar.gz"), 20, 0)
    assert info["source"] == "digits" and "fell back" in info["note"]
    assert len(data.train) == 20
    assert "NOTE" in capsys.readouterr().out


def test_gpu_check_smoke_mode_runs_every_step_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --smoke: the one-command GPU check at toy size, on the CPU."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT.parent / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    report = gpu_check.main(["--smoke", "--data", str(tmp_path / "absent.tar.gz"),
                             "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    steps = report["steps"]
    assert steps["tests"]["status"] == "skipped"  # without a GPU they would only skip
    tp = steps["throughput"]
    assert tp["status"] == "done" and tp["data"]["source"] == "random"
    assert tp["model"] == "preact_resnet18" and tp["examples_per_second"] > 0
    assert tp["train_flops_per_example"] == (2 * tp["pgd_steps"] + 3) * tp["forward_flops_per_example"]
    assert tp["mfu"] is None  # no datasheet peak for a CPU: no guessed utilisation
    assert set(steps["compare"]["methods"]) == {"pgd_at", "fairat"}
    for method in steps["compare"]["methods"].values():
        assert method["autoattack"]["average"] <= method["pgd"]["average"] + 1e-9
    assert gpu_check.peak_flops("NVIDIA H200") == 989e12 and gpu_check.peak_flops("Tesla T4") is None
