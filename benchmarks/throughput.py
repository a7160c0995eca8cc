"""Adversarial-training throughput on this CPU: our `pgd_at` and `fairat` against a textbook loop.

What is compared (same model, same initial weights, same data, same PGD settings, same threads):

- ``reference``: the loop most public adversarial-training scripts use, written here from scratch
  with no fairat training code: a ``DataLoader`` over PIL images with torchvision transforms
  (RandomCrop(padding=4), RandomHorizontalFlip, ToTensor), the model in train mode during the
  attack, and PGD whose every step calls ``loss.backward()`` (so it also computes, and throws away,
  every weight gradient), then one SGD step on the adversarial batch.
- ``pgd_at``: :class:`fairat.engine.training.Trainer` with ``method: pgd_at``.
- ``fairat``: the same Trainer with ``method: fairat`` (warmup 0, hard_ratio 0.2, copies 1,
  default augmentation family). Hard examples are chosen from scores, so one untimed epoch first
  fills the tracker's scores; every timed fairat epoch then trains hard-example copies too.

Only training epochs are timed (wall clock around one epoch, after an untimed warm-up), the loops
are interleaved in a rotating order, each is measured ``--repeats`` times and the median is
reported. Results go to a JSON file (written atomically) and a small table on stdout.

Targets: ``pgd_at`` examples/s >= 1.5x the reference; FairAT's cost per trained
example <= 1.10x that of ``pgd_at`` (cost ratio = pgd_at ex/s / fairat ex/s).

Usage:
    python benchmarks/throughput.py [--out benchmarks/results/throughput.json]
        [--model small_cnn --width 32] [--examples 2048] [--batch-size 128] [--steps 10]
        [--threads 2] [--repeats 3] [--data PATH|digits] [--reference-workers 0 1]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fairat.config import AttackConfig, DataConfig, ModelConfig, TrainConfig
from fairat.engine.methods.fairat import FairATConfig
from fairat.engine.data import DataError, PreparedData, channel_stats, prepare
from fairat.io import write_json_atomic
from fairat.provenance import cpu_model, load_average
from fairat.engine.models import ModelSpec, build_model
from fairat.engine.training import Trainer, TrainPaths, epoch_generators, epoch_plan

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "throughput.json"
TARGET_PGD_AT_SPEEDUP = 1.5  # our pgd_at examples/s over the reference's
TARGET_FAIRAT_COST = 1.10  # fairat cost per trained example over pgd_at's
NOISY_SPREAD = 1.2  # max/min examples/s over one loop's repeats above which a run is flagged


# ------------------------------------------------------------------------------------------ data


def load_data(spec: str, examples: int, seed: int) -> tuple[PreparedData, dict[str, Any]]:
    """A stratified subset of about ``examples`` training images, and a description for the JSON.

    ``spec`` is the CIFAR-10 imagefolder tarball, or ``digits``. A missing tarball falls back to
    digits with a printed note (the JSON records which data was used).
    """
    note = ""
    if spec != "digits" and not Path(spec).exists():
        note = f"{spec} not found; fell back to scikit-learn digits (8x8 grey), not CIFAR-10"
        print(f"NOTE: {note}", flush=True)
        spec = "digits"
    per_class = max(1, examples // 10)
    if spec == "digits":
        source, cfg = "digits", DataConfig(source="digits", train_per_class=per_class, val_per_class=0,
                                           test_per_class=1, seed=seed)
    else:
        source, cfg = "cifar10-jpeg", DataConfig(source="imagefolder", root=str(spec),
                                                 train_per_class=per_class, val_per_class=0, test_per_class=1,
                                                 seed=seed)
    try:
        data = prepare(cfg)
    except DataError as err:  # fewer images per class than asked (digits has ~140): take all
        if "fewer than" not in str(err):
            raise
        data = prepare(replace(cfg, train_per_class=None))
        msg = f"asked for {per_class} per class but {err}; used every training image"
        note = f"{note}; {msg}" if note else msg
        print(f"NOTE: {msg}", flush=True)
    train = data.train
    info = {"source": source, "path": None if spec == "digits" else str(spec),
            "train_examples": len(train), "image_shape": list(train.images.shape[1:]),
            "classes": train.num_classes, "per_class": train.counts(), "note": note}
    return data, info


# ------------------------------------------------------------------------- the textbook reference


class PILDataset(torch.utils.data.Dataset):
    """Images as PIL Images (converted once, up front) with a torchvision transform per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        from PIL import Image

        arrays = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C) uint8
        grey = arrays.shape[3] == 1
        self.images = [Image.fromarray(a[..., 0] if grey else a, mode="L" if grey else "RGB")
                       for a in arrays]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


