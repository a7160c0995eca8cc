"""Register: an MLflow model version with its evidence; alias ``candidate`` only on a passed gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fairat.config import Params, to_dict
from fairat.engine.checkpoint import load_model
from fairat.engine.data import MANIFEST_NAME, load_prepared
from fairat.evidence.gate import recheck_decision, sidecar_path
from fairat.io import write_json_atomic
from fairat.steps.shared import run_id_of


def register_step(params: Params, model_path: str | Path, report_path: str | Path,
                  gate_path: str | Path, train_metrics_path: str | Path | None,
                  data_dir: str | Path, out_path: str | Path, plot_path: str | Path | None = None,
                  card_path: str | Path | None = None) -> dict[str, Any]:
    """Register the trained model in MLflow with its evidence; alias ``candidate`` iff gate passed.

    The gate decision is re-checked against the files at hand: a decision for another model file
    (hash mismatch) or another report counts as failed, so a stale ``gate.json`` never promotes.
    Writes ``out_path`` {model_name, version, run_id, alias, passed, model_uri} and returns it.
    """
    from fairat.edge.registry import logged_report_sha256, register_model, version_tags
    from fairat.provenance import git_commit

    run_id = run_id_of(train_metrics_path)
    logged = logged_report_sha256(run_id) if params.track.enabled else None
    decision, model_sha, report_sha = recheck_decision(gate_path, model_path, report_path, logged)
    passed = decision["passed"]
    report_path = Path(report_path)
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    manifest = json.loads((Path(data_dir) / MANIFEST_NAME).read_text())
    tags = version_tags(decision, report, manifest, model_sha, report_sha, git_commit())
    model, _ = load_model(model_path, torch.device("cpu"))
    model.eval()
    data = load_prepared(data_dir)
    split = data.test if len(data.test) else data.train
    example = split.images[:2].float().div(255).numpy()
    files = [p for p in (report_path, sidecar_path(report_path), gate_path, plot_path, card_path,
                         model_path) if p]
    record = register_model(model, example, params.track.model_name, run_id,
                            to_dict(params), params.track.experiment, tags,
                            [Path(p) for p in files], passed)
    write_json_atomic(out_path, record)
    print(f"registered {record['model_name']} version {record['version']} "
          f"(gate {'passed' if passed else 'FAILED'}; alias: {record['alias'] or 'none'})",
          flush=True)
    return record
