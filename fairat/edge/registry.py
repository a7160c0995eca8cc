"""MLflow at the edge: tracking of training and evaluation, model registration, approval.

Why one module: only this file imports mlflow, so the engine runs (and is tested) without a
tracking store, and the store is chosen in one place: ``MLFLOW_TRACKING_URI`` when set (a team's
``mlflow server``), else an SQLite database under ``mlruns/`` (the model registry works with no
server; artifacts land under ``mlruns/`` too).

Promotion is two-step and evidence-bound: ``register`` creates a model version tagged with the gate
decision and its numbers and sets the alias ``candidate`` only when the gate passed; ``approve``
moves ``champion`` to a version only when its tags prove a passed gate on complete evidence, and
records who approved it and when. Secrets never reach MLflow: only params-file values, metrics,
hashes and report files are logged.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from fairat.engine.metrics import flatten, numeric_metrics
from fairat.errors import RegistryError
from fairat.evidence.comparison import BASELINE_METHOD
from fairat.evidence.gate import APPROVAL_KEY_ENV, TAG, approval_problems, approval_signature
from fairat.redact import redact

CANDIDATE, CHAMPION = "candidate", "champion"


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


def log_comparison(run_id: str, comparison: dict[str, Any]) -> None:
    """The lift over the baseline trained beside this model, on its run: metrics
    ``baseline.<name>`` (none when the two are not comparable) and tags naming the baseline run
    and, when incomparable, why; so the MLflow run page shows the weakest-class lift and cost."""
    from fairat.evidence.comparison import comparison_metrics

    mlflow = _mlflow()
    tags = {f"{TAG}baseline_run_id": comparison.get("baseline_run_id") or "",
            f"{TAG}baseline_method": str(comparison.get("baseline_method") or ""),
            f"{TAG}baseline_comparable": str(bool(comparison["comparable"])).lower(),
            f"{TAG}baseline_reasons": json.dumps(comparison["reasons"])[:5000],
            f"{TAG}time_ratio_note": str(comparison.get("cost_note") or "")[:5000]}
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({f"baseline.{k}": v
                                for k, v in comparison_metrics(comparison).items()})
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


# ----------------------------------------------------------------------------- registration

def version_tags(decision: dict[str, Any], report: dict[str, Any] | None,
                 manifest: dict[str, Any], model_sha256: str, report_sha256: str | None,
                 git_commit: str | None, method: str = "") -> dict[str, str]:
    """The evidence a version carries, as MLflow tags (strings): gate verdict and its numbers."""
    measured = decision.get("measured") or {}
    tags = {
        "method": method,
        "gate_passed": str(bool(decision["passed"])).lower(),
        "gate_attack": decision["attack"],
        "gate_informational": str(decision.get("informational") is True).lower(),
        "gate_reasons": json.dumps(decision["reasons"])[:5000],
        "worst_class_robust": "" if measured.get("worst") is None else f"{measured['worst']:.6f}",
        "worst_class": str(measured.get("worst_class", "")),
        "average_robust": "" if measured.get("average") is None else f"{measured['average']:.6f}",
        "robust_gap": "" if measured.get("gap") is None else f"{measured['gap']:.6f}",
        "model_sha256": model_sha256,
        "report_sha256": report_sha256 or "",
        "data_content_hash": str(manifest.get("content_hash", "")),
        "data_source": str(manifest.get("source", "")),
        "git_commit": git_commit or "",
    }
    if report is not None:
        per_class = report["attacks"].get(decision["attack"], {}).get("per_class", {})
        tags["classwise_robust"] = json.dumps({k: round(v, 4) for k, v in per_class.items()})
    return {f"{TAG}{k}": v for k, v in tags.items()}


def register_model(model: Any, example: Any, model_name: str, run_id: str | None,
                   params_dict: dict[str, Any], experiment: str, tags: dict[str, str],
                   files: dict[str, Path], passed: bool) -> dict[str, Any]:
    """Log ``model`` (mlflow.pytorch, with signature and input example) and register a version.

    ``run_id``: the training run to attach to; it must be in this store (RegistryError else).
    The alias ``candidate`` moves to the new version only when ``passed``. The evidence tags go
    on the *version* only: the run keeps the tags of the steps that wrote them (evaluate's
    ``fairat.report_sha256`` above all), so no step overwrites another step's evidence.
    Returns {model_name, version, run_id, alias, passed, model_uri}.
    """
    import mlflow.pytorch
    from mlflow.models import infer_signature

    mlflow = _mlflow()
    client = _client()
    import shutil
    import tempfile
    import uuid

    require_run(run_id, "register")
    # one folder per registration: a later register never overwrites an earlier version's files
    evidence_path = (f"evidence/{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-"
                     f"{uuid.uuid4().hex[:8]}")
    tags = {**tags, f"{TAG}evidence_path": evidence_path}
    try:
        with mlflow.start_run(run_id=run_id) as run, tempfile.TemporaryDirectory() as staging:
            mlflow.set_tag(f"{TAG}registered_as", model_name)
            for name, path in files.items():
                if Path(path).is_file():
                    shutil.copyfile(path, Path(staging) / name)
            mlflow.log_artifacts(staging, artifact_path=evidence_path)
            import torch

            with torch.no_grad():
                output = model(torch.as_tensor(example)).numpy()
            info = mlflow.pytorch.log_model(model, name="model",
                                            signature=infer_signature(example, output),
                                            input_example=example)
            run_id = run.info.run_id
        version = mlflow.register_model(info.model_uri, model_name)
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version.version, key, value)
        client.set_model_version_tag(model_name, version.version, f"{TAG}run_id", run_id)
        if passed:
            client.set_registered_model_alias(model_name, CANDIDATE, version.version)
    except RegistryError:
        raise
    except Exception as err:
        raise RegistryError(f"registering {model_name!r} at {tracking_uri()} failed: {err}") from err
    return {"model_name": model_name, "version": int(version.version), "run_id": run_id,
            "alias": CANDIDATE if passed else None, "passed": passed,
            "model_uri": info.model_uri, "evidence_path": evidence_path}

# ----------------------------------------------------------------------------- attested evidence

def version_evidence(mv: Any, public: Any, client: Any = None
                     ) -> tuple[list[str], dict[str, Any] | None]:
    """:func:`fairat.edge.attested.version_evidence` on this store's client by default."""
    from fairat.edge.attested import version_evidence as verify_version

    return verify_version(mv, public, client or _client())


