"""The GPU check in one command: CUDA tests, a PreAct ResNet-18 PGD-10 epoch, PGD-AT vs FairAT.

Why one script: a GPU machine is lent rarely and briefly, so everything the project wants to know
from one runs in a single call of at most ``--budget`` seconds (9 minutes by default), each step
with its own share, and the figures land in one JSON file (written atomically) even when a step
fails or runs out of time. ``--smoke`` runs the same steps at toy size on the CPU, so the test
suite keeps the script working on machines without a GPU.

Steps:
1. ``tests``: ``pytest -m gpu`` (the CUDA-marked tests; skipped in smoke mode, where they would
   only report "skipped").
2. ``throughput``: one timed training epoch of PGD-AT (PGD-10) with PreAct ResNet-18 on CIFAR-10
   (``--data``, the ImageFolder tarball; random 32x32 images of the same shape when it is absent,
   since speed does not depend on pixel values), after an untimed warm-up batch: examples/s and an
   estimate of model FLOP utilisation (MFU). FLOPs per trained example are counted, not guessed:
   ``F`` = one forward pass (torch's FLOP counter); an attack step is a forward plus an
   input-gradient backward (about ``2F``), the training step a forward plus a full backward
   (about ``3F``), so ``(2 * steps + 3) * F``. Peak FLOP/s come from the device's datasheet (dense
   bf16, the autocast dtype on CUDA); an unknown device reports no MFU rather than a guess.
3. ``compare``: a short PGD-AT vs FairAT run (the study's cell: train, class-wise evaluation) on a
   CIFAR-10 subset; its numbers show the GPU path end to end, they are not evidence of a lift.

    benchmarks/gpu_bundle.sh && benchmarks/gpu_check.sh   # GPU machine (benchmarks/README.md)
    benchmarks/gpu_check.sh --smoke --out /tmp/gpu_check.json   # CPU, seconds

A lent machine gets the checkout alone and has no registry: ``gpu_bundle.sh`` packs what its
image lacks (pyautoattack, the CIFAR-10 archive) into ``.gpu/``, which ``gpu_check.sh`` puts on
``PYTHONPATH`` with the checkout itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"

# Dense bf16 peak FLOP/s from the vendors' datasheets (SXM parts; no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12}


def bundle_dir() -> Path:
    """The folder benchmarks/gpu_bundle.sh packs for a lent machine ($FAIRAT_GPU_BUNDLE or .gpu)."""
    return Path(os.environ.get("FAIRAT_GPU_BUNDLE") or ROOT / ".gpu")


def default_data() -> Path:
    """CIFAR-10 archive: the bundle's copy (all a lent machine has), else ../shared/data's."""
    bundled = bundle_dir() / "cifar10-jpeg.tar.gz"
    return bundled if bundled.exists() else SHARED_DATA


def peak_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak of a CUDA device, by the model in its name; None if unknown."""
    for model, peak in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if model in device_name.upper():
            return peak
    return None


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    """FLOPs of one forward pass of one example (torch's counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(1, *shape, device=device))
    return int(counter.get_total_flops())


def _study():
    spec = importlib.util.spec_from_file_location("robust_fairness",
                                                  ROOT / "benchmarks" / "robust_fairness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------- steps


def step_tests(args: argparse.Namespace, budget: float) -> dict[str, Any]:
    if args.smoke:
        return {"status": "skipped", "why": "smoke mode: without a GPU the tests only skip"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           str(ROOT / "tests")]
    # inherits gpu_check.sh's PYTHONPATH (checkout + bundle): all a lent machine's tests import
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": budget}
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"status": "passed" if proc.returncode == 0 else "failed", "rc": proc.returncode,
            "summary": tail[-1] if tail else "", "tail": tail}


def _throughput_data(args: argparse.Namespace):
    from fairat.config import DataConfig
    from fairat.engine.data import ImageSet, PreparedData, prepare

    per_class = max(1, args.examples // 10)
    if args.data and Path(args.data).exists():
        data = prepare(DataConfig(source="imagefolder", root=str(args.data),
                                  train_per_class=per_class, val_per_class=0, test_per_class=1))
        return data, {"source": "cifar10-jpeg", "path": str(args.data)}
    gen = torch.Generator().manual_seed(0)
    n = per_class * 10
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    names = tuple(str(i) for i in range(10))
    train = ImageSet(images, labels, names)
    empty = ImageSet(images[:0], labels[:0], names)
    return PreparedData(train, empty, empty), {
        "source": "random", "note": f"{args.data} not found: random 32x32 RGB images "
                                    "(speed does not depend on pixel values)"}


def step_throughput(args: argparse.Namespace, budget: float) -> dict[str, Any]:
    from fairat.config import AttackConfig, ModelConfig, TrainConfig
    from fairat.engine.training import Trainer, TrainPaths, epoch_plan

    data, info = _throughput_data(args)
    steps = 1 if args.smoke else 10
    cfg = TrainConfig(method="pgd_at", epochs=1, batch_size=args.batch_size, checkpoint="last",
                      attack=AttackConfig(eps=8 / 255, step_size=2 / 255, steps=steps),
                      crop_padding=4, flip=True, progress=False, device=args.device)
    model_cfg = ModelConfig(name="preact_resnet18", width=8 if args.smoke else 64)
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(model_cfg, cfg, data, TrainPaths(*(Path(tmp) / n for n in
                                                      ("m.pt", "ck", "t.json", "h.csv"))))
        dev = t.device
        flops = forward_flops(t.model, tuple(data.train.images.shape[1:]), dev)
        idx = torch.arange(min(cfg.batch_size, len(data.train)), device=dev)
        gen = torch.Generator(device=dev).manual_seed(1)
        t.train_batch(idx, torch.zeros_like(idx, dtype=torch.bool), gen)  # warm-up, untimed
        _sync(dev)
        start = time.perf_counter()
        record = t.train_epoch(0)
        _sync(dev)
        seconds = time.perf_counter() - start
    per_second = record["examples"] / seconds
    flops_per_example = (2 * steps + 3) * flops
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(name) if dev.type == "cuda" else None
    return {"status": "done", "device": name, "data": info, "model": "preact_resnet18",
            "width": model_cfg.width, "pgd_steps": steps, "batch_size": cfg.batch_size,
            "amp_bf16": t.amp, "examples": record["examples"], "seconds": seconds,
            "examples_per_second": per_second, "forward_flops_per_example": flops,
            "train_flops_per_example": flops_per_example,
            "achieved_flops_per_second": per_second * flops_per_example,
            "peak_flops_per_second": peak,
            "mfu": None if peak is None else per_second * flops_per_example / peak,
            "batches": len(epoch_plan(len(data.train), torch.zeros(0, dtype=torch.long), 1,
                                      cfg.batch_size, 1, torch.Generator(), None))}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_overrides(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Params file and overrides of the PGD-AT vs FairAT comparison (GPU or smoke size)."""
    if args.smoke:
        return ROOT / "studies" / "digits.yaml", {
            "data.val_per_class": 5, "model.width": 8, "train.epochs": 2, "train.max_batches": 2,
            "train.attack.steps": 1, "train.val_attack_steps": 1,
            "train.fairat.warmup": 0.5, "train.progress": False,
            "evaluate.examples_per_class": 3, "evaluate.pgd_steps": 2,
            "evaluate.autoattack": "custom", "evaluate.autoattack_attacks": ["apgd-ce"],
            "evaluate.autoattack_per_class": 2, "evaluate.progress": False,
            "train.device": args.device, "evaluate.device": args.device}
    return ROOT / "params" / "cifar10-cpu.yaml", {
        "data.root": str(args.data), "data.train_per_class": 2600, "data.val_per_class": 100,
        "model.name": "preact_resnet18", "model.width": 64, "train.epochs": 6,
        "train.batch_size": 256, "train.lr": 0.1, "train.attack.steps": 10,
        "train.attack.step_size": 2 / 255, "train.fairat.warmup": 0.33,
        "train.progress": False, "evaluate.examples_per_class": 100,
        "evaluate.autoattack": "custom", "evaluate.autoattack_attacks": ["apgd-ce", "apgd-t"],
        "evaluate.autoattack_per_class": 50, "evaluate.progress": False,
        "train.device": args.device, "evaluate.device": args.device}


