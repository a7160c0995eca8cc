"""Gate: the fail-closed fairness decision on the evaluation report."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(params: str, report: Input[Artifact], model: Input[Model], decision: Output[Artifact],
         metrics: Output[Metrics]) -> bool:
    """Write ``gate.json`` into ``decision``, its numbers into ``metrics``; return passed.

    Args:
        params: ``key=value`` lines of the `gate` knobs.
    Returns:
        True when the model passed; the pipeline branches on it. A block is not a task failure.
    """
    from fairat.evidence.gate import gate_metrics
    from fairat.cluster.runtime import run_gate

    result = run_gate(params, report.path, model.path, decision.path)
    for name, value in gate_metrics(result).items():
        metrics.log_metric(name, value)
    return bool(result["passed"])