class ReferenceLoop:
    """What most public PGD-AT scripts do, on the same model, data, attack and optimiser settings."""

    def __init__(self, model: nn.Module, data: PreparedData, cfg: TrainConfig, workers: int,
                 max_batches: int | None) -> None:
        from torchvision import transforms

        size = data.train.images.shape[-1]
        transform = transforms.Compose([transforms.RandomCrop(size, padding=cfg.crop_padding),
                                        transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        self.dataset = PILDataset(data.train.images, data.train.labels, transform)
        # num_workers=0 by default: this machine has 2 cores and both run the model's math
        # (torch threads); loader worker processes would compete with that compute. Pass
        # --reference-workers 0 1 to also measure one worker (the faster variant is the baseline).
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=cfg.batch_size,
                                                  shuffle=True, num_workers=workers)
        self.model, self.cfg, self.max_batches = model, cfg, max_batches
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)

    def attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L-inf PGD with random start; every step is a full ``loss.backward()``."""
        a = self.cfg.attack
        x_adv = (x + torch.empty_like(x).uniform_(-a.eps, a.eps)).clamp(0, 1).detach()
        for _ in range(a.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(self.model(x_adv), y)
            self.model.zero_grad()
            loss.backward()  # also computes every weight gradient, as textbook scripts do
            with torch.no_grad():
                x_adv = x_adv + a.step_size * x_adv.grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - a.eps), x + a.eps).clamp(0, 1)
        return x_adv.detach()

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.train()  # train mode during the attack too, as most scripts do
        x_adv = self.attack(x, y)
        loss = F.cross_entropy(self.model(x_adv), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def epoch(self, limit: int | None = None) -> int:
        """One pass over the DataLoader (at most ``limit`` batches); returns examples trained."""
        limit = limit or self.max_batches
        n = 0
        for i, (x, y) in enumerate(self.loader):
            if limit is not None and i >= limit:
                break
            self.train_batch(x, y)
            n += y.numel()
        return n


# ----------------------------------------------------------------------------- our Trainer loops


class OurLoop:
    """fairat.engine.training.Trainer, timed one train_epoch at a time (no validation, no checkpoints)."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, data: PreparedData,
                 workdir: Path) -> None:
        paths = TrainPaths(workdir / "model.pt", workdir / "checkpoints", workdir / "metrics.json",
                           workdir / "history.csv")
        self.trainer = Trainer(model_cfg, cfg, data, paths, device=torch.device("cpu"))
        self.next_epoch = 0

    def warm_up_batch(self) -> None:
        """One untimed batch (allocator, oneDNN primitives), outside any epoch."""
        t = self.trainer
        idx = torch.arange(min(t.cfg.batch_size, len(t.labels)))
        t.train_batch(idx, torch.zeros(idx.numel(), dtype=torch.bool),
                      torch.Generator().manual_seed(12345))

    def planned_copies(self, epoch: int) -> int:
        """Hard-example copies the epoch will train, from the same (deterministic) plan it draws."""
        t, cfg = self.trainer, self.trainer.cfg
        hard = t.hook.select(t, epoch)  # FairAT's hook after its warm-up; none for the others
        if not t.hook.copies or hard.numel() == 0:
            return 0
        plan_gen, _ = epoch_generators(cfg.seed, epoch, t.device)
        batches = epoch_plan(len(t.labels), hard, t.hook.copies,
                             cfg.batch_size, 1, plan_gen, cfg.max_batches)
        return int(sum(int(c.sum()) for _, c in batches))

    def epoch(self) -> dict[str, Any]:
        copies = self.planned_copies(self.next_epoch)
        start = time.perf_counter()
        record = self.trainer.train_epoch(self.next_epoch)
        wall = time.perf_counter() - start
        self.next_epoch += 1
        return {"examples": record["examples"], "seconds": wall,
                "inner_seconds": record["seconds"], "copies": copies,
                "hard_count": record["hard_count"]}


# --------------------------------------------------------------------------------------- driver