def step_compare(args: argparse.Namespace, budget: float) -> dict[str, Any]:
    from fairat.config import load_params, with_overrides

    if not args.smoke and not Path(args.data).exists():
        return {"status": "skipped", "why": f"{args.data} not found (needs real CIFAR-10)"}
    study = _study()
    params_file, overrides = compare_overrides(args)
    params = with_overrides(load_params(params_file), overrides)
    out: dict[str, Any] = {"status": "done", "params": str(params_file.relative_to(ROOT)),
                           "overrides": overrides, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("pgd_at", "fairat"):
            record = study.run_cell(params, method, 0, Path(tmp) / "work", Path(tmp) / "results")
            out["methods"][method] = {
                "chosen_epoch": record["train"]["chosen_epoch"],
                "train_seconds": record["wall_seconds"]["train"],
                "evaluate_seconds": record["wall_seconds"]["evaluate"],
                "train_examples_per_second": record["train"]["examples_per_second"],
                **{a: record["eval"][a]["summary"] for a in ("clean", "pgd", "autoattack",
                                                             "worst_case")
                   if a in record["eval"]}}
    return out


STEPS: dict[str, tuple[Callable[[argparse.Namespace, float], dict[str, Any]], float]] = {
    # name: (function, share of the budget it may use)
    "tests": (step_tests, 0.25), "throughput": (step_throughput, 0.2),
    "compare": (step_compare, 0.55)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every step in turn; the report is rewritten (atomically) after each, so a run killed by
    the outer timeout keeps the figures of the steps that finished."""
    from fairat.io import write_json_atomic
    from fairat.provenance import package_version

    start = time.perf_counter()
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "gpu", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                           time.gmtime()),
        "python": platform.python_version(), "torch": torch.__version__,
        "pyautoattack": package_version("pyautoattack"), "data": str(args.data),
        "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "budget_seconds": args.budget, "steps": {}}
    for name in args.steps:
        fn, share = STEPS[name]
        left = args.budget - (time.perf_counter() - start)
        if left < 10:
            report["steps"][name] = {"status": "skipped", "why": "out of time budget"}
            continue
        t0 = time.perf_counter()
        try:
            result = fn(args, min(left, max(share * args.budget, 30.0)))
        except Exception as err:  # one failed step must not lose the others' figures
            result = {"status": "error", "error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc().splitlines()[-6:]}
        result["wall_seconds"] = time.perf_counter() - t0
        report["steps"][name] = result
        print(f"[gpu_check] {name}: {result['status']} ({result['wall_seconds']:.1f} s)",
              flush=True)
        report["wall_seconds"] = time.perf_counter() - start
        write_json_atomic(args.out, report)
    report["wall_seconds"] = time.perf_counter() - start
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (the test suite)")
    p.add_argument("--data", default=str(default_data()),
                   help="CIFAR-10 ImageFolder tarball (the GPU bundle's copy when there is one)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all steps")
    p.add_argument("--examples", type=int, default=50000, help="throughput epoch size")
    p.add_argument("--batch-size", type=int, default=512, help="throughput batch size")
    p.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    args = p.parse_args(argv)
    args.device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.examples, args.batch_size = min(args.examples, 40), min(args.batch_size, 16)
    elif not torch.cuda.is_available():
        p.error("no CUDA device here: run with --smoke on a CPU machine")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from fairat.io import write_json_atomic

    args = parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    report = run(args)
    write_json_atomic(args.out, report)
    tp = report["steps"].get("throughput", {})
    if tp.get("status") == "done":
        mfu = "n/a" if tp["mfu"] is None else f"{100 * tp['mfu']:.1f}%"
        print(f"[gpu_check] {tp['model']} PGD-{tp['pgd_steps']}: "
              f"{tp['examples_per_second']:.0f} examples/s on {tp['device']}, MFU {mfu}")
    print(json.dumps({k: v.get("status") for k, v in report["steps"].items()}))
    return report


if __name__ == "__main__":
    main()
