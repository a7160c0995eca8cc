"""MLflow runs: the training run, and what evaluate and compare log on it.

Why apart from the registry (:mod:`fairat.edge.registry`): train and evaluate need only this,
and a stage depends on the code it imports (its generated `dvc.yaml` deps). With tracking in the
registry module, every gate or approval rule the registry imports was a dependency of training,
so a gate edit re-trained. Only the edge imports mlflow; the store is chosen in one place:
``MLFLOW_TRACKING_URI`` when set (a team's ``mlflow server``), else an SQLite database under
``mlruns/``. Secrets never reach MLflow: only params-file values, metrics, hashes and files.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fairat.artifacts import TAG
from fairat.engine.metrics import flatten, numeric_metrics
from fairat.errors import RegistryError
from fairat.redact import redact


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store under ``./mlruns`` (created).

    The default is returned with an absolute path: MLflow caches one store per URI string, so a
    relative URI would keep pointing at the first folder's database after a ``chdir``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    folder = Path("mlruns").resolve()
    folder.mkdir(exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _mlflow():
    """Import mlflow lazily (slow import; only tracking needs it) and point it at the store."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri()
    if redact(uri) != uri:  # MLflow prints "View run ... at: <uri>" after each run, password too
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    return mlflow


def _client():
    from mlflow.tracking import MlflowClient

    _mlflow()
    return MlflowClient()


# ----------------------------------------------------------------------------- tracking

def _log_params(mlflow: Any, params_dict: dict[str, Any]) -> None:
    """Every params-file value under its dotted key (lists as JSON, so they read back exactly)."""
    mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, tuple)) else v
                       for k, v in flatten(params_dict).items()})


@contextmanager
def training_run(params_dict: dict[str, Any], experiment: str,
                 run_name: str) -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    """Open an MLflow run for one training; yields (run_id, on_epoch callback).

    The run logs every params value (flattened keys) up front and each epoch's numbers live with
    ``step = epoch``. An exception inside marks the run FAILED. A tracking error while training
    is reported once and does not stop the training (the record can be re-logged later).
    """
    mlflow = _mlflow()
    try:
        mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name)
    except Exception as err:  # mlflow raises many types (connection, DB); name the store
        raise RegistryError(f"cannot open an MLflow run at {tracking_uri()}: {err}") from err
    warned = False

    def on_epoch(record: dict[str, Any]) -> None:
        nonlocal warned
        try:
            mlflow.log_metrics(numeric_metrics(record), step=int(record["epoch"]))
        except Exception as err:  # keep training; say so once
            if not warned:
                print(f"WARNING: MLflow logging failed ({redact(str(err))}); training "
                      "continues", flush=True)
                warned = True

    status = "FAILED"
    try:
        _log_params(mlflow, params_dict)
        mlflow.set_tags({f"{TAG}stage": "train", f"{TAG}method": params_dict["train"]["method"]})
        yield run.info.run_id, on_epoch
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


REPORT_SHA_TAG = f"{TAG}report_sha256"  # evaluate's record of the report it wrote, on the run


def log_evaluation(run_id: str, report: dict[str, Any], files: list[Path],
                   report_sha256: str) -> None:
    """Class-wise numbers of ``report`` as metrics, plus report / chart / card files, on ``run_id``.

    The run also gets tag ``fairat.report_sha256``: registration refuses a report whose bytes
    are not the ones logged here.
    """
    mlflow = _mlflow()
    metrics: dict[str, float] = {}
    for attack, entry in report["attacks"].items():
        metrics.update(numeric_metrics(entry["summary"], f"test.{attack}."))
        metrics.update(numeric_metrics(entry["per_class"], f"test.{attack}.class."))
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(metrics)
            mlflow.set_tag(REPORT_SHA_TAG, report_sha256)
            for path in files:
                if path.is_file():
                    mlflow.log_artifact(str(path), artifact_path="evaluation")
    except Exception as err:
        raise RegistryError(f"cannot log the evaluation to MLflow run {run_id} at "
                            f"{tracking_uri()}: {err}") from err


def log_comparison(run_id: str, comparison: dict[str, Any], metrics: dict[str, float]) -> None:
    """The lift over the baseline trained beside this model, on its run: ``metrics`` (the
    comparison's numbers, :func:`fairat.evidence.comparison.comparison_metrics`) as
    ``baseline.<name>`` and tags naming the baseline run and, when incomparable, why; so the
    MLflow run page shows the weakest-class lift and cost."""
    mlflow = _mlflow()
    tags = {f"{TAG}baseline_run_id": comparison.get("baseline_run_id") or "",
            f"{TAG}baseline_method": str(comparison.get("baseline_method") or ""),
            f"{TAG}baseline_comparable": str(bool(comparison["comparable"])).lower(),
            f"{TAG}baseline_reasons": json.dumps(comparison["reasons"])[:5000],
            f"{TAG}time_ratio_note": str(comparison.get("cost_note") or "")[:5000]}
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({f"baseline.{k}": v for k, v in metrics.items()})
            mlflow.set_tags(tags)
    except Exception as err:
        raise RegistryError(f"cannot log the baseline comparison to MLflow run {run_id} at "
                            f"{tracking_uri()}: {err}") from err


def require_run(run_id: str | None, what: str) -> None:
    """Raise RegistryError unless ``run_id`` names a run in this store.

    Why early and strict: evaluate and register attach their evidence to the training's run; a
    missing id (a ``train.json`` edited, or written with tracking off) or a run of another store
    (a fresh clone holding the committer's ``train.json``) would otherwise skip the check of the
    logged report hash, or fail only after minutes of attacks.
    """
    if not run_id:
        raise RegistryError(f"{what}: the training summary names no MLflow run (mlflow_run_id "
                            "is missing); re-run `fairat train` with tracking on")
    try:
        _client().get_run(run_id)
    except Exception as err:
        raise RegistryError(f"{what}: MLflow run {run_id} named in the training summary is not in "
                            f"the store at {tracking_uri()} (trained elsewhere, or a committed "
                            f"train.json from another machine): re-run `fairat train` here, or "
                            f"point MLFLOW_TRACKING_URI at the store that holds it ({err})"[:800]
                            ) from err


def logged_report_sha256(run_id: str | None) -> str:
    """The report hash evaluate logged on ``run_id`` ("" when evaluate logged none there).

    Raises RegistryError when the run id is missing or not in this store: the check of the
    logged hash is never skipped. "" is a mismatch for the gate's re-check, so a report never
    logged is never registered as logged.
    """
    require_run(run_id, "register")
    return _client().get_run(run_id).data.tags.get(REPORT_SHA_TAG, "")
