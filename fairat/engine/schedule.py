"""The epoch's shape, as pure functions of the config, the seed and the epoch: the learning rate at
any point of the run, the seeded generators, the global batch plan, and a run's cost over sessions.

Why apart from the loop: a resumed run, N ranks and one process must draw the same plan, so none
of this may depend on the Trainer's state.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fairat.config import TrainConfig
from fairat.engine.seeds import generator


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at ``progress`` = epochs done (fractional) / total epochs, in [0, 1]."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "piecewise":
        return cfg.lr * cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    return cfg.lr


def epoch_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, ...]:
    """(CPU generator for the plan, device generator for augmentation and attack starts)."""
    return generator(seed, "epoch", epoch, "plan"), generator(seed, "epoch", epoch, "device",
                                                              device=device)


def epoch_plan(n_train: int, hard: torch.Tensor, copies: int, batch_size: int, world_size: int,
               gen: torch.Generator, max_batches: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Global batches for one epoch: every training index once plus ``copies`` of each hard one.

    Returns a list of (indices, is_copy) per global batch. A final batch smaller than
    ``batch_size // 16`` is merged into the previous one (a sliver of a batch makes a noisy step),
    and so is one too small to give every rank an example. The plan therefore does not depend on
    the world size as long as ``world_size <= batch_size // 16`` (8 ranks at batch 128), which is
    what lets a checkpoint resume exactly on a different number of ranks.
    """
    entries = torch.cat([torch.arange(n_train), hard.repeat(copies)])
    is_copy = torch.cat([torch.zeros(n_train, dtype=torch.bool),
                         torch.ones(hard.numel() * copies, dtype=torch.bool)])
    order = torch.randperm(entries.numel(), generator=gen)
    entries, is_copy = entries[order], is_copy[order]
    batches = list(zip(entries.split(batch_size), is_copy.split(batch_size)))
    if len(batches) > 1 and batches[-1][0].numel() < max(batch_size // 16, world_size):
        (a, ca), (b, cb) = batches[-2], batches[-1]
        batches[-2:] = [(torch.cat([a, b]), torch.cat([ca, cb]))]
    return batches[:max_batches] if max_batches else batches


def training_record(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """The cost of a run over all its sessions: total seconds and examples (None when a session's
    are unknown), total CPU seconds of the training process (``process_time``: with one thread
    per process it barely moves when other work shares the cores, unlike wall seconds; None for
    sessions recorded before it was), how many sessions, and the machine they ran on (None when
    they differ or one is unknown, since a sum of times from two machines is no one machine's
    cost)."""
    def total(key: str) -> float | None:
        values = [s.get(key) for s in sessions]
        return None if not values or None in values else sum(values)

    machines = list(dict.fromkeys(s["machine"] for s in sessions))
    seconds, cpu = total("seconds"), total("cpu_seconds")
    loads = [s.get("max_load") for s in sessions]  # None: a session that did not record it
    cores = [s.get("cores") for s in sessions]
    return {"seconds": None if seconds is None else round(seconds, 3),
            "cpu_seconds": None if cpu is None else round(cpu, 3),
            "examples_trained": total("examples_trained"), "sessions": len(sessions),
            "machine": machines[0] if len(machines) == 1 else None,
            "machines": machines,
            "max_load": None if not loads or None in loads else max(loads),
            "cores": None if not cores or None in cores else min(cores)}
