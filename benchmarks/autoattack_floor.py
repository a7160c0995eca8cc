"""How much faster standard AutoAttack could get on this machine without getting weaker.

Why: issue 31 asks for the standard suite at least 5x faster than pyautoattack, with the same
verdicts. The fast path (fairat.engine.autoattack_fast) already removed the per-target loops;
what is left could be overhead (Python, small tensor ops, copies) or the model's own arithmetic,
which the suite's budget (iterations x targets x restarts x queries, on the still-robust examples)
fixes. This script measures the split, on the same model and images as the agreement benchmark:

1. The fast path runs once with the model wrapped so that every call the attacks make is
   recorded: rows, and whether autograd was on (a forward followed by one backward: APGD's and
   FAB's gradient steps) or off (Square's queries, verdicts).
2. The same calls are replayed on the bare model (each distinct (rows, grad) shape timed a few
   times, times its count): the seconds a zero-overhead implementation of the same suite would
   still spend in the model.
3. ``floor_ratio`` = fast path seconds / model seconds: the most that removing ALL remaining
   overhead could give. pyautoattack runs the same suite on the same model and images in the
   same process (as benchmarks/autoattack_agreement.py runs it), so ``reference / model``
   seconds bounds the speed-up any implementation of the same suite can reach at these threads.

CPU time (process_time) is reported beside wall time: with one thread it moves little when other
work shares the cores. The model's arithmetic rate (GFLOP/s from torch's FLOP counter on the
replayed forward) says how close the kernels already run to the core's peak.

    .venv/bin/python benchmarks/autoattack_floor.py --out benchmarks/results/autoattack_floor.json \
        [--method pgd_at] [--epochs 3] [--width 16] [--images 359] [--threads 1] [--no-reference]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from autoattack_agreement import fast_run, reference_run, train_model  # noqa: E402
from fairat.config import DataConfig, EvalConfig, load_params  # noqa: E402
from fairat.engine.data import prepare  # noqa: E402
from fairat.engine.evaluation import autoattack_settings, first_per_class  # noqa: E402
from fairat.io import write_json_atomic  # noqa: E402
from fairat.provenance import cpu_model, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class _Recorder(nn.Module):
    """Calls ``inner`` and counts (rows, autograd on) for every call."""

    def __init__(self, inner: nn.Module, calls: Counter) -> None:
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls[(len(x), torch.is_grad_enabled() and x.requires_grad)] += 1
        return self.inner(x)


class _Recorded(nn.Module):
    """The model for the verdicts, whose ``attack_view`` (what the attacks call) is recorded."""

    def __init__(self, model: nn.Module, calls: Counter, verdict_calls: Counter) -> None:
        super().__init__()
        self.model, self.calls = model, calls
        self.view = model.attack_view() if hasattr(model, "attack_view") else model
        self.verdicts = _Recorder(model, verdict_calls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.verdicts(x)

    def attack_view(self) -> nn.Module:
        return _Recorder(self.view, self.calls).eval()


def _time_call(model: nn.Module, rows: int, grad: bool, shape: tuple[int, ...],
               repeats: int) -> tuple[float, float]:
    """(wall, cpu) seconds of one call of ``rows`` rows: forward, plus backward when ``grad``."""
    x = torch.rand(rows, *shape)
    def once() -> None:
        if grad:
            xx = x.clone().requires_grad_(True)
            model(xx).sum().backward()
        else:
            with torch.inference_mode():
                model(x)
    once()  # warm-up: first-call allocations
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - t0) / repeats, (time.process_time() - c0) / repeats


def _forward_gflops(model: nn.Module, rows: int, shape: tuple[int, ...]) -> dict[str, float]:
    """Arithmetic rate of the bare forward at ``rows`` rows (FLOPs by torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(rows, *shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    flops = counter.get_total_flops()
    wall, cpu = _time_call(model, rows, False, shape, 50)
    return {"rows": rows, "mflop_per_forward": round(flops / 1e6, 2),
            "gflop_per_s_wall": round(flops / wall / 1e9, 1),
            "gflop_per_s_cpu": round(flops / cpu / 1e9, 1)}


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int,
            repeats: int, with_reference: bool = True) -> dict[str, Any]:
    calls: Counter = Counter()
    verdicts: Counter = Counter()
    recorded = _Recorded(model, calls, verdicts).eval()
    cfg = EvalConfig(eps=eps, autoattack="standard", batch_size=batch_size, seed=0)
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    plan = autoattack_settings(cfg, num_classes)
    reference: dict[str, Any] | None = None
    if with_reference:  # pyautoattack itself, same model, images, seed and chunks
        t0, c0 = time.perf_counter(), time.process_time()
        ref_adv, ref_per_attack = reference_run(model, x, y, cfg, plan, torch.device("cpu"))
        reference = {"wall": round(time.perf_counter() - t0, 3),
                     "cpu": round(time.process_time() - c0, 3), "per_attack": ref_per_attack}
    t0, c0 = time.perf_counter(), time.process_time()
    adv, seconds = fast_run(recorded, x, y, cfg, plan, torch.device("cpu"))  # per-attack times
    fast = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    with torch.no_grad():
        robust = int((model(adv).argmax(1) == y).sum())
        if reference is not None:
            reference["robust_after_autoattack"] = int((model(ref_adv).argmax(1) == y).sum())
    view = recorded.view
    shape = tuple(x.shape[1:])
    model_s = {"wall": 0.0, "cpu": 0.0}
    by_kind = {"gradient": {"calls": 0, "rows": 0, "cpu": 0.0},
               "forward_only": {"calls": 0, "rows": 0, "cpu": 0.0}}
    for (rows, grad), count in sorted(calls.items()):
        wall, cpu = _time_call(view, rows, grad, shape, repeats)
        model_s["wall"] += count * wall
        model_s["cpu"] += count * cpu
        kind = by_kind["gradient" if grad else "forward_only"]
        kind["calls"] += count
        kind["rows"] += count * rows
        kind["cpu"] += count * cpu
    for (rows, _), count in sorted(verdicts.items()):  # the verdicts use the unfolded model
        wall, cpu = _time_call(model, rows, False, shape, repeats)
        model_s["wall"] += count * wall
        model_s["cpu"] += count * cpu
    typical = max(calls, key=lambda k: calls[k] * k[0])[0]  # the rows most of the work ran at
    return {
        "n_images": len(y), "robust_after_autoattack": robust,
        "fast_seconds": {k: round(v, 3) for k, v in fast.items()},
        "fast_seconds_per_attack": seconds,
        "model_seconds": {k: round(v, 3) for k, v in model_s.items()},
        "model_calls": {k: {**v, "cpu": round(v["cpu"], 3)} for k, v in by_kind.items()},
        "verdict_calls": sum(verdicts.values()),
        "floor_ratio": {k: round(fast[k] / max(model_s[k], 1e-9), 2) for k in ("wall", "cpu")},
        "forward_rate": _forward_gflops(view, typical, shape),
        "reference_seconds": reference,
        # the most any implementation of the same suite could gain over pyautoattack here
        "bound_speedup": None if reference is None else {
            k: round(reference[k] / max(model_s[k], 1e-9), 2) for k in ("wall", "cpu")},
        "fast_speedup": None if reference is None else {
            k: round(reference[k] / max(fast[k], 1e-9), 2) for k in ("wall", "cpu")},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/autoattack_floor.json")
    p.add_argument("--method", default="pgd_at")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--images", type=int, default=359, help="digits test images (all: 359)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timings per distinct call shape")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-reference", action="store_true",
                   help="skip pyautoattack's run (no bound on the speed-up, about half the time)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_average()
    params = load_params(ROOT / "params.yaml")
    data = prepare(params.data if params.data.source == "digits" else DataConfig())
    model = train_model(args.method, data, args.epochs, args.width, torch.device("cpu"))
    test = data.test
    k = test.num_classes
    per_class = None if args.images >= len(test.labels) else max(1, args.images // k)
    idx = first_per_class(test.labels, per_class, k)
    x = (test.images[idx].float() / 255).contiguous()
    y = test.labels[idx]
    result = measure(model, x, y, params.evaluate.eps, args.batch_size, args.repeats,
                     not args.no_reference)
    report: dict[str, Any] = {
        "benchmark": "autoattack_floor", "model": f"digits-{args.method}", **result,
        "machine": {"cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads,
                    "load_average_start": load_start, "load_average_end": load_average()},
        "args": vars(args),
    }
    write_json_atomic(args.out, report)
    fast, model_s = result["fast_seconds"], result["model_seconds"]
    print(f"{report['model']} on {result['n_images']} images, {args.threads} thread(s): fast path "
          f"{fast['cpu']:.1f} s CPU ({fast['wall']:.1f} s wall); the same model calls alone "
          f"{model_s['cpu']:.1f} s CPU; floor ratio {result['floor_ratio']['cpu']}x; forward at "
          f"{result['forward_rate']['rows']} rows: {result['forward_rate']['gflop_per_s_cpu']} "
          f"GFLOP/s per CPU second", flush=True)
    if result["reference_seconds"] is not None:
        print(f"pyautoattack: {result['reference_seconds']['cpu']:.1f} s CPU "
              f"(robust {result['reference_seconds']['robust_after_autoattack']}, fast path "
              f"{result['robust_after_autoattack']}); fast path {result['fast_speedup']['cpu']}x; "
              f"bound for any implementation of the same suite "
              f"{result['bound_speedup']['cpu']}x (CPU time)", flush=True)
    print(f"wrote {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
