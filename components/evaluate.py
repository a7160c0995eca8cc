"""Evaluate: class-wise clean / PGD / CW / AutoAttack accuracy of the trained model."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(params: str, data: Input[Dataset], model: Input[Model], summary: Input[Artifact],
             report: Output[Artifact],
             metrics: Output[Metrics], report_md: Output[Markdown], chart: Output[HTML]):
    """Write ``eval.json`` and the chart PNG into ``report``; report and chart render in the UI.

    Args:
        params: ``key=value`` lines of the `evaluate` and `track` knobs (and train.attack.eps).
        summary: the train task's ``train.json``: the MLflow run the evaluation is logged to.
    """
    from fairat.cluster.runtime import run_evaluate

    for name, value in run_evaluate(params, data.path, model.path, report.path, report_md.path,
                                    chart.path, summary.path).items():
        metrics.log_metric(name, value)
