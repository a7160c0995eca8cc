"""Data-parallel scaling efficiency of the training step: examples/s with N ranks vs one.

efficiency(N) = throughput(N ranks) / (N * throughput(1 rank)), on a fixed global workload
(same global batch, same number of global batches, same model and PGD settings), so the N-rank
run does the same work as the one-rank run, split N ways.

Each measurement launches ``torchrun --standalone --nproc_per_node N`` on this script in worker
mode: every rank builds the same synthetic CIFAR-sized data (uint8, 3x32x32, 10 classes), trains
one untimed warm-up epoch, then times ``--epochs`` epochs of ``Trainer.train_epoch`` (PGD-AT with
lean PGD, DDP with global BatchNorm, gloo on CPU or NCCL on GPU). Throughput counts examples
trained per second of the slowest rank.

CPU fairness: every rank runs ``--threads`` intra-op threads (default 1), so 2 ranks at 1 thread
use 2 cores and are compared with 1 rank at 1 thread on 1 core. More ranks than free cores
measures contention, not scaling; the JSON records the core count and load averages.

    .venv/bin/python benchmarks/scaling.py --ranks 1 2 --out benchmarks/results/scaling.json
    # on an 8-GPU node:
    python benchmarks/scaling.py --device cuda --ranks 1 2 4 8 --batch-size 1024 --width 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(args: argparse.Namespace) -> None:
    import torch

    from fairat.config import AttackConfig, ModelConfig, TrainConfig
    from fairat.engine.data import ImageSet, PreparedData
    from fairat.engine.distributed import all_reduce_max, barrier, init_distributed
    from fairat.engine.training import Trainer, TrainPaths

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ctx = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * args.batches
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 10
    names = tuple(f"c{i}" for i in range(10))
    train = ImageSet(images, labels, names)
    empty = ImageSet(images[:0], labels[:0], names)
    cfg = TrainConfig(method="pgd_at", epochs=args.epochs + 1, batch_size=args.batch_size,
                      attack=AttackConfig(eps=8 / 255, step_size=2 / 255, steps=args.steps),
                      checkpoint="last", progress=False, device=args.device, amp="off",
                      crop_padding=4, flip=True)
    out = Path(tempfile.mkdtemp(prefix="fairat-scaling-"))
    paths = TrainPaths(out / "m.pt", out / "ck", out / "t.json", out / "h.csv")
    trainer = Trainer(ModelConfig(name=args.model, width=args.width), cfg,
                      PreparedData(train, empty, empty), paths, ctx, device)
    trainer.train_epoch(0)  # warm-up: allocator, DDP buckets, caches
    trained, seconds = 0, 0.0
    for epoch in range(1, args.epochs + 1):
        barrier(ctx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        record = trainer.train_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        trained += record["examples"]
    slowest = all_reduce_max(torch.tensor([seconds], dtype=torch.float64, device=device), ctx)
    if ctx.is_main:
        print("RESULT " + json.dumps({"ranks": ctx.world_size, "examples": trained,
                                      "seconds": float(slowest.item()),
                                      "examples_per_second": trained / float(slowest.item())}),
              flush=True)


def _measure(args: argparse.Namespace, ranks: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={ranks}", __file__, "--worker",
           *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
             if k in ("device", "model", "width", "batch_size", "batches", "epochs", "steps",
                      "threads")]]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{ranks}-rank run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--batches", type=int, default=8, help="global batches per epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up)")
    p.add_argument("--steps", type=int, default=5, help="PGD steps")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. contention)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    import torch

    load_before = os.getloadavg()
    runs: dict[int, list[dict]] = {r: [] for r in args.ranks}
    for _ in range(args.repeats):
        for r in args.ranks:  # interleaved, so slow periods hit every world size
            runs[r].append(_measure(args, r))
            print(f"{r} rank(s): {runs[r][-1]['examples_per_second']:.1f} examples/s", flush=True)
    best = {r: max(x["examples_per_second"] for x in v) for r, v in runs.items()}
    base = best.get(1)
    efficiency = {str(r): round(best[r] / (r * base), 4) for r in args.ranks if base}
    result = {
        "what": "data-parallel training throughput, examples/s of the slowest rank; "
                "efficiency = tput(N) / (N * tput(1)); best of repeats",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "worker", "note")},
        "note": args.note,
        "examples_per_second": {str(r): round(v, 2) for r, v in best.items()},
        "runs": {str(r): v for r, v in runs.items()},
        "efficiency": efficiency,
    }
    print(json.dumps({"examples_per_second": result["examples_per_second"],
                      "efficiency": efficiency}, indent=1))
    if args.out:
        from fairat.io import write_json_atomic

        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