def _trust_mode() -> Any:
    """The public key (attested mode) or None (local mode); a bad key is a RegistryError."""
    from fairat.evidence.attestation import SigningKeyError, verify_key

    try:
        return verify_key()
    except SigningKeyError as err:
        raise RegistryError(str(err)) from None


# ----------------------------------------------------------------------------- approval

def approve(model_name: str, version: int, by: str, note: str = "",
            confirm: Callable[[str], bool] | None = None) -> dict[str, Any] | None:
    """Promote ``version`` to alias ``champion`` if its evidence shows a passed gate.

    Raises RegistryError listing every reason when it refuses (nothing changes then). Once the
    evidence is checked, ``confirm(version description)`` may still say no (returns None).
    """
    if not by.strip():
        raise RegistryError("approve: --by must name the approver")
    client = _client()
    try:
        mv = client.get_model_version(model_name, str(version))
    except Exception as err:
        raise RegistryError(f"model {model_name!r} version {version} not found at "
                            f"{tracking_uri()}: {err}") from err
    public = _trust_mode()
    if public is None:  # local mode: the tags register wrote (accidents, not adversaries)
        problems, model_sha = approval_problems(dict(mv.tags)), mv.tags.get(f"{TAG}model_sha256")
    else:  # attested mode: the signed decision, checked against the version's logged files
        problems, statement = version_evidence(mv, public, client)
        model_sha = (statement or {}).get("model_sha256")
    if problems:
        raise RegistryError(f"refusing to approve {model_name} version {version}:\n  - "
                            + "\n  - ".join(problems))
    if confirm is not None and not confirm(approval_summary(mv, public)):
        return None
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"approved_by": by.strip(), "approved_at": when, "approval_note": note,
              "approved_model_sha256": model_sha or ""}
    key = os.environ.get(APPROVAL_KEY_ENV, "")
    if key:  # the guard accepts a champion only with this signature when it holds the key
        signed = {**dict(mv.tags), **{f"{TAG}{k}": v for k, v in record.items()}}
        record["approval_signature"] = approval_signature(key, model_name, version, signed)
    for name, value in record.items():
        client.set_model_version_tag(model_name, str(version), f"{TAG}{name}", value)
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return {"model_name": model_name, "version": int(version), "alias": CHAMPION,
            "approved_by": by.strip(), "approved_at": when}


