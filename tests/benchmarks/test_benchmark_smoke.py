"""Smoke test of benchmarks/throughput.py: tiny digits run, JSON shape only (no timing assertions)."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


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


# Project dependencies the lent GPU machine's image lacks (its package list: the device tool's
# KINDS.md); the GPU check must run without them. pyautoattack is there only through the bundle.
NOT_IN_GPU_IMAGE = ("mlflow", "dvc", "dvc_s3", "boto3", "botocore", "s3fs", "kfp", "kubernetes",
                    "kubeflow", "moto", "psycopg2", "sqlalchemy", "alembic", "flask")
GPU_IMAGE_GUARD = """
import importlib.abc, importlib.machinery, sys
DENY, BUNDLE = {deny!r}, {bundle!r}
class GpuImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in DENY:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the GPU image)")
        if top == "pyautoattack":
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or not str(spec.origin).startswith(BUNDLE):
                raise ModuleNotFoundError("pyautoattack outside the bundle (not in the GPU image)")
            return spec
        return None
sys.meta_path.insert(0, GpuImage())
"""


def _tiny_cifar_tarball(path: Path) -> Path:
    """A CIFAR-10-shaped ImageFolder archive: 10 classes, 32x32 RGB, 4 train and 1 test each."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    with tarfile.open(path, "w:gz") as tf:
        for split, n in (("train", 4), ("test", 1)):
            for c in range(10):
                for i in range(n):
                    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=gen)
                    buf = io.BytesIO()
                    Image.fromarray(pixels.numpy()).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/class{c}/{i:04d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tf.addfile(info, buf)
    return path


def test_gpu_check_runs_from_its_bundle_as_on_a_lent_machine(tmp_path):
    """gpu_bundle.sh then gpu_check.sh --smoke, in the lent machine's conditions: fairat not
    installed (the checkout on PYTHONPATH), none of the project's MLOps dependencies importable,
    pyautoattack and CIFAR-10 only from the bundle. Every step runs at toy size on the CPU."""
    root = SCRIPT.parents[1]
    bundle = tmp_path / "bundle"
    env = {**os.environ, "DATA": str(_tiny_cifar_tarball(tmp_path / "cifar.tar.gz"))}
    subprocess.run([str(root / "benchmarks" / "gpu_bundle.sh"), str(bundle)], env=env,
                   check=True, capture_output=True, text=True, timeout=120)
    assert (bundle / "cifar10-jpeg.tar.gz").is_file()
    assert not (bundle / "site" / "pyautoattack" / "examples").exists()  # 45 MB it never needs
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        GPU_IMAGE_GUARD.format(deny=NOT_IN_GPU_IMAGE, bundle=str(bundle / "site")))
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(FAIRAT_GPU_BUNDLE=str(bundle), PYTHONPATH=str(guard))
    proc = subprocess.run([str(root / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["pyautoattack"] and report["data"] == str(bundle / "cifar10-jpeg.tar.gz")
    steps = report["steps"]
    assert {name: step["status"] for name, step in steps.items()} == {
        "tests": "skipped", "throughput": "done", "compare": "done"}, steps
    tp = steps["throughput"]
    assert tp["data"]["source"] == "cifar10-jpeg"  # the bundle's archive, not random pixels
    assert tp["model"] == "preact_resnet18" and tp["examples_per_second"] > 0
    assert tp["train_flops_per_example"] == (2 * tp["pgd_steps"] + 3) * tp["forward_flops_per_example"]
    assert tp["mfu"] is None  # no datasheet peak for a CPU: no guessed utilisation
    assert set(steps["compare"]["methods"]) == {"pgd_at", "fairat"}
    for method in steps["compare"]["methods"].values():
        assert method["autoattack"]["average"] <= method["pgd"]["average"] + 1e-9


def test_gpu_check_falls_back_to_random_pixels_and_knows_datasheet_peaks(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT.parent / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    args = gpu_check.parse_args(["--smoke", "--data", str(tmp_path / "absent.tar.gz")])
    _, info = gpu_check._throughput_data(args)
    assert info["source"] == "random" and "not found" in info["note"]
    assert gpu_check.peak_flops("NVIDIA H200") == 989e12 and gpu_check.peak_flops("Tesla T4") is None


def test_autoattack_floor_records_every_model_call_the_suite_makes():
    """benchmarks/autoattack_floor.py: the calls it replays are the attacks' own. At a radius
    where nothing breaks every attack runs to its end: Square's 5,000 queries are forward-only
    calls, APGD's and FAB's steps gradient calls, and their replay costs model time."""
    spec = importlib.util.spec_from_file_location(
        "bench_floor", SCRIPT.parent / "autoattack_floor.py")
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    from fairat.engine.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(1, 10, 8, width=4).eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # every example classified "correctly": all are attacked
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the benchmark runs by default: tiny calls, no thread spin
    try:
        result = floor.measure(model, x, y, eps=1e-6, batch_size=64, repeats=1,
                               with_reference=False)
    finally:
        torch.set_num_threads(threads)
    calls = result["model_calls"]
    assert result["robust_after_autoattack"] == 6
    assert calls["forward_only"]["calls"] >= 5000 and calls["gradient"]["calls"] >= 100
    assert set(result["fast_seconds_per_attack"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert result["model_seconds"]["cpu"] > 0 and result["reference_seconds"] is None
