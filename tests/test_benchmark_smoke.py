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
