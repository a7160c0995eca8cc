"""Pipeline steps, files in and files out: the one implementation behind the CLI, DVC and Kubeflow.

Each step reads only its inputs and writes only its outputs (atomically), so an orchestrator can
cache, retry or resume it. Paths are arguments, never hard-coded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fairat.checkpoint import load_model
from fairat.config import Params, to_dict
from fairat.data import MANIFEST_NAME, load_prepared, prepare, save_prepared
from fairat.distributed import init_distributed
from fairat.evaluation import (evaluate, plot_classwise, report_markdown, summary_metrics,
                               write_report)
from fairat.io import sha256_file, write_json_atomic, write_text_atomic
from fairat.training import TrainPaths, TrainSummary, resolve_device, train


def prepare_step(params: Params, out_dir: str | Path) -> dict[str, Any]:
    """Load, validate and subset the data; write train/val/test .npz and manifest.json."""
    data = prepare(params.data)
    manifest = save_prepared(data, out_dir, params.data)
    counts = {split: manifest["splits"][split]["n"] for split in manifest["splits"]}
    print(f"prepared {params.data.source}: {counts} -> {out_dir}", flush=True)
    return manifest


def train_step(params: Params, data_dir: str | Path, paths: TrainPaths,
               resume: bool = False, track: bool | None = None) -> TrainSummary:
    """Train ``params.train.method`` on prepared data; rank-aware under `torchrun`.

    ``track`` (default ``params.track.enabled``): rank 0 logs params and per-epoch metrics to an
    MLflow run and records its id in the metrics JSON as ``mlflow_run_id``.
    """
    data = load_prepared(data_dir)
    device = resolve_device(params.train.device)
    ctx = init_distributed(device.type)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if track is None:
        track = params.track.enabled
    if not (track and ctx.is_main):  # only rank 0 talks to MLflow
        summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                        device=device)
    else:
        from fairat.registry import training_run

        name = f"{params.train.method}-seed{params.train.seed}"
        with training_run(to_dict(params), params.track.experiment, name) as (run_id, on_epoch):
            summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                            device=device, on_epoch=on_epoch)
        record = json.loads(Path(paths.metrics).read_text())
        record["mlflow_run_id"] = run_id  # evaluate and register attach to this run
        write_json_atomic(paths.metrics, record)
    if ctx.is_main:
        print(f"trained {params.train.method}: {summary.epochs} epochs, model from epoch "
              f"{summary.chosen_epoch} ({summary.chosen_by}), "
              f"{summary.examples_per_second:.1f} examples/s -> {paths.model}", flush=True)
    return summary


def evaluate_step(params: Params, data_dir: str | Path, model_path: str | Path,
                  report_path: str | Path, plot_path: str | Path | None = None,
                  markdown_path: str | Path | None = None,
                  summary_path: str | Path | None = None) -> dict[str, Any]:
    """Class-wise clean / PGD / CW / AutoAttack evaluation of a trained model on one split.

    Under `torchrun` every rank attacks its own blocks of examples, the per-sample flags are
    gathered (PGD/CW counts equal a one-process run's exactly) and only rank 0 writes outputs.
    """
    cfg = params.evaluate
    data = load_prepared(data_dir)
    split = getattr(data, cfg.split)
    if len(split) == 0:
        raise ValueError(f"evaluate.split: the {cfg.split!r} split of {data_dir} is empty")
    device = resolve_device(cfg.device)
    ctx = init_distributed(device.type)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    model, meta = load_model(model_path, device)
    if tuple(meta["class_names"]) != split.class_names:
        raise ValueError(f"{model_path} was trained on classes {meta['class_names']}, but "
                         f"{data_dir} holds {list(split.class_names)}")
    manifest = json.loads((Path(data_dir) / MANIFEST_NAME).read_text())
    provenance = {"model_sha256": sha256_file(model_path), "model_path": str(model_path),
                  "model_epoch": meta.get("selected", {}).get("epoch", meta.get("epoch")),
                  "model_selected_by": meta.get("selected", {}).get("by"),
                  "train_config": meta.get("config"), "data_content_hash": manifest["content_hash"],
                  "data_source": manifest["source"], "split": cfg.split}
    report = evaluate(model, split.images, split.labels, split.class_names, cfg, device, provenance,
                      ctx=ctx)
    if not ctx.is_main:
        return report
    write_report(report, report_path)
    if plot_path:
        plot_classwise(report, plot_path)
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
    return report


def gate_step(params: Params, report_path: str | Path, model_path: str | Path,
              out_path: str | Path) -> dict[str, Any]:
    """Fairness gate on the evaluation report of the model at ``model_path``; writes the decision.

    Fail-closed (see :mod:`fairat.gate`). Always writes ``out_path`` (also when blocked) and
    returns the decision; the caller decides whether a block is an error (``fairat gate --strict``).
    """
    from fairat.gate import decide, load_report

    report, problems = load_report(report_path)
    model_path = Path(model_path)
    model_sha = sha256_file(model_path) if model_path.is_file() else None
    decision = decide(report, params.gate, model_sha)
    if problems:  # a precise "missing" / "not JSON" replaces decide's generic "missing"
        decision["reasons"] = problems + [r for r in decision["reasons"]
                                          if r != "evaluation report is missing"]
    if model_sha is None:
        decision["reasons"].insert(0, f"model file {model_path} is missing")
    decision["passed"] = not decision["reasons"]
    decision["report_path"] = str(report_path)
    decision["report_sha256"] = sha256_file(report_path) if Path(report_path).is_file() else None
    write_json_atomic(out_path, decision)
    verdict = "PASSED" if decision["passed"] else "BLOCKED"
    print(f"fairness gate {verdict} ({params.gate.attack}, min worst class "
          f"{params.gate.min_worst_class:.3f})", flush=True)
    for reason in decision["reasons"]:
        print(f"  - {reason}", flush=True)
    return decision


def _run_id(train_metrics_path: str | Path | None) -> str | None:
    """The MLflow run id the train step recorded, or None (tracking off / file missing)."""
    if train_metrics_path is None or not Path(train_metrics_path).is_file():
        return None
    return json.loads(Path(train_metrics_path).read_text()).get("mlflow_run_id")


def track_evaluation_step(params: Params, train_metrics_path: str | Path, report_path: str | Path,
                          extra_files: list[str | Path] = ()) -> str | None:
    """Log the evaluation report's class-wise numbers and files to the training's MLflow run.

    Does nothing (returns None) when tracking is off or training recorded no run; else the run id.
    """
    run_id = _run_id(train_metrics_path)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 logs
    if not params.track.enabled or run_id is None or not is_main:
        return None
    from fairat.registry import log_evaluation

    report = json.loads(Path(report_path).read_text())
    log_evaluation(run_id, report, [Path(report_path), *map(Path, extra_files)])
    return run_id


def register_step(params: Params, model_path: str | Path, report_path: str | Path,
                  gate_path: str | Path, train_metrics_path: str | Path | None,
                  data_dir: str | Path, out_path: str | Path, plot_path: str | Path | None = None,
                  card_path: str | Path | None = None) -> dict[str, Any]:
    """Register the trained model in MLflow with its evidence; alias ``candidate`` iff gate passed.

    The gate decision is re-checked against the files at hand: a decision for another model file
    (hash mismatch) or another report counts as failed, so a stale ``gate.json`` never promotes.
    Writes ``out_path`` {model_name, version, run_id, alias, passed, model_uri} and returns it.
    """
    from fairat.evaluation import git_commit
    from fairat.registry import register_model, version_tags

    model_path, report_path, gate_path = Path(model_path), Path(report_path), Path(gate_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"register: model file {model_path} is missing")
    if not gate_path.is_file():
        raise FileNotFoundError(f"register: gate decision {gate_path} is missing; run the gate")
    decision = json.loads(gate_path.read_text())
    model_sha = sha256_file(model_path)
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    report_sha = sha256_file(report_path) if report_path.is_file() else None
    if decision.get("model_sha256") != model_sha:
        decision["reasons"] = [*decision.get("reasons", []),
                               f"gate decision is for model {decision.get('model_sha256')}, not "
                               f"{model_sha}; re-run the gate"]
    if decision.get("report_sha256") != report_sha:
        decision["reasons"] = [*decision.get("reasons", []),
                               "gate decision was made on another evaluation report; re-run it"]
    passed = bool(decision.get("passed")) and not decision.get("reasons")
    decision["passed"] = passed
    manifest = json.loads((Path(data_dir) / MANIFEST_NAME).read_text())
    tags = version_tags(decision, report, manifest, model_sha, report_sha, git_commit())
    model, _ = load_model(model_path, torch.device("cpu"))
    model.eval()
    data = load_prepared(data_dir)
    split = data.test if len(data.test) else data.train
    example = split.images[:2].float().div(255).numpy()
    files = [p for p in (report_path, gate_path, plot_path, card_path, model_path) if p]
    record = register_model(model, example, params.track.model_name, _run_id(train_metrics_path),
                            to_dict(params), params.track.experiment, tags,
                            [Path(p) for p in files], passed)
    write_json_atomic(out_path, record)
    print(f"registered {record['model_name']} version {record['version']} "
          f"(gate {'passed' if passed else 'FAILED'}; alias: {record['alias'] or 'none'})",
          flush=True)
    return record
