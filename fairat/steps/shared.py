"""What more than one step needs: the device and process group, and the training's MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fairat.engine.distributed import DistContext, init_distributed
from fairat.engine.device import resolve_device
from fairat.engine.threads import fit_torch_threads


def device_and_context(name: str) -> tuple[torch.device, DistContext]:
    """The device named in params and the process group; under torchrun each rank takes its GPU."""
    device = resolve_device(name)
    ctx = init_distributed(device.type)
    fit_torch_threads()  # threads for the CPUs this rank may use (affinity, cgroup quota, ranks)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device, ctx


def run_id_of(train_metrics_path: str | Path | None) -> str | None:
    """The MLflow run id the train step recorded, or None (tracking off / file missing)."""
    if train_metrics_path is None or not Path(train_metrics_path).is_file():
        return None
    return json.loads(Path(train_metrics_path).read_text()).get("mlflow_run_id")
