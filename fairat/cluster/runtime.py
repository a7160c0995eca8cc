"""What the Kubeflow components run inside the project image: artifact folders in, step calls out.

Why here and not in the components: a kfp component's body is shipped as source text and is hard to
test, so each one is a single call into this module. This module only maps KFP artifact folders to
the file names the CLI and DVC use (``model.pt``, ``eval.json``, ``gate.json`` ...) and calls
:mod:`fairat.steps`; the ML and MLOps logic stays in the steps.

Every ``params`` argument is the ``key=value`` text of :func:`fairat.cluster.params.knob_lines`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fairat.config import ConfigError, Params, to_dict, with_overrides
from fairat.engine.metrics import numeric_metrics
from fairat.io import atomic_folder, write_text_atomic
from fairat.cluster.params import accelerator_count, params_from_lines

from fairat.artifacts import (COMPARISON_JSON, EVAL_JSON, EVAL_PNG, GATE_JSON, MODEL,
                              REGISTERED_JSON, TRAIN_CSV, TRAIN_JSON)


def run_prepare(params: str, data_dir: str) -> None:
    from fairat.steps.prepare import prepare_step

    prepare_step(params_from_lines(params), data_dir)


RUN_ID_ENV = "FAIRAT_RUN_ID"  # a run id for callers outside KFP (the pipeline passes its own)


def run_key(cfg: Params, run_id: str = "") -> str:
    """``fairat-<16 hex>``: where one training run keeps its checkpoints, and its TrainJob's name.

    The hash covers the run id and the decoded params, so every retry of a run (KFP retries a
    task, and "Retry" of a failed run, under the same run id) finds the checkpoints of the
    attempts before it, while another run, or the same run id with other knobs, starts apart.
    ``run_id`` is the KFP run's uuid (the pipeline passes ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``);
    empty: ``$FAIRAT_RUN_ID``, else the params alone (two runs with identical knobs then share
    checkpoints, and the second resumes the first). A DNS-1035 label: usable as a Kubernetes
    name, a folder name and an S3 key.
    """
    run_id = run_id_or_env(run_id)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=True)
    return "fairat-" + hashlib.sha256(f"{run_id}\n{text}".encode()).hexdigest()[:16]


def run_id_or_env(run_id: str = "") -> str:
    """The run id given, else ``$FAIRAT_RUN_ID``, else ""; an unsubstituted KFP placeholder
    (``{{$.pipeline_job_uuid}}`` on a backend that does not fill it in) counts as none."""
    run_id = (run_id or os.environ.get(RUN_ID_ENV, "")).strip()
    return "" if "{{" in run_id else run_id


def checkpoint_location(checkpoint_url: str, key: str) -> str:
    """``<checkpoint_url>/<key>``, after checking that the URL is ``s3://bucket[/prefix]``."""
    from fairat.edge.storage import parse_prefix_url

    return str(parse_prefix_url(checkpoint_url).child(key))


