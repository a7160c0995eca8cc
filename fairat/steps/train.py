"""Train: adversarial training of ``params.train.method`` on prepared data, rank-aware.

The engine returns the model payload and the summary; this step writes each output once:
``model.pt``, the JSON summary (``metrics/train.json``, with the MLflow run id when tracked), its
numbers alone for ``dvc metrics`` and the per-epoch CSV history.
"""

from __future__ import annotations

import csv
import io
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fairat.artifacts import TRAIN_METRICS
from fairat.config import Params, TrainConfig
from fairat.engine.checkpoint import save_checkpoint
from fairat.engine.data import load_prepared
from fairat.engine.distributed import DistContext, barrier
from fairat.engine.methods import method_warnings
from fairat.engine.metrics import flatten, numeric_metrics
from fairat.engine.training import TrainPaths, TrainSummary, train
from fairat.io import write_json_atomic, write_text_atomic
from fairat.steps.shared import device_and_context, run_params


def train_step(params: Params, data_dir: str | Path, paths: TrainPaths,
               resume: bool = False, track: bool | None = None,
               checkpoint_url: str | None = None) -> TrainSummary:
    """Train ``params.train.method`` on prepared data; rank-aware under `torchrun`.

    ``track`` (default ``params.track.enabled``): rank 0 logs params and per-epoch metrics to an
    MLflow run and records its id in the metrics JSON as ``mlflow_run_id``; a training that
    fails, is refused (``--resume`` on other data) or gets SIGTERM ends that run FAILED.
    ``checkpoint_url`` (``s3://bucket/prefix``): rank 0 keeps the checkpoints folder mirrored
    there after every epoch and, with ``resume`` and no local ``last.pt``, fetches it first, so a
    run on a machine whose disk does not survive (a retried pod) continues where it stopped.
    """
    mirror = _checkpoint_mirror(paths.checkpoints, checkpoint_url)  # a bad URL fails before work
    data = load_prepared(data_dir)
    device, ctx = device_and_context(params.train.device)
    if track is None:
        track = params.track.enabled
    if ctx.is_main:
        for line in method_warnings(params.train):
            print(f"WARNING: {line}", file=sys.stderr, flush=True)
    sync = _restore_and_sync(mirror, resume, ctx)
    with _sigterm_ends_the_step():
        if not (track and ctx.is_main):  # only rank 0 talks to MLflow
            summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                            device=device, on_epoch=sync)
            write_outputs(summary, params.train, paths, ctx)
        else:
            from fairat.edge.tracking import training_run

            name = f"{params.train.method}-seed{params.train.seed}"
            with training_run(run_params(params, device), params.track.experiment,
                              name) as (run_id, hook):
                summary = train(params.model, params.train, data, paths, resume=resume, ctx=ctx,
                                device=device, on_epoch=_both(hook, sync))
                # evaluate and register attach to this run
                write_outputs(summary, params.train, paths, ctx, {"mlflow_run_id": run_id})
    if ctx.is_main:
        print(f"trained {params.train.method}: {summary.epochs} epochs, model from epoch "
              f"{summary.chosen_epoch} ({summary.chosen_by}), "
              f"{summary.examples_per_second:.1f} examples/s -> {paths.model}", flush=True)
    return summary


def write_outputs(summary: TrainSummary, cfg: TrainConfig, paths: TrainPaths,
                  ctx: DistContext | None = None, extra: dict[str, Any] | None = None) -> None:
    """Rank 0 writes model.pt, the JSON summary (plus ``extra``), its numbers for ``dvc metrics``
    and the CSV history, each once and atomically; every rank waits until they are there."""
    ctx = ctx or DistContext()
    if ctx.is_main:
        if summary.model is None:
            raise ValueError("the training returned no model payload to write")
        save_checkpoint(summary.model, paths.model)
        record = {**summary_json(summary, cfg), **(extra or {})}
        write_json_atomic(paths.metrics, record)
        # the aggregate numbers alone (no run id, no per-class validation detail): what
        # `dvc metrics` compares
        numbers = {k: v for k, v in numeric_metrics(record).items() if "per_class" not in k}
        write_json_atomic(Path(paths.metrics).with_name(TRAIN_METRICS), numbers)
        write_text_atomic(paths.history, history_csv(summary.history))
    barrier(ctx)


def summary_json(summary: TrainSummary, cfg: TrainConfig) -> dict[str, Any]:
    """The run's record in ``metrics/train.json``."""
    last = summary.history[-1] if summary.history else {}
    return {"method": cfg.method, "epochs": summary.epochs, "chosen_epoch": summary.chosen_epoch,
            "chosen_by": summary.chosen_by, "chosen": summary.chosen_metrics,
            "seconds": round(summary.seconds, 3), "examples_trained": summary.examples_trained,
            "examples_per_second": round(summary.examples_per_second, 3),
            "all_sessions": summary.training,
            "last": {k: v for k, v in last.items()
                     if k in ("train_loss", "train_robust_acc", "val_clean_avg", "val_robust_avg",
                              "val_robust_worst", "hard_count")}}


def history_csv(history: list[dict[str, Any]]) -> str:
    """Flat per-epoch table (nested per-class dicts become ``key.class`` columns) for DVC plots."""
    rows = [flatten(record) for record in history]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@contextmanager
def _sigterm_ends_the_step() -> Iterator[None]:
    """SIGTERM (a pod evicted, `kill`, torchrun stopping its workers) raises SystemExit(143)
    inside the step, so its cleanup runs: the MLflow run ends FAILED instead of staying RUNNING
    forever. Only the main thread can install a handler; elsewhere nothing changes."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_exit)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:  # None: a handler not set from Python; the default is what stood before
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


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
