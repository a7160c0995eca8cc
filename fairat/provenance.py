"""Where a result came from: library versions, the git commit of the code that produced it, and
the machine its wall time was measured on.

Why apart from the engine: evaluation records these facts in its report, and registration and the
model card record them on the model version; both read them here.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import fairat


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding the fairat package, or None."""
    cwd = Path(fairat.__file__).resolve().parent if cwd is None else cwd
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), or ''."""
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), name)
    except OSError:
        return name


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, rounded; above the core count, other work shared
    the machine while a time was measured. None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine(device: torch.device, world_size: int = 1) -> str:
    """One line naming what a run's wall time was measured on: the accelerator (or CPU model),
    the CPU cores this process may use, torch's thread count and the number of processes.

    Why a line, and why these fields: two training times are a cost ratio only when both ran on
    the same kind of machine. A Kubeflow pod may land on another node than the baseline's, and a
    study cell may be resumed on another machine; equal lines are what makes the ratio mean
    something, and a person reads the line on the model card. No host name: it says nothing about
    speed and need not leave the cluster.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.type == "cuda":
        what = f"cuda: {torch.cuda.get_device_name(device)}"
    else:
        what = f"{device.type}: {cpu_model() or 'unknown CPU'}"
    return (f"{what}; {cores} cores usable, {torch.get_num_threads()} torch threads, "
            f"{world_size} process{'es' if world_size != 1 else ''}")