def approval_summary(mv: Any, public: Any) -> str:
    """What an approver reads before saying yes: the card's verdict, where the card is (its
    artifact path in the version's run, not a ``runs:/`` URI), the lift over the baseline in
    percentage points, and which mode vouches for it."""
    from fairat.evidence.attestation import LOCAL_MODE, key_id

    tags = dict(mv.tags)
    lines = [line for line in (mv.description or "").splitlines()
             if not line.startswith("Model card: runs:/")] or ["(no model card summary)"]
    path = tags.get(f"{TAG}evidence_path")
    if path:
        lines.append(f"model card: {path}/model_card.md in MLflow run {mv.run_id} "
                     "(Artifacts tab of the run)")
    lift = tags.get(f"{TAG}worst_lift_over_baseline")
    if lift:
        lines.append(f"weakest class vs the PGD-AT baseline: {100 * float(lift):+.1f} points")
    lines.append(f"evidence verified with key {key_id(public)}" if public is not None
                 else f"note: {LOCAL_MODE}")
    return "\n".join(lines)


def list_versions(model_name: str) -> list[dict[str, Any]]:
    """Every version of ``model_name`` with its aliases, gate verdict and class-wise summary.

    In attested mode the verdict and the numbers come from each version's verified statement
    (``gate_passed`` is "true" only when it verifies against the logged files), never from tags;
    ``attested`` says how the verdict was reached."""
    client = _client()
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
        aliases = client.get_registered_model(model_name).aliases if versions else {}
    except Exception as err:
        raise RegistryError(f"cannot list {model_name!r} at {tracking_uri()}: {err}") from err
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    from fairat.edge.attested import verified_fields

    public = _trust_mode()
    rows = []
    for mv in sorted(versions, key=lambda m: int(m.version)):
        tags = dict(mv.tags)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
        row = {"version": int(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
               "created": created.isoformat(timespec="minutes"),
               "description": mv.description or "",
               **{k[len(TAG):]: v for k, v in tags.items() if k.startswith(TAG)},
               "attested": "local"}
        if public is not None:
            row.update(verified_fields(*version_evidence(mv, public, client)))
        rows.append(row)
    return rows


def find_baseline(model_name: str, exclude_version: int | None,
                  method: str = BASELINE_METHOD) -> dict[str, Any] | None:
    """The newest version of ``model_name`` trained with ``method`` (the PGD-AT baseline), as
    the numbers a model card compares against; None when the registry holds none."""
    try:
        rows = list_versions(model_name)
    except RegistryError:
        return None
    for row in reversed(rows):
        if row["version"] != exclude_version and row.get("method") == method and \
                row.get("worst_class_robust") and row.get("average_robust"):
            return {"label": f"{model_name} version {row['version']}", "method": method,
                    "worst": float(row["worst_class_robust"]),
                    "worst_class": row.get("worst_class", "?"),
                    "average": float(row["average_robust"])}
    return None


def attach_card(model_name: str, version: int, run_id: str, card_path: Path,
                description: str, evidence_path: str = "evidence") -> str:
    """Log the model card beside the version's evidence and put its summary in the version
    description, so the MLflow version page shows the verdict first. Returns the card's URI."""
    mlflow = _mlflow()
    client = _client()
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(card_path), artifact_path=evidence_path)
        uri = f"runs:/{run_id}/{evidence_path}/{card_path.name}"
        client.update_model_version(model_name, str(version),
                                    description=f"{description}\nModel card: {uri}")
    except Exception as err:
        raise RegistryError(f"cannot attach the model card to {model_name} version {version} at "
                            f"{tracking_uri()}: {err}") from err
    return uri
