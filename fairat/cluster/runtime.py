"""What the Kubeflow components run inside the project image: artifact folders in, step calls out.

Why here and not in the components: a kfp component's body is shipped as source text and is hard to
test, so each one is a single call into this module. This module only maps KFP artifact folders to
the file names the CLI and DVC use (``model.pt``, ``eval.json``, ``gate.json`` ...) and calls
:mod:`fairat.steps`; the ML and MLOps logic stays in the steps.

Every ``params`` argument is the ``key=value`` text of :func:`fairat.cluster.params.knob_lines`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml

from fairat.config import to_dict
from fairat.engine.metrics import numeric_metrics
from fairat.io import write_text_atomic
from fairat.cluster.params import params_from_lines

from fairat.artifacts import EVAL_JSON, EVAL_PNG, GATE_JSON, MODEL, REGISTERED_JSON, TRAIN_CSV, TRAIN_JSON


def run_prepare(params: str, data_dir: str) -> None:
    from fairat.steps.prepare import prepare_step

    prepare_step(params_from_lines(params), data_dir)


def torchrun_command(params_file: Path, data_dir: str, model_dir: str, train_dir: str,
                     checkpoints: Path, gpus_per_node: int) -> list[str]:
    """`torch.distributed.run` launching `fairat train` with one process per GPU of this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={gpus_per_node}", "-m", "fairat", "train",
            "--params", str(params_file), "--data", data_dir,
            "--model", str(Path(model_dir) / MODEL), "--checkpoints", str(checkpoints),
            "--metrics", str(Path(train_dir) / TRAIN_JSON),
            "--history", str(Path(train_dir) / TRAIN_CSV)]


def run_train(params: str, data_dir: str, model_dir: str, train_dir: str, gpus_per_node: int,
              num_nodes: int, trainjob: str = "",
              accelerator_type: str = "nvidia.com/gpu") -> dict[str, float]:
    """Train into ``model_dir/model.pt`` and ``train_dir/{train.json,train.csv}``.

    Without ``trainjob`` (the pipeline compiled without a shared volume) this pod trains, on one
    node: ``gpus_per_node > 1`` launches single-node data parallelism through torchrun (the
    training loop is rank-aware), otherwise one process trains. With ``trainjob`` (compiled with a
    shared volume; this pod then has no GPUs) the pod only launches a Kubeflow Trainer TrainJob of
    ``num_nodes`` x ``gpus_per_node`` ``accelerator_type`` (see :func:`stage_trainjob`), waits for
    it and copies its outputs back, because the training operator, not this pod, starts and wires
    the node pods. Checkpoints go to a scratch folder: they are not part of the model artifact.
    Returns the flat numbers of the training summary for a Metrics artifact.
    """
    if num_nodes < 1:
        raise ValueError(f"num_nodes={num_nodes} must be >= 1")
    if gpus_per_node < 0:
        raise ValueError(f"gpus_per_node={gpus_per_node} must be >= 0")
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    Path(train_dir).mkdir(parents=True, exist_ok=True)
    if trainjob or num_nodes > 1:  # without trainjob settings, stage_trainjob says what is missing
        _train_with_trainjob(params, data_dir, model_dir, train_dir, gpus_per_node, num_nodes,
                             trainjob, accelerator_type)
        return numeric_metrics(json.loads((Path(train_dir) / TRAIN_JSON).read_text()))
    cfg = params_from_lines(params)
    with tempfile.TemporaryDirectory(prefix="fairat-train-") as scratch:
        checkpoints = Path(scratch) / "checkpoints"
        if gpus_per_node > 1:
            params_file = Path(scratch) / "params.yaml"
            params_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            subprocess.run(torchrun_command(params_file, data_dir, model_dir, train_dir,
                                            checkpoints, gpus_per_node), check=True)
        else:
            from fairat.steps.train import train_step
            from fairat.engine.training import TrainPaths

            train_step(cfg, data_dir, TrainPaths(Path(model_dir) / MODEL, checkpoints,
                                                 Path(train_dir) / TRAIN_JSON,
                                                 Path(train_dir) / TRAIN_CSV))
    summary = json.loads((Path(train_dir) / TRAIN_JSON).read_text())
    return numeric_metrics(summary)


def stage_trainjob(params: str, data_dir: str, gpus_per_node: int, num_nodes: int,
                   trainjob: str, accelerator_type: str = "nvidia.com/gpu",
                   ) -> tuple[Any, str | None]:
    """Copy the prepared data and the params onto the shared volume; the TrainJob to run on them.

    Why a copy: the node pods cannot see this pod's artifact folders, only the shared
    PersistentVolumeClaim that the pipeline mounts here and the TrainJob mounts on every node (at
    the same path). Each launch gets its own ``fairat-<id>`` folder there, so concurrent runs do
    not mix checkpoints. The params travel as a file, not as ``-S`` overrides, so the nodes read
    exactly the decoded, validated knobs.

    ``trainjob`` is the compile-time JSON of the pipeline (image, volume claim, mount path,
    namespace, Secret and ConfigMap *names*). Returns ``(TrainJobSpec, namespace)``; a None
    namespace lets the SDK use this pod's service-account namespace.
    """
    from fairat.cluster.trainjob import TrainJobSpec, credential_refs

    settings = json.loads(trainjob) if trainjob else {}
    if not settings.get("volume_claim"):
        raise ValueError(
            f"num_nodes={num_nodes} runs as a Kubeflow Trainer TrainJob, which needs a shared "
            "(ReadWriteMany) PersistentVolumeClaim for the prepared data and the outputs, and "
            "this pipeline was compiled without one: compile or submit with "
            "--shared-volume-claim NAME (see docs/kubeflow.md), or use num_nodes=1")
    cfg = params_from_lines(params)
    secret_env, config_map_env = credential_refs(
        settings["s3_secret"], settings["mlflow_secret"], settings["mlflow_auth_secret"],
        settings["endpoints_config_map"])
    run_dir = Path(settings["mount_path"]) / f"fairat-{uuid.uuid4().hex[:12]}"
    shutil.copytree(data_dir, run_dir / "data")
    write_text_atomic(run_dir / "params.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    spec = TrainJobSpec(
        image=settings["image"], num_nodes=num_nodes, gpus_per_node=gpus_per_node,
        accelerator_type=accelerator_type,
        params_path=str(run_dir / "params.yaml"), data_dir=str(run_dir / "data"),
        work_dir=str(run_dir / "run"), volume_claim=settings["volume_claim"],
        mount_path=settings["mount_path"],
        secret_env=secret_env, config_map_env=config_map_env,
        labels={"fairat/staging": run_dir.name})
    return spec, settings.get("namespace")


