"""MLflow at the edge: model registration and approval (the runs themselves:
:mod:`fairat.edge.tracking`, whose names are importable from here too).

Only the edge imports mlflow, so the engine runs (and is tested) without a tracking store; the
store is chosen in one place (:func:`fairat.edge.tracking.tracking_uri`): ``MLFLOW_TRACKING_URI``
when set (a team's ``mlflow server``), else an SQLite database under ``mlruns/`` (the model
registry works with no server; artifacts land under ``mlruns/`` too).

Promotion is two-step and evidence-bound: ``register`` creates a model version tagged with the gate
decision and its numbers and sets the alias ``candidate`` only when the gate passed; ``approve``
moves ``champion`` to a version only when its tags prove a passed gate on complete evidence, and
records who approved it and when. Secrets never reach MLflow: only params-file values, metrics,
hashes and report files are logged.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fairat.edge.tracking import (REPORT_SHA_TAG, _client, _mlflow, log_comparison,  # noqa: F401
                                  log_evaluation, logged_report_sha256, require_run,
                                  tracking_uri, training_run)
from fairat.errors import RegistryError
from fairat.evidence.comparison import BASELINE_METHOD
from fairat.evidence.gate import APPROVAL_KEY_ENV, TAG, approval_problems, approval_signature

CANDIDATE, CHAMPION = "candidate", "champion"


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


def model_requirements() -> list[str]:
    """The pip requirements logged with a model: what loading and running it imports.

    Why explicit: left alone, MLflow infers them by importing the model again in a subprocess
    (about 15 s of a registration on 2 cores, every `dvc repro`) and lists whatever that import
    happened to pull in (colorama, pydot, tqdm) beside what the model needs. The versions are the
    installed ones, without a local build label (``+cpu``) that PyPI would not resolve. The model
    is logged as an exported program (:func:`register_model`), so loading it unpickles nothing
    (tests/edge/test_registry.py loads it with MLflow's pickle deserialization disallowed);
    cloudpickle stays listed for MLflow's pytorch flavor.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "cloudpickle")]


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
            # "pt2" (torch.export) by name, not MLflow's default, which is pickle on some
            # servers (Databricks): a pickled model runs code when loaded; an exported program
            # is a graph of torch ops and its weights
            info = mlflow.pytorch.log_model(model, name="model", serialization_format="pt2",
                                            signature=infer_signature(example, output),
                                            input_example=example,
                                            pip_requirements=model_requirements())
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
