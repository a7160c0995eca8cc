"""Which torch device a run uses: resolved once by the step, then passed down.

Kept apart from training so that evaluation (and its DVC stage) does not depend on the training
loop's code just to pick a device.

A GPU that was asked for (``device: cuda``, or a Kubeflow task that requested GPUs) and cannot
be used is an error, never a quiet CPU run: :func:`gpu_problem` names the cause in one line (a
CPU build of torch, no driver or device visible to the container, a driver too old for this
torch's CUDA, a GPU older than the build supports, fewer GPUs than requested).
"""

from __future__ import annotations

import re

import torch

# What the project image's torch build needs from the node (see the Dockerfile's labels).
DRIVER_NEEDED = {"13": "R580 or newer", "12": "R525 or newer"}
_SM = re.compile(r"^sm_(\d+)$")


class GpuUnavailableError(ValueError):
    """GPUs were requested and this process cannot use them; the message says why."""


def _driver_needed() -> str:
    major = (torch.version.cuda or "").split(".")[0]
    return DRIVER_NEEDED.get(major, "one that supports it")


def _oldest_supported_arch() -> tuple[int, int] | None:
    """The oldest compute capability this torch build has kernels for (e.g. (7, 5): Turing)."""
    found = [int(m[1]) for m in map(_SM.match, torch.cuda.get_arch_list()) if m]
    return divmod(min(found), 10) if found else None


def gpu_problem(count: int = 1) -> str | None:
    """Why this process cannot train on ``count`` CUDA GPUs, in one line; None when it can."""
    build = torch.version.cuda
    if build is None:
        return (f"this torch build ({torch.__version__}) is a CPU build without CUDA; use the "
                "CUDA build of torch (the project image has it)")
    try:
        torch.cuda.init()  # raises with the driver's own reason when CUDA cannot start
    except (RuntimeError, AssertionError) as err:
        reason = " ".join(str(err).split())
        lowered = reason.lower()
        if "too old" in lowered:
            return (f"the NVIDIA driver is too old for this torch build (CUDA {build} needs a "
                    f"driver {_driver_needed()}): {reason}")
        if "no nvidia driver" in lowered or "no cuda gpus" in lowered:
            return (f"no GPU is visible to this process (torch {torch.__version__}, CUDA "
                    f"{build}): {reason}. On Kubernetes the pod must request the GPU resource "
                    "(e.g. nvidia.com/gpu) on a node that runs the NVIDIA device plugin")
        return f"CUDA cannot start (torch {torch.__version__}, CUDA {build}): {reason}"
    visible = torch.cuda.device_count()
    if visible < count:
        return (f"{count} GPUs were requested but {visible} {'is' if visible == 1 else 'are'} "
                "visible to this process (check the pod's GPU limit and CUDA_VISIBLE_DEVICES)")
    oldest = _oldest_supported_arch()
    for index in range(count):
        capability = torch.cuda.get_device_capability(index)
        if oldest and capability < oldest:
            return (f"GPU {index} ({torch.cuda.get_device_name(index)}, compute capability "
                    f"{capability[0]}.{capability[1]}) is older than this torch build supports "
                    f"({oldest[0]}.{oldest[1]} and newer, e.g. Turing); schedule the task on a "
                    "newer GPU")
    return None


def require_gpus(count: int, why: str) -> None:
    """Raise :class:`GpuUnavailableError` (``why``: who asked, then the cause) unless ``count``
    CUDA GPUs are usable here."""
    problem = gpu_problem(count)
    if problem:
        raise GpuUnavailableError(f"{why}, and training refuses to run on CPU instead: {problem}")


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else CPU; asking for CUDA without one is an error that
    names the cause (:func:`gpu_problem`)."""
    if name == "cuda":
        require_gpus(1, "device 'cuda' was requested")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