def torchrun_command(params_file: Path, data_dir: str, model_dir: str, train_dir: str,
                     checkpoints: Path, gpus_per_node: int,
                     checkpoint_url: str | None = None) -> list[str]:
    """`torch.distributed.run` launching `fairat train --resume` with one process per GPU of
    this node (``checkpoint_url``: mirrored there, see :func:`fairat.steps.train.train_step`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={gpus_per_node}", "-m", "fairat", "train",
           "--params", str(params_file), "--data", data_dir,
           "--model", str(Path(model_dir) / MODEL), "--checkpoints", str(checkpoints),
           "--metrics", str(Path(train_dir) / TRAIN_JSON),
           "--history", str(Path(train_dir) / TRAIN_CSV), "--resume"]
    return cmd + (["--checkpoint-url", checkpoint_url] if checkpoint_url else [])


def run_train(params: str, data_dir: str, model_dir: str, train_dir: str,
              gpus_per_node: int | str, num_nodes: int, trainjob: str = "",
              accelerator_type: str = "nvidia.com/gpu", checkpoint_url: str = "",
              run_id: str = "") -> dict[str, float]:
    """Train into ``model_dir/model.pt`` and ``train_dir/{train.json,train.csv}``.

    Without ``trainjob`` (the pipeline compiled without a shared volume) this pod trains, on one
    node: ``gpus_per_node > 1`` launches single-node data parallelism through torchrun (the
    training loop is rank-aware), otherwise one process trains. With ``trainjob`` (compiled with a
    shared volume; this pod then has no GPUs) the pod only launches a Kubeflow Trainer TrainJob of
    ``num_nodes`` x ``gpus_per_node`` ``accelerator_type`` (see :func:`stage_trainjob`), waits for
    it and copies its outputs back, because the training operator, not this pod, starts and wires
    the node pods.

    Checkpoints, so that a retried pod continues instead of starting again: in the TrainJob
    shape on the shared volume, in ``fairat-<key>/`` (:func:`run_key` of ``run_id`` and the
    params); in a pod of its own under ``checkpoint_url/<key>/`` on S3 (pushed after every epoch,
    fetched before training), or, with ``checkpoint_url`` empty, in pod scratch space only.
    ``gpus_per_node`` arrives as text (the pipeline parameter is a string, see
    :func:`fairat.cluster.params.accelerator_count`) and is checked here.
    Returns the flat numbers of the training summary for a Metrics artifact.
    """
    gpus_per_node = accelerator_count(gpus_per_node)
    if num_nodes < 1:
        raise ValueError(f"num_nodes={num_nodes} must be >= 1")
    cfg = params_from_lines(params)
    key = run_key(cfg, run_id)
    mirror = checkpoint_location(checkpoint_url, key) if checkpoint_url else None
    launcher = bool(trainjob or num_nodes > 1)  # holds no GPUs: the TrainJob's nodes do
    if gpus_per_node > 0 and not launcher:
        from fairat.engine.device import require_gpus

        cfg = on_requested_gpus(cfg, gpus_per_node)
        require_gpus(gpus_per_node, f"the train task requested {gpus_per_node} GPU"
                     f"{'s' if gpus_per_node > 1 else ''} (gpus_per_node={gpus_per_node})")
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    Path(train_dir).mkdir(parents=True, exist_ok=True)
    if launcher:  # without trainjob settings, stage_trainjob says what is missing
        _train_with_trainjob(params, data_dir, model_dir, train_dir, gpus_per_node, num_nodes,
                             trainjob, accelerator_type, mirror, run_id)
        return numeric_metrics(json.loads((Path(train_dir) / TRAIN_JSON).read_text()))
    print(f"checkpoints: {mirror} (run key {key})" if mirror else
          "checkpoints: pod scratch space only (a retried pod starts again at epoch 1; set the "
          "checkpoint_url parameter to s3://bucket/prefix to resume instead)", flush=True)
    with tempfile.TemporaryDirectory(prefix="fairat-train-") as scratch:
        checkpoints = Path(scratch) / "checkpoints"
        if gpus_per_node > 1:
            params_file = Path(scratch) / "params.yaml"
            params_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            subprocess.run(torchrun_command(params_file, data_dir, model_dir, train_dir,
                                            checkpoints, gpus_per_node, mirror), check=True)
        else:
            from fairat.steps.train import train_step
            from fairat.engine.training import TrainPaths

            train_step(cfg, data_dir, TrainPaths(Path(model_dir) / MODEL, checkpoints,
                                                 Path(train_dir) / TRAIN_JSON,
                                                 Path(train_dir) / TRAIN_CSV),
                       resume=True, checkpoint_url=mirror)
    summary = json.loads((Path(train_dir) / TRAIN_JSON).read_text())
    return numeric_metrics(summary)


def on_requested_gpus(cfg: Params, gpus_per_node: int) -> Params:
    """``cfg`` for a task that requested ``gpus_per_node`` > 0 GPUs: ``train.device`` becomes
    ``cuda``, so every process (torchrun ranks, TrainJob nodes) refuses to train on CPU when no
    GPU is usable, instead of ``auto`` quietly falling back to it; ``train.device: cpu`` with
    GPUs requested contradicts itself and is refused. (The device is ignored on resume.)"""
    if gpus_per_node <= 0 or cfg.train.device == "cuda":
        return cfg
    if cfg.train.device == "cpu":
        raise ConfigError(f"train.device is cpu but the train task requests {gpus_per_node} "
                          f"GPU(s) (gpus_per_node={gpus_per_node}): set gpus_per_node to 0 to "
                          "train on CPU, or train.device to auto or cuda")
    return with_overrides(cfg, {"train.device": "cuda"})


_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def stage_trainjob(params: str, data_dir: str, gpus_per_node: int, num_nodes: int,
                   trainjob: str, accelerator_type: str = "nvidia.com/gpu",
                   checkpoint_url: str | None = None, run_id: str = "",
                   ) -> tuple[Any, str | None]:
    """Copy the prepared data and the params onto the shared volume; the TrainJob to run on them.

    Why a copy: the node pods cannot see this pod's artifact folders, only the shared
    PersistentVolumeClaim that the pipeline mounts here and the TrainJob mounts on every node (at
    the same path). Each run gets its own ``fairat-<key>`` folder there (:func:`run_key`: the
    run id and the params), so concurrent runs do not mix checkpoints, while a retried launcher
    finds the folder, the checkpoints and the TrainJob (named the same) of the attempt before it.
    Data already staged there is left alone (a TrainJob may be reading it); a first copy goes
    in whole or not at all. The params travel as a file, not as ``-S`` overrides, so the nodes
    read exactly the decoded, validated knobs.

    ``trainjob`` is the compile-time JSON of the pipeline (image, volume claim, mount path,
    namespace, Secret and ConfigMap *names*, keep_failed_trainjob). Returns ``(TrainJobSpec,
    namespace)``; a None namespace lets the SDK use this pod's service-account namespace.
    """
    from fairat.cluster.pods import node_label, toleration
    from fairat.cluster.trainjob import TrainJobSpec, credential_refs

    settings = json.loads(trainjob) if trainjob else {}
    if not settings.get("volume_claim"):
        raise ValueError(
            f"num_nodes={num_nodes} runs as a Kubeflow Trainer TrainJob, which needs a shared "
            "(ReadWriteMany) PersistentVolumeClaim for the prepared data and the outputs, and "
            "this pipeline was compiled without one: compile or submit with "
            "--shared-volume-claim NAME (see docs/kubeflow.md), or use num_nodes=1")
    cfg = params_from_lines(params)
    key = run_key(cfg, run_id)
    cfg = on_requested_gpus(cfg, gpus_per_node)  # the nodes refuse to train on CPU
    secret_env, config_map_env = credential_refs(
        settings["s3_secret"], settings["mlflow_secret"], settings["mlflow_auth_secret"],
        settings["endpoints_config_map"])
    run_dir = Path(settings["mount_path"]) / key
    if not (run_dir / "data").is_dir():
        with atomic_folder(run_dir / "data") as staged:
            shutil.copytree(data_dir, staged, dirs_exist_ok=True)
    write_text_atomic(run_dir / "params.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    labels = {"fairat/run-key": key}
    if _LABEL_VALUE.match(run_id_or_env(run_id)):
        labels["fairat/kfp-run-id"] = run_id_or_env(run_id)
    spec = TrainJobSpec(
        image=settings["image"], num_nodes=num_nodes, gpus_per_node=gpus_per_node,
        accelerator_type=accelerator_type,
        params_path=str(run_dir / "params.yaml"), data_dir=str(run_dir / "data"),
        work_dir=str(run_dir / "run"), volume_claim=settings["volume_claim"],
        mount_path=settings["mount_path"],
        secret_env=secret_env, config_map_env=config_map_env,
        checkpoint_url=checkpoint_url, name=key, labels=labels,
        # the GPU pod settings the pipeline was compiled with, as its own train pods get them
        cpu_per_node=settings.get("cpu_request"), memory_per_node=settings.get("memory_request"),
        tolerations=tuple(toleration(t) for t in settings.get("tolerations", ())),
        node_selector=dict(node_label(t) for t in settings.get("node_selector", ())),
        shm_size=settings.get("shm_size"),
        image_pull_secrets=tuple(settings.get("image_pull_secrets", ())))
    return spec, settings.get("namespace")


def _train_with_trainjob(params: str, data_dir: str, model_dir: str, train_dir: str,
                         gpus_per_node: int, num_nodes: int, trainjob: str,
                         accelerator_type: str, checkpoint_url: str | None = None,
                         run_id: str = "") -> None:
    """Stage, run the TrainJob to completion (or adopt the one a previous attempt of this run
    started), copy its outputs back.

    The staged folder is removed once the outputs are in the KFP artifacts; after a failure it
    stays on the volume, with its checkpoints, for the next attempt to resume from. A failed or
    cancelled TrainJob is deleted (:func:`fairat.cluster.trainjob.submit_trainjob`) unless the
    pipeline was compiled with ``--keep-failed-trainjob``.
    """
    from fairat.cluster.trainjob import submit_trainjob

    spec, namespace = stage_trainjob(params, data_dir, gpus_per_node, num_nodes, trainjob,
                                     accelerator_type, checkpoint_url, run_id)
    print(f"checkpoints: {Path(spec.work_dir) / 'checkpoints'} on the shared volume "
          f"{spec.volume_claim}" + (f", mirrored to {checkpoint_url}" if checkpoint_url else ""),
          flush=True)
    keep = bool(json.loads(trainjob).get("keep_failed_trainjob"))
    submit_trainjob(spec, namespace=namespace, wait=True, keep_failed=keep)
    work = Path(spec.work_dir)
    missing = [name for name in (MODEL, TRAIN_JSON, TRAIN_CSV) if not (work / name).is_file()]
    if missing:
        raise RuntimeError(f"TrainJob {spec.name} completed but {', '.join(missing)} are not in "
                           f"{work}: delete the TrainJob (kubectl delete trainjob {spec.name}) "
                           "and retry the run")
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


def run_compare(params: str, report_dir: str, train_dir: str, baseline_report_dir: str,
                baseline_train_dir: str, out_dir: str) -> dict[str, float]:
    """The model against the baseline trained beside it into ``out_dir/comparison.json`` (the
    numbers only, as `dvc repro` writes them); returns those numbers for a Metrics artifact."""
    from fairat.evidence.comparison import comparison_metrics
    from fairat.steps.compare import compare_step

    comparison = compare_step(params_from_lines(params), Path(report_dir) / EVAL_JSON,
                              Path(baseline_report_dir) / EVAL_JSON,
                              Path(out_dir) / COMPARISON_JSON, Path(train_dir) / TRAIN_JSON,
                              Path(baseline_train_dir) / TRAIN_JSON)
    return comparison_metrics(comparison)


def run_register(params: str, candidate: bool, data_dir: str, model_dir: str, train_dir: str,
                 report_dir: str, gate_dir: str, card_path: str, out_dir: str,
                 baseline_report_dir: str | None = None,
                 baseline_train_dir: str | None = None) -> dict[str, Any]:
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
                         plot_path=Path(report_dir) / EVAL_PNG, card_path=card_path,
                         baseline_report_path=(Path(baseline_report_dir) / EVAL_JSON
                                               if baseline_report_dir else None),
                         baseline_metrics_path=(Path(baseline_train_dir) / TRAIN_JSON
                                                if baseline_train_dir else None))
