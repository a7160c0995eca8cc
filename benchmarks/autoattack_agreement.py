"""Fast AutoAttack vs pyautoattack: per-example agreement and time per attack, in one run.

For each model (digits PGD-AT, TRADES and FairAT trained here by the project's Trainer with the
params.yaml train section but few epochs; a CIFAR-10 small_cnn when the shared tarball exists)
both implementations run the standard suite on the same test images, same eps, seed and batch
size, one after the other in the same process, so they share the machine's load. Recorded:

- agreement: fraction of examples with the same robust flag; ``fast_robust_where_reference_broke``
  (must be 0: the fast path never calls an example robust that pyautoattack broke);
  per-class robust counts of both and their largest difference in images;
- time per attack, wall (perf_counter) and this process's CPU time (process_time: less sensitive
  to other jobs on a shared machine), and the speed-up of the whole suite;
- the machine: CPU model, torch threads, load average before and after.

    .venv/bin/python benchmarks/autoattack_agreement.py \
        --out benchmarks/results/autoattack_agreement.json \
        [--models pgd_at trades fairat cifar] [--digits-images 359] [--cifar-images 40] \
        [--cifar-eps 0.0078] [--epochs 3] [--threads 1] [--reference-threads N] [--device cpu]

``--reference-threads`` runs pyautoattack with another torch thread count (e.g. torch's default,
as the job ran before fairat.engine.threads), to time "as run today"; agreement is unaffected.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairat.config import DataConfig, EvalConfig, ModelConfig, load_params  # noqa: E402
from fairat.engine.autoattack_fast import run_fast_autoattack  # noqa: E402
from fairat.engine.data import PreparedData, prepare  # noqa: E402
from fairat.engine.evaluation import (autoattack_settings, first_per_class,  # noqa: E402
                                      predict_correct)
from fairat.engine.training import Trainer, TrainPaths  # noqa: E402
from fairat.io import write_json_atomic  # noqa: E402
from fairat.provenance import cpu_model, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


class _AttackClock(logging.Handler):
    """Times pyautoattack's attacks from its own log lines ('running X', 'robust accuracy after
    X'): wall and process CPU time at each start and end."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.marks: list[tuple[str, str, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        now = (time.perf_counter(), time.process_time())
        if msg.startswith("running "):
            self.marks.append(("start", msg.split()[1].lower(), *now))
        elif msg.startswith("robust accuracy after "):
            self.marks.append(("end", msg.split()[3].rstrip(":").lower(), *now))

    def seconds(self) -> dict[str, dict[str, float]]:
        out, start = {}, {}
        for kind, name, wall, cpu in self.marks:
            if kind == "start":
                start[name] = (wall, cpu)
            elif name in start:
                out[name] = {"wall": round(wall - start[name][0], 3),
                             "cpu": round(cpu - start[name][1], 3)}
        return out