def machine_info(threads: int) -> dict[str, Any]:
    import torchvision

    model_name = cpu_model()
    return {"cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": model_name, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "threads": threads,
            "torch_num_threads": torch.get_num_threads()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="CIFAR-10 imagefolder tarball, or 'digits' (also the fallback if missing)")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--examples", type=int, default=2048,
                   help="training subset size (examples/10 per class)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per loop; median reported")
    p.add_argument("--max-batches", type=int, default=None,
                   help="batches per timed epoch for every loop (default: one pass over the "
                        "subset, so all loops train the same number of examples per epoch)")
    p.add_argument("--reference-workers", type=int, nargs="+", default=[0],
                   help="DataLoader num_workers values to measure for the reference")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("width", "examples", "batch_size", "threads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps < 0 or any(w < 0 for w in args.reference_workers):
        p.error("--steps and --reference-workers must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(old_threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    load_start = load_average()
    data, data_info = load_data(args.data, args.examples, args.seed)
    n = len(data.train)
    max_batches = args.max_batches or math.ceil(n / args.batch_size)
    attack = AttackConfig(eps=8 / 255, step_size=2 / 255, steps=args.steps)
    fair = FairATConfig(warmup=0.0, hard_ratio=0.2, copies=1)
    base = TrainConfig(method="pgd_at", epochs=args.repeats + 2, batch_size=args.batch_size,
                       schedule="constant", attack=attack, fairat=fair, seed=args.seed,
                       device="cpu", amp="off", checkpoint="last", max_batches=max_batches,
                       progress=False)
    model_cfg = ModelConfig(name=args.model, width=args.width)
    print(f"data {data_info['source']}: {n} training images {tuple(data_info['image_shape'])}; "
          f"{args.model} width {args.width}; batch {args.batch_size}; PGD-{args.steps}; "
          f"{args.threads} threads; {max_batches} batches per timed epoch; "
          f"{args.repeats} repeats", flush=True)

    with tempfile.TemporaryDirectory(prefix="fairat-bench-") as tmp:  # Trainer paths; unused
        report = _measure(args, data, data_info, base, model_cfg, max_batches, Path(tmp))
    report["machine"].update(load_average_start=load_start, load_average_end=load_average())
    write_json_atomic(args.out, report)
    _print_table(report)
    print(f"wrote {args.out}", flush=True)
    return report


def _measure(args: argparse.Namespace, data: PreparedData, data_info: dict[str, Any],
             base: TrainConfig, model_cfg: ModelConfig, max_batches: int,
             workdir: Path) -> dict[str, Any]:
    n = len(data.train)
    attack, fair = base.attack, base.fairat
    loops: dict[str, Callable[[], dict[str, Any]]] = {}

    # Reference: the same architecture and initial weights the Trainer builds (seeded the same way).
    mean, std = channel_stats(data.train)
    spec = ModelSpec(data.train.images.shape[1], data.train.num_classes,
                     data.train.images.shape[2], mean, std)
    for workers in args.reference_workers:
        torch.manual_seed(args.seed)
        ref = ReferenceLoop(build_model(args.model, spec, args.width), data, base, workers,
                            max_batches)
        ref.epoch(limit=1)  # warm-up batch, not counted

        def run_ref(ref: ReferenceLoop = ref) -> dict[str, Any]:
            start = time.perf_counter()
            examples = ref.epoch()
            return {"examples": examples, "seconds": time.perf_counter() - start}

        loops[f"reference_workers{workers}"] = run_ref

    ours = {"pgd_at": OurLoop(model_cfg, replace(base, method="pgd_at"), data, workdir / "pgd_at"),
            "fairat": OurLoop(model_cfg, replace(base, method="fairat"), data, workdir / "fairat")}
    ours["pgd_at"].warm_up_batch()
    print("fairat: untimed epoch to score every example ...", flush=True)
    ours["fairat"].epoch()  # epoch 0: no scores yet, so no copies; fills the tracker (and warms up)
    for name, loop in ours.items():
        loops[name] = loop.epoch

    names = list(loops)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate to spread drift evenly
        for name in order:
            rec = loops[name]()
            rec["examples_per_second"] = rec["examples"] / max(rec["seconds"], 1e-9)
            runs[name].append(rec)
            print(f"  repeat {r + 1}/{args.repeats} {name:>20}: {rec['examples']} ex in "
                  f"{rec['seconds']:.2f} s = {rec['examples_per_second']:.2f} ex/s", flush=True)

    results: dict[str, Any] = {}
    for name, recs in runs.items():
        eps = [rec["examples_per_second"] for rec in recs]
        results[name] = {"examples_per_second": statistics.median(eps),
                         "examples_per_second_runs": eps, "spread": max(eps) / min(eps),
                         "examples_per_epoch": recs[0]["examples"],
                         "seconds_runs": [rec["seconds"] for rec in recs]}
        if "copies" in recs[0]:
            results[name]["inner_seconds_runs"] = [rec["inner_seconds"] for rec in recs]
        if name == "fairat":
            results[name]["copies_per_epoch_runs"] = [rec["copies"] for rec in recs]
            results[name]["hard_count_runs"] = [rec["hard_count"] for rec in recs]
            results[name]["copies_per_epoch"] = statistics.median(
                [rec["copies"] for rec in recs])

    ref_names = [k for k in results if k.startswith("reference")]
    baseline = max(ref_names, key=lambda k: results[k]["examples_per_second"])
    ref_eps = results[baseline]["examples_per_second"]
    pgd_eps = results["pgd_at"]["examples_per_second"]
    fair_eps = results["fairat"]["examples_per_second"]
    speedup = pgd_eps / ref_eps
    cost = pgd_eps / fair_eps
    # Per-repeat ratios (same repeat index = measured close together in time): a noise check.
    speedup_runs = [p / r for p, r in zip(results["pgd_at"]["examples_per_second_runs"],
                                          results[baseline]["examples_per_second_runs"])]
    cost_runs = [p / f for p, f in zip(results["pgd_at"]["examples_per_second_runs"],
                                       results["fairat"]["examples_per_second_runs"])]

    spread = max(r["spread"] for r in results.values())
    warning = (f"the runs of one loop differ by up to {spread:.2f}x: the CPU was probably shared "
               f"with other work, so rerun on a quiet machine before trusting the ratios"
               if spread > NOISY_SPREAD else None)
    report = {
        "machine": machine_info(args.threads),
        "noise": {"max_spread": spread, "threshold": NOISY_SPREAD, "warning": warning},
        "data": data_info,
        "settings": {
            "model": args.model, "width": args.width, "batch_size": args.batch_size,
            "train_examples": n, "batches_per_timed_epoch": max_batches,
            "attack": {"eps": attack.eps, "step_size": attack.step_size, "steps": attack.steps,
                       "random_start": True, "loss": "ce"},
            "optimizer": {"name": "sgd", "lr": base.lr, "momentum": base.momentum,
                          "weight_decay": base.weight_decay},
            "augmentation": f"random crop (padding {base.crop_padding}) + horizontal flip",
            "threads": args.threads, "repeats": args.repeats, "seed": args.seed,
            "fairat": {"warmup": fair.warmup, "hard_ratio": fair.hard_ratio,
                       "copies": fair.copies, "augment": list(fair.augment), "score": fair.score,
                       "base": fair.base},
            "reference": {"dataloader_workers": args.reference_workers,
                          "transforms": "RandomCrop(padding) + RandomHorizontalFlip + ToTensor",
                          "attack_model_mode": "train", "attack_gradients": "loss.backward()",
                          "baseline": baseline},
            "ours": {"attack_model_mode": "eval",
                     "attack_gradients": "torch.autograd.grad w.r.t. the perturbation only"},
            "timing": ("wall clock around one training epoch (train_epoch for ours, a DataLoader "
                       "pass for the reference) after an untimed warm-up; loops interleaved in "
                       "rotating order; median over repeats"),
        },
        "results": results,
        "ratios": {
            "pgd_at_vs_reference": speedup,
            "pgd_at_vs_reference_runs": speedup_runs,
            "fairat_cost_vs_pgd_at": cost,
            "fairat_cost_vs_pgd_at_runs": cost_runs,
        },
        "targets": {
            "pgd_at_vs_reference_min": TARGET_PGD_AT_SPEEDUP,
            "pgd_at_vs_reference_met": speedup >= TARGET_PGD_AT_SPEEDUP,
            "fairat_cost_vs_pgd_at_max": TARGET_FAIRAT_COST,
            "fairat_cost_vs_pgd_at_met": cost <= TARGET_FAIRAT_COST,
        },
    }
    return report


def _print_table(report: dict[str, Any]) -> None:
    res, ratios, targets = report["results"], report["ratios"], report["targets"]
    print(f"\n{'loop':<22}{'ex/s (median)':>15}{'ex/epoch':>10}  runs")
    for name, r in res.items():
        runs = ", ".join(f"{v:.1f}" for v in r["examples_per_second_runs"])
        extra = f"  ({r['copies_per_epoch']:g} copies/epoch)" if "copies_per_epoch" in r else ""
        print(f"{name:<22}{r['examples_per_second']:>15.2f}{r['examples_per_epoch']:>10}  "
              f"[{runs}]{extra}")
    ok = {True: "met", False: "NOT met"}
    print(f"\npgd_at / reference ({report['settings']['reference']['baseline']}): "
          f"{ratios['pgd_at_vs_reference']:.2f}x  (target >= {TARGET_PGD_AT_SPEEDUP}: "
          f"{ok[targets['pgd_at_vs_reference_met']]})")
    print(f"fairat cost per trained example / pgd_at: {ratios['fairat_cost_vs_pgd_at']:.3f}x  "
          f"(target <= {TARGET_FAIRAT_COST}: {ok[targets['fairat_cost_vs_pgd_at_met']]})")
    if report["noise"]["warning"]:
        print(f"WARNING: {report['noise']['warning']}")
    print(f"load average start {report['machine']['load_average_start']} end "
          f"{report['machine']['load_average_end']} on {report['machine']['cpu_count']} CPUs")


if __name__ == "__main__":
    main(sys.argv[1:])
