"""Train: adversarial training of ``params.train.method`` on prepared data, rank-aware."""

from __future__ import annotations

import json
from pathlib import Path

from fairat.artifacts import TRAIN_METRICS
from fairat.config import Params, to_dict
from fairat.engine.metrics import numeric_metrics
from fairat.engine.data import load_prepared
from fairat.engine.training import TrainPaths, TrainSummary, train
from fairat.io import write_json_atomic
from fairat.steps.shared import device_and_context


def train_step(params: Params, data_dir: str | Path, paths: TrainPaths,
               resume: bool = False, track: bool | None = None) -> TrainSummary:
    """Train ``params.train.method`` on prepared data; rank-aware under `torchrun`.

    ``track`` (default ``params.track.enabled``): rank 0 logs params and per-epoch metrics to an
    MLflow run and records its id in the metrics JSON as ``mlflow_run_id``.
    """
    data = load_prepared(data_dir)
    device, ctx = device_and_context(params.train.device)
    if track is None:
        track = params.track.enabled
    if not (track and ctx.is_main):  # only rank 0 talks to MLflow
        summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                        device=device)
    else:
        from fairat.edge.registry import training_run

        name = f"{params.train.method}-seed{params.train.seed}"
        with training_run(to_dict(params), params.track.experiment, name) as (run_id, on_epoch):
            summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                            device=device, on_epoch=on_epoch)
        record = json.loads(Path(paths.metrics).read_text())
        record["mlflow_run_id"] = run_id  # evaluate and register attach to this run
        write_json_atomic(paths.metrics, record)
    if ctx.is_main:  # the aggregate numbers alone (no run id, no per-class validation detail):
        record = json.loads(Path(paths.metrics).read_text())  # what `dvc metrics` compares
        numbers = {k: v for k, v in numeric_metrics(record).items() if "per_class" not in k}
        write_json_atomic(Path(paths.metrics).with_name(TRAIN_METRICS), numbers)
    if ctx.is_main:
        print(f"trained {params.train.method}: {summary.epochs} epochs, model from epoch "
              f"{summary.chosen_epoch} ({summary.chosen_by}), "
              f"{summary.examples_per_second:.1f} examples/s -> {paths.model}", flush=True)
    return summary
