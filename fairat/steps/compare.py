"""Compare: the trained model against the PGD-AT baseline trained beside it (weakest class, cost)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairat.config import Params
from fairat.evidence.comparison import (comparison_lines, comparison_metrics, compare,
                                        verified_report)
from fairat.io import write_json_atomic
from fairat.steps.shared import run_id_of


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _seconds(report: dict[str, Any], train_metrics_path: str | Path | None
             ) -> tuple[float | None, str | None]:
    """Training seconds and where they come from. The model file records them and evaluate copies
    them into the hash-checked report, so an edited metrics file cannot fake the cost; the
    training summary is the fallback for model files written before that (said so on the card)."""
    recorded = _number((report.get("provenance") or {}).get("train_seconds"))
    if recorded is not None:
        return recorded, "report"
    if not train_metrics_path or not Path(train_metrics_path).is_file():
        return None, None
    value = _number(json.loads(Path(train_metrics_path).read_text()).get("seconds"))
    return value, ("summary" if value is not None else None)


def comparison_from_files(params: Params, report_path: str | Path,
                          baseline_report_path: str | Path,
                          train_metrics_path: str | Path | None = None,
                          baseline_metrics_path: str | Path | None = None) -> dict[str, Any]:
    """:func:`~fairat.evidence.comparison.compare` on verified reports, judged on the gate's
    attack; the training summaries give the cost. Register calls this too, so the model card
    states numbers recomputed from the evidence, never read from an editable metrics file."""
    report, report_sha = verified_report(report_path, "this model's")
    baseline, baseline_sha = verified_report(baseline_report_path, "the baseline's")
    (seconds, source), (base_seconds, base_source) = (
        _seconds(report, train_metrics_path), _seconds(baseline, baseline_metrics_path))
    comparison = compare(report, baseline, params.gate.attack, seconds, base_seconds)
    comparison.update(baseline_run_id=run_id_of(baseline_metrics_path), report_sha256=report_sha,
                      baseline_report_sha256=baseline_sha,
                      seconds_checked=source == base_source == "report")
    return comparison


def compare_step(params: Params, report_path: str | Path, baseline_report_path: str | Path,
                 out_path: str | Path, train_metrics_path: str | Path | None = None,
                 baseline_metrics_path: str | Path | None = None,
                 chart_path: str | Path | None = None) -> dict[str, Any]:
    """Write the comparison's numbers to ``out_path`` (a DVC metric, so `dvc exp show` lists the
    lift beside the params) and log them to the training's MLflow run when tracking is on.
    ``chart_path``: the per-class chart an approver reads (this model's bars beside the
    baseline's on the gate's attack, the gate's threshold as a line)."""
    comparison = comparison_from_files(params, report_path, baseline_report_path,
                                       train_metrics_path, baseline_metrics_path)
    write_json_atomic(out_path, comparison_metrics(comparison))
    if chart_path:  # presentation only: drawn from the reports comparison_from_files verified
        from fairat.evidence.report import plot_comparison

        plot_comparison(json.loads(Path(report_path).read_text()),
                        json.loads(Path(baseline_report_path).read_text()), params.gate.attack,
                        params.gate.min_worst_class, chart_path)
    for line in comparison_lines(comparison):
        print(line, flush=True)
    run_id = run_id_of(train_metrics_path)
    if params.track.enabled and run_id:
        from fairat.edge.registry import log_comparison

        log_comparison(run_id, comparison)
    return comparison
