"""What more than one step needs: the device and process group, and the training's MLflow run.

torch is imported inside the functions that need it: compare and the gate read only JSON through
this module, and a stage process that never imports torch starts about 2 s of CPU sooner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairat.config import Params, to_dict

if TYPE_CHECKING:
    import torch

    from fairat.engine.distributed import DistContext


def device_and_context(name: str) -> tuple[torch.device, DistContext]:
    """The device named in params and the process group; under torchrun each rank takes its GPU.

    On a GPU, rank 0 prints what it runs on (GPU, driver, CUDA, torch: the pod log shows it)."""
    import torch

    from fairat.engine.device import resolve_device
    from fairat.engine.distributed import init_distributed
    from fairat.engine.threads import fit_torch_threads
    from fairat.provenance import accelerator_facts

    device = resolve_device(name)
    ctx = init_distributed(device.type)
    fit_torch_threads()  # threads for the CPUs this rank may use (affinity, cgroup quota, ranks)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if device.type == "cuda" and ctx.is_main:
        print("device: " + ", ".join(f"{k} {v}" for k, v in accelerator_facts(device).items()),
              flush=True)
    return device, ctx


def run_params(params: Params, device: torch.device) -> dict[str, Any]:
    """What a training run logs as its MLflow params: the params tree, plus, on a GPU, the
    ``accelerator`` it ran on (:func:`fairat.provenance.accelerator_facts`: GPU, driver, CUDA,
    torch), so the registered model's run says which node's GPU produced it."""
    from fairat.provenance import accelerator_facts

    tree = to_dict(params)
    facts = accelerator_facts(device)
    return {**tree, "accelerator": facts} if facts else tree


def run_id_of(train_metrics_path: str | Path | None) -> str | None:
    """The MLflow run id the train step recorded, or None (tracking off / file missing)."""
    if train_metrics_path is None or not Path(train_metrics_path).is_file():
        return None
    return json.loads(Path(train_metrics_path).read_text()).get("mlflow_run_id")
