"""Register: the model card, and an MLflow model version tagged with the gate decision."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(params: str, candidate: bool, data: Input[Dataset], model: Input[Model],
             summary: Input[Artifact], report: Input[Artifact], decision: Input[Artifact],
             card: Output[Markdown], registration: Output[Artifact],
             baseline_report: Input[Artifact] = None,
             baseline_summary: Input[Artifact] = None) -> str:
    """Register the model; alias ``candidate`` only when the gate passed.

    Args:
        params: ``key=value`` lines of every knob (the MLflow run logs them all).
        candidate: the gate branch this task sits in; checked against the decision file.
        baseline_report: the PGD-AT baseline's evaluation (optional): the card and the version's
            tags then carry the lift on the weakest class, recomputed from both reports.
        baseline_summary: the baseline's training summary (its MLflow run id).
    Returns:
        The registered model version.
    """
    from fairat.cluster.runtime import run_register

    record = run_register(params, candidate, data.path, model.path, summary.path, report.path,
                          decision.path, card.path, registration.path,
                          baseline_report.path if baseline_report else None,
                          baseline_summary.path if baseline_summary else None)
    registration.metadata.update({k: str(v) for k, v in record.items()})
    return str(record["version"])
