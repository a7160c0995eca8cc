"""Compare: the trained model against the PGD-AT baseline trained beside it (weakest class, cost)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compare(params: str, report: Input[Artifact], summary: Input[Artifact],
            baseline_report: Input[Artifact], baseline_summary: Input[Artifact],
            comparison: Output[Artifact], metrics: Output[Metrics]):
    """Write ``comparison.json`` into ``comparison`` and its numbers into ``metrics``.

    Args:
        params: ``key=value`` lines of the `gate` and `track` knobs (the gate's attack is judged).
        report: this model's evaluation; ``baseline_report``: the baseline's. Both must be the
            evaluate tasks' untouched outputs, and comparable (same data, split, radius, budget).
        summary: this model's training summary (its MLflow run gets the comparison).
    """
    from fairat.cluster.runtime import run_compare

    for name, value in run_compare(params, report.path, summary.path, baseline_report.path,
                                   baseline_summary.path, comparison.path).items():
        metrics.log_metric(name, value)
