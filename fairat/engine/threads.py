"""Torch threads that fit the CPUs this process may really use.

Why: torch sizes its intra-op pool from the machine's core count, not from what the process is
allowed. In a Kubernetes pod with a CPU limit, a CI runner, a container pinned to some cores or
four torchrun ranks on one host, that over-subscribes: threads wait on each other in OpenMP
barriers while the scheduler throttles them. On a shared 2-core machine the evaluation's PGD-20
ran about 20x slower with 2 threads than with 1 (issue 31). The usable count is the smallest of

- the CPUs in this process's affinity mask (``sched_getaffinity``: taskset, cpusets),
- the cgroup CPU quota, rounded up (v2 ``cpu.max``: "QUOTA PERIOD" or "max PERIOD"; v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, -1 meaning none),

divided by the processes sharing it (``LOCAL_WORLD_SIZE`` under torchrun), and reduced to
what other work leaves free: those CPUs minus the ones other work keeps busy now, measured from
``/proc/stat`` over half a second when the step starts, rounded. Why other work counts: on a
2-core machine with other jobs running, 2 threads were 8-21x slower than 1 for PGD-20 and for
training (benchmarks/threads.py), while on a quiet machine 2 threads gain at most 2x; fewer
threads when the cores are busy loses little and never collapses. Why a fresh sample and not the
1-minute load average: the load average still counts the pipeline's own previous stage for a
minute after it ended, so a quiet ``dvc repro`` ran its evaluation on 1 of 2 cores. Where
``/proc/stat`` is missing (not Linux) the 1-minute load average stands in. At least 1 thread.

An explicit choice wins: ``FAIRAT_THREADS``, else ``OMP_NUM_THREADS`` (which torch itself reads)
leaves the count alone.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def quota_v2(text: str | None) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("200000 100000" -> 2.0); None = no limit."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def quota_v1(quota_text: str | None, period_text: str | None) -> float | None:
    """CPUs allowed by cgroup v1 ``cfs_quota_us`` / ``cfs_period_us`` (-1 = no limit)."""
    if not quota_text or not period_text:
        return None
    quota, period = int(quota_text), int(period_text)
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_dirs(root: Path, proc_cgroup: str | None) -> list[Path]:
    """This process's cgroup folders that can hold a CPU quota, innermost first, up to each
    hierarchy's root. ``/proc/self/cgroup`` lines read "ID:CONTROLLERS:PATH": v2 has empty
    controllers (mounted at ``root``, or ``root/unified`` in hybrid mode), v1 names ``cpu``."""
    dirs: list[Path] = []
    for line in (proc_cgroup or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1], parts[2].strip().lstrip("/")
        if controllers == "":
            bases = [root, root / "unified"]
        elif "cpu" in controllers.split(","):
            bases = [root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"]
        else:
            continue
        for base in bases:
            if not base.is_dir():
                continue
            here = base / rel if rel else base
            while True:
                if here not in dirs:
                    dirs.append(here)
                if here == base or base not in here.parents:
                    break
                here = here.parent
    return dirs


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup",
                     proc_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota over this process's cgroup and its parents, in CPUs; None = none.

    ``root`` and ``proc_cgroup`` (the text of /proc/self/cgroup) are parameters so tests can
    point them at fake files."""
    root = Path(root)
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    limits = []
    for d in _own_cgroup_dirs(root, proc_cgroup):
        v2 = quota_v2(_read(d / "cpu.max"))
        v1 = quota_v1(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
        limits += [q for q in (v2, v1) if q is not None]
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the OS has no such call)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_1min() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def cpu_times(stat_text: str | None, cpus: set[int] | None = None) -> tuple[int, int] | None:
    """(total, idle) jiffies summed over the ``cpuN`` lines of ``/proc/stat`` text for the CPUs in
    ``cpus`` (all when None); idle counts iowait too. None when no such line is there."""
    total = idle = 0
    seen = False
    for line in (stat_text or "").splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        total += sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
        idle += fields[3] + (fields[4] if len(fields) > 4 else 0)
        seen = True
    return (total, idle) if seen else None


def busy_cpus(window: float = 0.5, cpus: set[int] | None = None,
              read: Callable[[], str | None] | None = None) -> float | None:
    """How many of ``cpus`` (default: this process's affinity set) other work keeps busy, from
    two reads of ``/proc/stat`` ``window`` seconds apart; None where there is no /proc/stat.
    This process sleeps meanwhile, so what is busy is someone else's work."""
    read = read or (lambda: _read(Path("/proc/stat")))
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = None
    first = cpu_times(read(), cpus)
    if first is None:
        return None
    time.sleep(window)
    second = cpu_times(read(), cpus)
    if second is None:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    n = len(cpus) if cpus else (os.cpu_count() or 1)
    return 0.0 if total <= 0 else n * max(0.0, min(1.0, (total - idle) / total))


def usable_threads(affinity: int | None = None, quota: float | None = None,
                   local_world_size: int | None = None, load: float | None = None) -> int:
    """Threads per process: min(affinity, ceil(quota), round(cpus - busy)) // local world size.

    At least 1. Arguments default to this process's facts (affinity mask, cgroup quota,
    LOCAL_WORLD_SIZE, CPUs other work keeps busy now: :func:`busy_cpus`, else the 1-minute load
    average); pass ``load=0`` to ignore other work."""
    affinity = affinity_cpus() if affinity is None else affinity
    if quota is None:
        quota = cgroup_cpu_limit()
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if load is None:
        load = busy_cpus()
        if load is None:
            load = _load_1min()
    cpus = affinity if quota is None else min(affinity, max(1, math.ceil(quota - 1e-9)))
    free = min(cpus, max(1, int(cpus - load + 0.5)))
    return max(1, free // max(1, local_world_size))


# One process running several steps in a row (`fairat run`, a study cell, the tests) keeps its
# choice this long: the busy-CPU sample costs half a second, and model and baseline trained
# back to back in one process then use the same count. A stage run by DVC is its own process.
RECHOOSE_AFTER_S = 60.0
_chosen: tuple[float, int] | None = None  # (monotonic time, count) of the last choice


def fit_torch_threads() -> int:
    """Set torch's intra-op threads to :func:`usable_threads` unless the user chose a count.

    ``FAIRAT_THREADS=N`` sets N; a set ``OMP_NUM_THREADS`` leaves torch's own choice. Returns the
    thread count in effect."""
    chosen = os.environ.get("FAIRAT_THREADS")
    if chosen:
        n = int(chosen)
        if n < 1:
            raise ValueError(f"FAIRAT_THREADS must be a positive integer, got {chosen!r}")
        torch.set_num_threads(n)
    elif not os.environ.get("OMP_NUM_THREADS"):
        global _chosen
        now = time.monotonic()
        if _chosen is None or now - _chosen[0] > RECHOOSE_AFTER_S:
            _chosen = (now, usable_threads())
        n = _chosen[1]
        if n != torch.get_num_threads():
            log.info("torch threads %d -> %d (CPUs this process may use, less those busy now)",
                     torch.get_num_threads(), n)
            torch.set_num_threads(n)
    return torch.get_num_threads()