def reference_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
                  plan: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, dict]:
    """pyautoattack's run_standard_evaluation, as fairat.engine.evaluation calls it."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, device=device, eps=cfg.eps, norm="Linf", seed=cfg.seed,
                    version="standard")
    aa.apgd.n_restarts = plan["apgd_restarts"]
    aa.apgd_targeted.n_target_classes = plan["apgd_targets"]
    aa.fab.n_target_classes = plan["fab_targets"]
    clock = _AttackClock()
    logger = logging.getLogger("auto-attack")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(clock)
    try:
        with torch.random.fork_rng():
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=cfg.batch_size)
    finally:
        logger.removeHandler(clock)
        logger.setLevel(old)
    return x_adv, clock.seconds()


def fast_run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
             plan: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, dict]:
    marks: dict[str, dict[str, float]] = {}

    def report(attack: str, text: str, robust: int, n: int) -> None:
        now = (time.perf_counter(), time.process_time())
        if text.startswith("started"):
            marks[attack] = {"wall": -now[0], "cpu": -now[1]}
        elif text == "done":
            marks[attack] = {"wall": round(marks[attack]["wall"] + now[0], 3),
                             "cpu": round(marks[attack]["cpu"] + now[1], 3)}

    with torch.random.fork_rng():
        x_adv, _ = run_fast_autoattack(model, x, y, plan, cfg.batch_size, device, report)
    return x_adv, marks


def train_model(method: str, data: PreparedData, epochs: int, width: int,
                device: torch.device) -> torch.nn.Module:
    """A small model trained by the project's Trainer (params.yaml's train section, few epochs)."""
    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(params.train, method=method, epochs=epochs, checkpoint="last",
                              device=device.type, progress=False)
    with tempfile.TemporaryDirectory(prefix="fairat-aa-bench-") as tmp:
        t = Path(tmp)
        paths = TrainPaths(t / "model.pt", t / "ckpt", t / "train.json", t / "history.csv")
        trainer = Trainer(ModelConfig(name="small_cnn", width=width), cfg, data, paths,
                          device=device)
        while trainer.epoch < cfg.epochs:
            trainer.train_epoch(trainer.epoch)
            trainer.epoch += 1
    return trainer.model.eval()


def compare(name: str, model: torch.nn.Module, data: PreparedData, n_images: int, eps: float,
            device: torch.device, threads: int, ref_threads: int) -> dict[str, Any]:
    test = data.test
    k = test.num_classes
    per_class = None if n_images >= len(test.labels) else max(1, n_images // k)
    idx = first_per_class(test.labels, per_class, k)  # the whole split when asked for all
    x = (test.images[idx].float() / 255).contiguous()
    y = test.labels[idx]
    cfg = EvalConfig(eps=eps, autoattack="standard", batch_size=256, seed=0)
    plan = autoattack_settings(cfg, k)
    torch.set_num_threads(ref_threads)
    t0 = time.perf_counter(), time.process_time()
    ref_adv, ref_sec = reference_run(model, x, y, cfg, plan, device)
    ref_total = {"wall": time.perf_counter() - t0[0], "cpu": time.process_time() - t0[1]}
    torch.set_num_threads(threads)
    t0 = time.perf_counter(), time.process_time()
    fast_adv, fast_sec = fast_run(model, x, y, cfg, plan, device)
    fast_total = {"wall": time.perf_counter() - t0[0], "cpu": time.process_time() - t0[1]}
    ref = predict_correct(model, ref_adv.to(device), y, device, 256)
    got = predict_correct(model, fast_adv.to(device), y, device, 256)
    clean = predict_correct(model, x, y, device, 256)
    per_ref = [int(ref[y == c].sum()) for c in range(k)]
    per_got = [int(got[y == c].sum()) for c in range(k)]
    out = {
        "model": name, "n_images": len(y), "eps": eps,
        "clean_accuracy": float(clean.float().mean()),
        "reference_robust_accuracy": float(ref.float().mean()),
        "fast_robust_accuracy": float(got.float().mean()),
        "agreement": float((ref == got).float().mean()),
        "fast_robust_where_reference_broke": int((got & ~ref).sum()),
        "reference_robust_where_fast_broke": int((ref & ~got).sum()),
        "per_class_robust_reference": per_ref, "per_class_robust_fast": per_got,
        "max_per_class_difference_images": max(abs(a - b) for a, b in zip(per_ref, per_got)),
        "seconds_per_attack": {"reference": ref_sec, "fast": fast_sec},
        "seconds_total": {"reference": {k2: round(v, 3) for k2, v in ref_total.items()},
                          "fast": {k2: round(v, 3) for k2, v in fast_total.items()}},
        "speedup_wall": round(ref_total["wall"] / max(fast_total["wall"], 1e-9), 2),
        "speedup_cpu": round(ref_total["cpu"] / max(fast_total["cpu"], 1e-9), 2),
        "threads": {"fast": threads, "reference": ref_threads},
    }
    print(f"{name}: {len(y)} images, robust ref {out['reference_robust_accuracy']:.3f} fast "
          f"{out['fast_robust_accuracy']:.3f}, agreement {out['agreement']:.4f}, fast robust where "
          f"ref broke {out['fast_robust_where_reference_broke']}; wall ref {ref_total['wall']:.1f}"
          f" s fast {fast_total['wall']:.1f} s ({out['speedup_wall']}x), cpu ref "
          f"{ref_total['cpu']:.1f} s fast {fast_total['cpu']:.1f} s ({out['speedup_cpu']}x)",
          flush=True)
    for impl in ("reference", "fast"):
        print(f"  {impl:9s} " + ", ".join(f"{a} {s['wall']:.1f}s wall/{s['cpu']:.1f}s cpu"
                                          for a, s in out["seconds_per_attack"][impl].items()),
              flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/autoattack_agreement.json")
    p.add_argument("--models", nargs="+", default=["pgd_at", "trades", "fairat", "cifar"])
    p.add_argument("--digits-images", type=int, default=359, help="digits test images (all: 359)")
    p.add_argument("--cifar-images", type=int, default=40)
    p.add_argument("--cifar-eps", type=float, default=2 / 255,
                   help="CIFAR radius: a few CPU epochs leave nothing robust at 8/255")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference-threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    ref_threads = args.reference_threads or args.threads
    torch.set_num_threads(args.threads)
    load_start = load_average()
    params = load_params(ROOT / "params.yaml")
    results = []
    digits = [m for m in args.models if m != "cifar"]
    if digits:
        data = prepare(params.data if params.data.source == "digits" else DataConfig())
        for method in digits:
            model = train_model(method, data, args.epochs, args.width, device)
            results.append(compare(f"digits-{method}", model, data, args.digits_images,
                                   params.evaluate.eps, device, args.threads, ref_threads))
    if "cifar" in args.models:
        if not CIFAR.exists():
            print(f"NOTE: {CIFAR} missing; CIFAR-10 skipped", flush=True)
        else:
            cdata = prepare(DataConfig(source="imagefolder", root=str(CIFAR), train_per_class=200,
                                       val_per_class=0,
                                       test_per_class=max(1, args.cifar_images // 10)))
            model = train_model("pgd_at", cdata, args.epochs, args.width, device)
            results.append(compare("cifar10-small_cnn-pgd_at", model, cdata, args.cifar_images,
                                   args.cifar_eps, device, args.threads, ref_threads))
    report = {
        "benchmark": "autoattack_agreement", "results": results,
        "machine": {"cpu": cpu_model(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                    "torch": torch.__version__, "threads": args.threads,
                    "reference_threads": ref_threads, "load_average_start": load_start,
                    "load_average_end": load_average()},
        "args": vars(args),
        "all_agree": all(r["fast_robust_where_reference_broke"] == 0 and r["agreement"] >= 0.995
                         and r["max_per_class_difference_images"] <= 1 for r in results),
    }
    write_json_atomic(args.out, report)
    print(f"all models agree (>= 99.5%, never robust where the reference broke, per class within "
          f"one image): {report['all_agree']}; wrote {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
