"""Train: adversarial training (PGD-AT, TRADES or FairAT) on the prepared data, on GPUs.

In its own pod, or, when the pipeline is compiled with a shared volume, as a Kubeflow Trainer
TrainJob that this task launches, waits for and copies the outputs of.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(params: str, data: Input[Dataset], model: Output[Model], summary: Output[Artifact],
          metrics: Output[Metrics], gpus_per_node: str = "1", num_nodes: int = 1,
          trainjob: str = "", accelerator_type: str = "nvidia.com/gpu",
          checkpoint_url: str = "", run_id: str = ""):
    """Write ``model.pt`` into ``model`` and ``train.json`` / ``train.csv`` into ``summary``.

    Args:
        params: ``key=value`` lines of the `model` and `train` knobs.
        gpus_per_node: processes (GPUs) per node, as text (the KFP driver reads the GPU limit
            bound to it as a string); above 1, training runs under torchrun; above 0, training
            refuses to start without a usable GPU.
        num_nodes: nodes; above 1 needs ``trainjob`` (the pipeline compiled with a shared volume).
        trainjob: compile-time JSON (image, shared volume, secret names); set: run a TrainJob.
        accelerator_type: the GPU resource name the TrainJob nodes request.
        checkpoint_url: ``s3://bucket/prefix`` for the epoch checkpoints of a pod of its own;
            empty: pod scratch space (the TrainJob shape keeps them on the shared volume).
        run_id: the KFP run's id, so that retries of this run find its checkpoints and TrainJob.
    """
    from fairat.cluster.runtime import run_train

    for name, value in run_train(params, data.path, model.path, summary.path,
                                 gpus_per_node, num_nodes, trainjob,
                                 accelerator_type, checkpoint_url, run_id).items():
        metrics.log_metric(name, value)
    model.metadata["framework"] = "pytorch"
    model.metadata["file"] = "model.pt"