def _train_with_trainjob(params: str, data_dir: str, model_dir: str, train_dir: str,
                         gpus_per_node: int, num_nodes: int, trainjob: str,
                         accelerator_type: str) -> None:
    """Stage, run the TrainJob to completion (a failed job raises), copy its outputs back.

    The staged folder is removed once the outputs are in the KFP artifacts; after a failure it
    stays on the volume for inspection (its checkpoints let a manual ``--resume`` continue).
    """
    from fairat.cluster.trainjob import submit_trainjob

    spec, namespace = stage_trainjob(params, data_dir, gpus_per_node, num_nodes, trainjob,
                                     accelerator_type)
    submit_trainjob(spec, namespace=namespace, wait=True)
    work = Path(spec.work_dir)
    shutil.copy2(work / MODEL, Path(model_dir) / MODEL)
    for name in (TRAIN_JSON, TRAIN_CSV):
        shutil.copy2(work / name, Path(train_dir) / name)
    shutil.rmtree(work.parent)


def run_evaluate(params: str, data_dir: str, model_dir: str, report_dir: str, markdown_path: str,
                 chart_path: str, train_dir: str | None = None) -> dict[str, float]:
    """Class-wise evaluation into ``report_dir/{eval.json,eval_classwise.png}``.

    Also writes the class-wise report (Markdown) to ``markdown_path`` and an HTML page with the class-wise
    chart embedded to ``chart_path``, both for the Kubeflow UI. Returns ``<attack>_<average|worst|
    gap>`` fractions for a Metrics artifact.
    """
    from fairat.engine.evaluation import summary_metrics
    from fairat.steps.evaluate import evaluate_step

    report_file, png = Path(report_dir) / EVAL_JSON, Path(report_dir) / EVAL_PNG
    report = evaluate_step(params_from_lines(params), data_dir, Path(model_dir) / MODEL,
                           report_file, png, markdown_path,
                           train_metrics_path=Path(train_dir) / TRAIN_JSON if train_dir else None)
    write_text_atomic(chart_path, _chart_page(Path(markdown_path).read_text(), png))
    return numeric_metrics(summary_metrics(report))


def _chart_page(card_markdown: str, png: Path) -> str:
    """Self-contained HTML: the chart inlined (the UI cannot fetch side files) above the report text."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fairat class-wise report"
            "</title></head><body>"
            f"<img alt='class-wise robust accuracy' src='data:image/png;base64,{data}'>"
            f"<pre>{html.escape(card_markdown)}</pre></body></html>\n")


def run_gate(params: str, report_dir: str, model_dir: str, gate_dir: str) -> dict[str, Any]:
    """Fairness gate on ``report_dir/eval.json`` into ``gate_dir/gate.json``; returns the decision."""
    from fairat.steps.gate import gate_step

    return gate_step(params_from_lines(params), Path(report_dir) / EVAL_JSON,
                     Path(model_dir) / MODEL, Path(gate_dir) / GATE_JSON)


def run_register(params: str, candidate: bool, data_dir: str, model_dir: str, train_dir: str,
                 report_dir: str, gate_dir: str, card_path: str, out_dir: str) -> dict[str, Any]:
    """Write the model card (Markdown) to ``card_path`` and register the model in MLflow; the
    alias follows the gate file, checked against the branch.

    ``candidate`` says which branch of the pipeline's gate condition called this. A branch that
    disagrees with the decision file it was handed is a wiring bug, and registering anyway could
    mislabel a model, so it stops.
    """
    from fairat.evidence.gate import recorded_verdict
    from fairat.steps.register import register_step

    gate_file = Path(gate_dir) / GATE_JSON
    passed = recorded_verdict(gate_file)
    if passed != candidate:
        raise RuntimeError(f"{gate_file} says passed={passed} but the pipeline took the "
                           f"candidate={candidate} branch")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        print("MLFLOW_TRACKING_URI is not set: registering in the default store "
              "sqlite:///mlruns/mlflow.db under the working folder", flush=True)
    return register_step(params_from_lines(params), Path(model_dir) / MODEL,
                         Path(report_dir) / EVAL_JSON, gate_file, Path(train_dir) / TRAIN_JSON,
                         data_dir, Path(out_dir) / REGISTERED_JSON,
                         plot_path=Path(report_dir) / EVAL_PNG, card_path=card_path)
