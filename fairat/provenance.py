"""Where a result came from: library versions, the git commit of the code that produced it, and
the machine its wall time was measured on.

Why apart from the engine: evaluation records these facts in its report, and registration and the
model card record them on the model version; both read them here.
"""

from __future__ import annotations

import os
import platform
import re
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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; all of them where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(device: torch.device, world_size: int = 1) -> str:
    """One line naming what a run's wall time was measured on: the accelerator (or CPU model),
    the CPU cores this process may use, torch's thread count and the number of processes.

    Why a line, and why these fields: two training times are a cost ratio only when both ran on
    the same kind of machine. A Kubeflow pod may land on another node than the baseline's, and a
    study cell may be resumed on another machine; equal lines are what makes the ratio mean
    something, and a person reads the line on the model card. No host name: it says nothing about
    speed and need not leave the cluster.
    """
    cores = usable_cores()
    if device.type == "cuda":
        what = f"cuda: {torch.cuda.get_device_name(device)}"
    else:
        what = f"{device.type}: {cpu_model() or 'unknown CPU'}"
    return (f"{what}; {cores} cores usable, {torch.get_num_threads()} torch threads, "
            f"{world_size} process{'es' if world_size != 1 else ''}")


NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")  # the kernel module's own line
_DRIVER = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)")


def nvidia_driver_version(version_file: Path = NVIDIA_VERSION_FILE) -> str | None:
    """The NVIDIA driver's version (``580.65.06``), from the kernel module's version file, else
    ``nvidia-smi``; None where neither answers (no driver, or not visible in this container)."""
    try:
        match = _DRIVER.search(version_file.read_text(errors="replace"))
        if match:
            return match[1]
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def accelerator_facts(device: torch.device) -> dict[str, str]:
    """What a GPU run ran on, for the training run's params and the model's provenance: the GPU,
    its compute capability and memory, how many this process sees, the NVIDIA driver, the CUDA
    and cuDNN versions of the torch build, and torch's version. ``{}`` on CPU.

    Why: a model trained on GPU depends on the node it landed on (a driver too old for the build,
    another GPU generation); these are what an operator compares when two runs disagree.
    """
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"gpu": props.name, "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": f"{props.total_memory / 2**30:.1f}",
            "gpus_visible": str(torch.cuda.device_count()),
            "nvidia_driver": nvidia_driver_version() or "unknown",
            "cuda": torch.version.cuda or "unknown", "cudnn": str(cudnn or "unknown"),
            "torch": torch.__version__}
