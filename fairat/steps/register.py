"""Register: the model card, and an MLflow model version with its evidence; alias ``candidate``
only on a passed gate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fairat.config import Params, to_dict
from fairat.engine.checkpoint import load_model
from fairat.engine.data import MANIFEST_NAME, load_prepared
from fairat.errors import DataError
from fairat.evidence.attestation import LOCAL_MODE, key_id, verify_key
from fairat.evidence.verified import load_report_evidence
from fairat.evidence.gate import (EVIDENCE_FILES, TAG, decision_attestation_problems,
                                  recheck_decision, sidecar_path)
from fairat.evidence.comparison import comparison_tags
from fairat.evidence.model_card import render_card, summary_text, verdict_line
from fairat.evidence.study import study_reference
from fairat.io import write_json_atomic, write_text_atomic
from fairat.steps.compare import comparison_from_evidence
from fairat.steps.shared import run_id_of

DVC_EXPERIMENT_ENV = "DVC_EXP_BASELINE_REV"  # set by `dvc exp run` for every stage it runs


def registration_wanted(params: Params) -> tuple[bool, str]:
    """Whether this run creates a model version, and why (the run says so either way).

    Why not always: every `dvc exp run` would add a throw-away version to the team's registry.
    ``track.register`` null registers except inside a DVC experiment; true or false decide.
    """
    if not params.track.enabled:
        return False, "tracking is off (track.enabled: false)"
    if params.track.register is not None:
        return params.track.register, f"track.register: {str(params.track.register).lower()}"
    if os.environ.get(DVC_EXPERIMENT_ENV):
        return False, ("this is a `dvc exp run` experiment; set track.register: true "
                       "(-S track.register=true) to register it")
    return True, "track.register: null (registering outside DVC experiments)"


def _read_json(path: str | Path | None) -> Any:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def register_step(params: Params, model_path: str | Path, report_path: str | Path,
                  gate_path: str | Path, train_metrics_path: str | Path | None,
                  data_dir: str | Path, out_path: str | Path, plot_path: str | Path | None = None,
                  card_path: str | Path | None = None,
                  baseline_report_path: str | Path | None = None,
                  baseline_metrics_path: str | Path | None = None) -> dict[str, Any]:
    """Write the model card; register the model in MLflow with its evidence when wanted.

    The gate decision is re-checked against the files at hand: a decision for another model file
    (hash mismatch) or another report, or a report that is not the one evaluate wrote, counts as
    failed, so a stale or edited file never promotes. The card is written after that check, so it
    states the verdict the registry acts on. Writes ``out_path`` {registered, reason, passed, and
    when registered: model_name, version, run_id, alias, model_uri, card_uri} and returns it.

    With ``baseline_report_path`` (the PGD-AT model trained beside this one), the card and the
    version's tags carry the weakest-class lift and the cost, recomputed here from the verified
    reports; a baseline report that is not evaluate's untouched output stops registration.
    """
    from fairat.provenance import git_commit

    wanted, why = registration_wanted(params)
    run_id = run_id_of(train_metrics_path)
    logged = None
    if wanted:  # a missing or foreign run id stops registration: the logged hash is always checked
        from fairat.edge.tracking import logged_report_sha256

        logged = logged_report_sha256(run_id)
    # the report is read, hashed and checked once; every rule below judges this one value
    evidence = load_report_evidence(report_path, logged)
    comparison = None
    if baseline_report_path:
        comparison = comparison_from_evidence(params, evidence,
                                              load_report_evidence(baseline_report_path),
                                              train_metrics_path, baseline_metrics_path)
    decision, model_sha = recheck_decision(gate_path, model_path, evidence)
    report_sha, report = evidence.sha256, evidence.report
    public = verify_key()
    if public is not None:  # attested mode: the signed statement, never the file's flag, decides
        problems = decision_attestation_problems(decision.get("attestation"), public, model_sha,
                                                 report_sha, decision["passed"])
        decision["reasons"] += problems
        decision["passed"] = decision["passed"] and not problems
    passed = decision["passed"]
    report_path = Path(report_path)
    if report_sha is not None and not evidence.unchanged():
        # the card, the tags and the comparison must describe the bytes just re-checked
        raise DataError(f"register: evaluation report {report_path} changed while registering; "
                        "nothing was registered, re-run the gate and register")
    manifest = json.loads((Path(data_dir) / MANIFEST_NAME).read_text())
    n_parameters = ((report or {}).get("provenance") or {}).get("n_parameters")
    model = None
    if wanted or not isinstance(n_parameters, int):  # the registry logs the model itself
        model, _ = load_model(model_path, torch.device("cpu"))
        model.eval()
        n_parameters = sum(p.numel() for p in model.parameters())
    plain = to_dict(params)
    card_args = dict(params=plain, report=report, decision=decision, manifest=manifest,
                     train_summary=_read_json(train_metrics_path), n_parameters=n_parameters,
                     comparison=comparison,
                     study=study_reference(params.track.study, plain,
                                           str(manifest.get("source", ""))))
    card_path = Path(card_path) if card_path else Path(out_path).with_name("model_card.md")
    record: dict[str, Any] = {"registered": False, "reason": why, "passed": passed,
                              "card": str(card_path)}
    if not wanted:
        write_text_atomic(card_path, render_card(**card_args))
    else:
        from fairat.edge.registry import attach_card, find_baseline, register_model, version_tags

        tags = version_tags(decision, report, manifest, model_sha, report_sha, git_commit(),
                            params.train.method)
        tags.update(comparison_tags(comparison))
        data = load_prepared(data_dir)
        split = data.test if len(data.test) else data.train
        example = split.images[:2].float().div(255).numpy()
        files = {EVIDENCE_FILES["report"]: report_path,
                 EVIDENCE_FILES["sidecar"]: sidecar_path(report_path),
                 EVIDENCE_FILES["gate"]: Path(gate_path), EVIDENCE_FILES["model"]: Path(model_path)}
        if plot_path:
            files[Path(plot_path).name] = Path(plot_path)
        tags[f"{TAG}attested"] = "local" if public is None else f"ed25519:{key_id(public)}"
        registration = register_model(model, example, params.track.model_name, run_id,
                                      to_dict(params), params.track.experiment, tags,
                                      files, passed)
        baseline = None if comparison else find_baseline(params.track.model_name,
                                                         registration["version"])
        write_text_atomic(card_path, render_card(**card_args, baseline=baseline,
                                                 registration=registration))
        card_uri = attach_card(params.track.model_name, registration["version"],
                               registration["run_id"], card_path, summary_text(decision, None),
                               registration["evidence_path"])
        record.update(registration, registered=True, card_uri=card_uri)
    write_json_atomic(out_path, record)
    _tell_the_user(record, decision, plot_path)
    return record


def _tell_the_user(record: dict[str, Any], decision: dict[str, Any],
                   plot_path: str | Path | None) -> None:
    """What happened and what to do next, as the last lines of a run."""
    lines = [f"fairness gate {verdict_line(decision)}"]
    if verify_key() is None:
        lines.append(f"note: {LOCAL_MODE}")
    lines += [f"  - {r}" for r in decision.get("reasons", [])]
    lines.append(f"model card: {record['card']}" + (f"; class-wise chart: {plot_path}"
                                                    if plot_path else ""))
    if not record["registered"]:
        lines.append(f"not registered: {record['reason']}")
    else:
        lines.append(f"registered {record['model_name']} version {record['version']} "
                     f"(alias: {record['alias'] or 'none'}; {record['reason']})")
        if record["passed"]:
            lines.append(f"next: read the card, then  fairat approve {record['model_name']} "
                         f"{record['version']} --by YOUR_NAME --note \"why\"")
        else:
            lines.append("next: fix the reasons above and re-run; a blocked version cannot be "
                         "approved")
    print("\n".join(lines), flush=True)
