"""PGD-20 evaluation and one training epoch with 1 vs 2 (or more) torch threads, quiet or loaded.

Why: torch's default thread count is the machine's core count; on a shared machine (CI runner,
notebook server, pod with a CPU limit) threads that wait on each other in OpenMP barriers while
other work holds the cores made PGD-20 about 20x slower than one thread (issue 31). This times
both workloads for each ``--threads`` value, rotating the order for ``--repeats`` rounds, and
records what fairat.engine.threads would choose here.

``--load N`` starts N busy background processes (pure-Python spin loops) for the run's duration
and stops them after, to measure the loaded case on a machine that is otherwise quiet; the load
average before and after is recorded either way.

    .venv/bin/python benchmarks/threads.py --out benchmarks/results/threads.json \
        [--threads 1 2] [--load 0] [--repeats 2] [--images 359] [--train-batches 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairat.config import ModelConfig, load_params  # noqa: E402
from fairat.engine.attacks import pgd_attack  # noqa: E402
from fairat.engine.data import prepare  # noqa: E402
from fairat.engine.threads import affinity_cpus, cgroup_cpu_limit, usable_threads  # noqa: E402
from fairat.engine.training import Trainer, TrainPaths  # noqa: E402
from fairat.io import write_json_atomic  # noqa: E402
from fairat.provenance import cpu_model, load_average  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPIN = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def start_load(n: int) -> list[subprocess.Popen]:
    """``n`` busy processes (one core each); the caller stops them."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def time_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             step: float) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(x), 256):
        pgd_attack(model, x[i:i + 256], y[i:i + 256], eps, step, 20, random_start=True)
    return time.perf_counter() - t0


def time_epoch(trainer: Trainer) -> float:
    t0 = time.perf_counter()
    trainer.train_epoch(trainer.epoch)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/threads.json")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--load", type=int, default=0, help="busy background processes to start")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--images", type=int, default=359, help="digits test images for PGD-20")
    p.add_argument("--train-batches", type=int, default=8, help="batches per timed epoch")
    args = p.parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    data = prepare(params.data)
    train_cfg = dataclasses.replace(params.train, epochs=1000, device="cpu", progress=False,
                                    checkpoint="last", max_batches=args.train_batches)
    ev = params.evaluate
    x = (data.test.images[:args.images].float() / 255).contiguous()
    y = data.test.labels[:args.images]
    load_before = load_average()
    procs = start_load(args.load)
    time.sleep(1.0 if args.load else 0.0)  # let the busy loops take their cores
    chosen = usable_threads()  # what fairat would choose with this load running
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fairat-threads-") as tmp:
            t = Path(tmp)
            paths = TrainPaths(t / "m.pt", t / "ckpt", t / "train.json", t / "hist.csv")
            trainer = Trainer(ModelConfig(name=params.model.name, width=params.model.width),
                              train_cfg, data, paths, device=torch.device("cpu"))
            model = trainer.model.eval()
            time_pgd(model, x[:32], y[:32], ev.eps, ev.pgd_step_size)  # warm-up
            for r in range(args.repeats):
                order = args.threads if r % 2 == 0 else list(reversed(args.threads))
                for n in order:
                    torch.set_num_threads(n)
                    pgd = time_pgd(model, x, y, ev.eps, ev.pgd_step_size)
                    trainer.model.train()
                    epoch = time_epoch(trainer)
                    trainer.epoch += 1
                    model.eval()
                    rows.append({"threads": n, "repeat": r, "pgd20_seconds": round(pgd, 3),
                                 "train_epoch_seconds": round(epoch, 3)})
                    print(f"threads {n} repeat {r}: PGD-20 on {len(x)} images {pgd:.2f} s, "
                          f"training {args.train_batches} batches {epoch:.2f} s", flush=True)
    finally:
        stop_load(procs)
    summary = {}
    for n in args.threads:
        mine = [row for row in rows if row["threads"] == n]
        summary[str(n)] = {k: sorted(row[k] for row in mine)[len(mine) // 2]
                           for k in ("pgd20_seconds", "train_epoch_seconds")}
    report = {
        "benchmark": "threads", "rows": rows, "median": summary,
        "machine": {"cpu": cpu_model(), "affinity_cpus": affinity_cpus(),
                    "cgroup_cpu_limit": cgroup_cpu_limit(), "fairat_threads": chosen,
                    "torch": torch.__version__, "background_load_processes": args.load,
                    "load_average_start": load_before, "load_average_end": load_average()},
        "args": vars(args),
    }
    write_json_atomic(args.out, report)
    print(f"median: {summary}; fairat.engine.threads chose {chosen} under this load; "
          f"wrote {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
