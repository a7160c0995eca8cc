"""Compare: the trained model against the PGD-AT baseline trained beside it (weakest class, cost)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairat.config import Params
from fairat.evidence.comparison import comparison_lines, comparison_metrics, compare
from fairat.evidence.verified import ReportEvidence, load_report_evidence
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


def comparison_from_evidence(params: Params, evidence: ReportEvidence,
                             baseline: ReportEvidence,
                             train_metrics_path: str | Path | None = None,
                             baseline_metrics_path: str | Path | None = None) -> dict[str, Any]:
    """:func:`~fairat.evidence.comparison.compare` on the two reports a step read once (refused
    unless each is evaluate's untouched, consistent output), judged on the gate's attack; the
    reports give the cost. Register calls this on the very report value it re-checked the gate
    decision against, so the card's numbers and the decision describe the same bytes; recomputing
    from verified reports (a fraction of a second) is what makes the lift trustworthy, where a
    comparison file read back would be one more editable file to sign."""
    report = evidence.require("this model's")
    base = baseline.require("the baseline's")
    (seconds, source), (base_seconds, base_source) = (
        _seconds(report, train_metrics_path), _seconds(base, baseline_metrics_path))
    comparison = compare(report, base, params.gate.attack, seconds, base_seconds)
    comparison.update(baseline_run_id=run_id_of(baseline_metrics_path),
                      report_sha256=evidence.sha256, baseline_report_sha256=baseline.sha256,
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
    evidence = load_report_evidence(report_path)
    baseline = load_report_evidence(baseline_report_path)
    comparison = comparison_from_evidence(params, evidence, baseline, train_metrics_path,
                                          baseline_metrics_path)
    metrics = comparison_metrics(comparison)
    write_json_atomic(out_path, metrics)
    if chart_path:  # presentation only: drawn from the same verified values
        from fairat.evidence.report import plot_comparison

        plot_comparison(evidence.report, baseline.report, params.gate.attack,
                        params.gate.min_worst_class, chart_path)
    for line in comparison_lines(comparison):
        print(line, flush=True)
    run_id = run_id_of(train_metrics_path)
    if params.track.enabled and run_id:
        from fairat.edge.tracking import log_comparison

        log_comparison(run_id, comparison, metrics)
    return comparison
