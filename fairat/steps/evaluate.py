"""Evaluate: class-wise clean / PGD / CW / AutoAttack report, chart and Markdown; logged to MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fairat.config import Params
from fairat.engine.checkpoint import load_model
from fairat.engine.data import MANIFEST_NAME, load_prepared
from fairat.artifacts import CLASSWISE_CSV
from fairat.engine.evaluation import classwise_csv, evaluate, summary_metrics, write_report
from fairat.evidence.files import sidecar_path, write_sidecar
from fairat.evidence.report import plot_classwise, report_markdown
from fairat.io import sha256_file, write_json_atomic, write_text_atomic
from fairat.steps.shared import device_and_context, run_id_of


def evaluate_step(params: Params, data_dir: str | Path, model_path: str | Path,
                  report_path: str | Path, plot_path: str | Path | None = None,
                  markdown_path: str | Path | None = None,
                  summary_path: str | Path | None = None,
                  train_metrics_path: str | Path | None = None) -> dict[str, Any]:
    """Class-wise clean / PGD / CW / AutoAttack evaluation of a trained model on one split.

    With tracking on and ``train_metrics_path`` naming the training's ``train.json``, the
    class-wise numbers and the written files are logged to the training's MLflow run, the same
    from the CLI, DVC and Kubeflow.

    Under `torchrun` every rank attacks its own blocks of examples, the per-sample flags are
    gathered (PGD/CW counts equal a one-process run's exactly) and only rank 0 writes outputs.
    """
    cfg = params.evaluate
    data = load_prepared(data_dir)
    split = getattr(data, cfg.split)
    if len(split) == 0:
        raise ValueError(f"evaluate.split: the {cfg.split!r} split of {data_dir} is empty")
    device, ctx = device_and_context(cfg.device)
    model, meta = load_model(model_path, device)
    if tuple(meta["class_names"]) != split.class_names:
        raise ValueError(f"{model_path} was trained on classes {meta['class_names']}, but "
                         f"{data_dir} holds {list(split.class_names)}")
    manifest = json.loads((Path(data_dir) / MANIFEST_NAME).read_text())
    training = meta.get("training") or {}
    provenance = {"model_sha256": sha256_file(model_path), "model_path": str(model_path),
                  "model_epoch": meta.get("selected", {}).get("epoch", meta.get("epoch")),
                  "model_selected_by": meta.get("selected", {}).get("by"),
                  "train_config": meta.get("config"), "data_content_hash": manifest["content_hash"],
                  "n_parameters": sum(p.numel() for p in model.parameters()),  # for the card
                  "data_source": manifest["source"], "split": cfg.split,
                  "train_seconds": training.get("seconds"),
                  # where that time was measured (None: sessions on several or unknown machines)
                  "train_machine": training.get("machine"),
                  "train_sessions": training.get("sessions"),
                  # the highest 1-minute load at an epoch end, and the cores it ran on: a time
                  # measured while other work shared the cores is no method's cost
                  "train_max_load": training.get("max_load"), "train_cores": training.get("cores")}
    training_run(params, train_metrics_path)  # a run this store lacks fails now, not after attacks
    report = evaluate(model, split.images, split.labels, split.class_names, cfg, device, provenance,
                      ctx=ctx)
    if not ctx.is_main:
        return report
    write_report(report, report_path)
    # the gate and register refuse a report edited after this (signed when a key is configured)
    write_sidecar(report_path, provenance["model_sha256"], cfg.split)
    if plot_path:
        plot_classwise(report, plot_path)
        write_text_atomic(Path(plot_path).with_name(CLASSWISE_CSV), classwise_csv(report))
    if markdown_path:
        write_text_atomic(markdown_path, report_markdown(report))
    if summary_path:
        write_json_atomic(summary_path, summary_metrics(report))
    for name, entry in report["attacks"].items():
        s = entry["summary"]
        print(f"{name:>11}: average {100 * s['average']:5.1f}%  worst {100 * s['worst']:5.1f}% "
              f"({s['worst_class']})  gap {100 * s['gap']:5.1f}", flush=True)
    for warning in report["consistency"]:
        print(f"WARNING: {warning['message']}", flush=True)
    track_evaluation_step(params, train_metrics_path, report_path,
                          [p for p in (plot_path, markdown_path) if p])
    return report


def training_run(params: Params, train_metrics_path: str | Path | None) -> str | None:
    """The training's MLflow run id that the evaluation will be logged to, checked to exist in
    this store; None when tracking is off or no training summary is named. Raises (before any
    work) when the summary is missing, names no run, or names a run of another store."""
    if not params.track.enabled or train_metrics_path is None:  # every rank checks: none hangs
        return None
    if not Path(train_metrics_path).is_file():
        raise FileNotFoundError(f"evaluate: training summary {train_metrics_path} is missing; "
                                "run `fairat train` first (or set track.enabled: false)")
    from fairat.edge.tracking import require_run

    run_id = run_id_of(train_metrics_path)
    require_run(run_id, "evaluate")
    return run_id


def track_evaluation_step(params: Params, train_metrics_path: str | Path | None,
                          report_path: str | Path,
                          extra_files: list[str | Path] = ()) -> str | None:
    """Log the evaluation report's class-wise numbers and files to the training's MLflow run.

    Does nothing (returns None) when tracking is off or training recorded no run; else the run id.
    """
    run_id = run_id_of(train_metrics_path)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 logs
    if not params.track.enabled or run_id is None or not is_main:
        return None
    from fairat.edge.tracking import log_evaluation

    report = json.loads(Path(report_path).read_text())
    log_evaluation(run_id, report, [Path(report_path), sidecar_path(report_path),
                                    *map(Path, extra_files)], sha256_file(report_path))
    return run_id
