"""Train: adversarial training of ``params.train.method`` on prepared data, rank-aware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from fairat.artifacts import TRAIN_METRICS
from fairat.config import Params
from fairat.engine.metrics import numeric_metrics
from fairat.engine.data import load_prepared
from fairat.engine.distributed import DistContext, barrier
from fairat.engine.training import TrainPaths, TrainSummary, train
from fairat.io import write_json_atomic
from fairat.steps.shared import device_and_context, run_params


def train_step(params: Params, data_dir: str | Path, paths: TrainPaths,
               resume: bool = False, track: bool | None = None,
               checkpoint_url: str | None = None) -> TrainSummary:
    """Train ``params.train.method`` on prepared data; rank-aware under `torchrun`.

    ``track`` (default ``params.track.enabled``): rank 0 logs params and per-epoch metrics to an
    MLflow run and records its id in the metrics JSON as ``mlflow_run_id``.
    ``checkpoint_url`` (``s3://bucket/prefix``): rank 0 keeps the checkpoints folder mirrored
    there after every epoch and, with ``resume`` and no local ``last.pt``, fetches it first, so a
    run on a machine whose disk does not survive (a retried pod) continues where it stopped.
    """
    mirror = _checkpoint_mirror(paths.checkpoints, checkpoint_url)  # a bad URL fails before work
    data = load_prepared(data_dir)
    device, ctx = device_and_context(params.train.device)
    if track is None:
        track = params.track.enabled
    sync = _restore_and_sync(mirror, resume, ctx)
    if not (track and ctx.is_main):  # only rank 0 talks to MLflow
        summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                        device=device, on_epoch=sync)
    else:
        from fairat.edge.registry import training_run

        name = f"{params.train.method}-seed{params.train.seed}"
        with training_run(run_params(params, device), params.track.experiment,
                          name) as (run_id, on_epoch):
            summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                            device=device, on_epoch=_both(on_epoch, sync))
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


Hook = Callable[[dict[str, Any]], None]


def _checkpoint_mirror(checkpoints: Path, url: str | None) -> Any:
    if not url:
        return None
    from fairat.edge.storage import FolderMirror

    return FolderMirror(checkpoints, url)


def _restore_and_sync(mirror: Any, resume: bool, ctx: DistContext) -> Hook | None:
    """Rank 0 fetches the mirrored checkpoints (when resuming and none are here) before any rank
    loads them; returns the per-epoch upload hook (rank 0 only), or None without a mirror.

    A failed upload is reported and tried again after the next epoch: an S3 hiccup should not
    end hours of training, and the next successful push carries the newer checkpoint anyway.
    """
    if mirror is None:
        return None
    if ctx.is_main:
        mirror.check()
        if resume and not (mirror.local_dir / "last.pt").exists():
            got = mirror.restore()
            print(f"checkpoints: fetched {', '.join(p.name for p in got)} from {mirror.url}"
                  if got else f"checkpoints: none under {mirror.url} yet, starting at epoch 1",
                  flush=True)
    barrier(ctx)  # every rank reads last.pt only once rank 0 has fetched it
    if not ctx.is_main:
        return None
    from fairat.edge.storage import StorageError

    def sync(record: dict[str, Any]) -> None:
        try:
            mirror.push()
        except StorageError as err:
            print(f"warning: checkpoint upload after epoch {record.get('epoch')} to "
                  f"{mirror.url} failed ({err}); trying again after the next epoch", flush=True)

    return sync


def _both(first: Hook | None, second: Hook | None) -> Hook | None:
    if first is None or second is None:
        return first or second

    def hook(record: dict[str, Any]) -> None:
        first(record)
        second(record)

    return hook
