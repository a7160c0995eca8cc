"""The training step as a Kubeflow Trainer ``TrainJob`` on the ``torch-distributed`` runtime.

Why Kubeflow Trainer: the cluster's training operator starts one pod per node, wires the
`torchrun` rendezvous (it sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR``, ``PET_MASTER_PORT``, which torchrun reads as its own options) and restarts or
fails the job as a whole. We only say which image runs which command on how many nodes with how many
GPUs: ``torchrun -m fairat train ...``, the same CLI as everywhere else, with ``--resume`` so a
retried job continues from its last checkpoint (checkpoints resume on any world size).

Everything goes through the Kubeflow Python SDK (``kubeflow`` on PyPI): a ``CustomTrainerContainer``
plus SDK options, submitted with ``TrainerClient().train(runtime="torch-distributed", ...)``.
Credentials (S3, MLflow) reach the pods as environment variables *referencing* Kubernetes secrets
(``valueFrom.secretKeyRef``) through an SDK ``RuntimePatch``; no secret value ever passes through
this module. :func:`trainjob_manifest` renders the exact TrainJob the SDK would create, without a
cluster, by running the SDK's own Kubernetes backend against a recorder instead of the API server.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

RUNTIME = "torch-distributed"  # Kubeflow Trainer's ClusterTrainingRuntime for PyTorch DDP
NODE = "node"  # the runtime's replicated job and trainer container name

def credential_refs(s3_secret: str = "fairat-s3", mlflow_secret: str = "fairat-mlflow",
                    mlflow_auth_secret: str = "fairat-mlflow",
                    endpoints_config_map: str = "fairat-endpoints",
                    ) -> tuple[dict[str, tuple[str, str, bool]], dict[str, tuple[str, str]]]:
    """``(secret_env, config_map_env)`` naming the same Kubernetes objects, with the same
    optionality, as the Kubeflow pipeline's tasks (docs/kubeflow.md): the tracking URI is required
    (training logs its epochs to MLflow), the MLflow login and the S3 keys are optional (a server
    without auth, data not on S3), and the S3 endpoints come from an optional ConfigMap.
    Each key is named like the variable it fills."""
    secret_env = {"MLFLOW_TRACKING_URI": (mlflow_secret, "MLFLOW_TRACKING_URI", False)}
    secret_env.update({var: (mlflow_auth_secret, var, True)
                       for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    secret_env.update({var: (s3_secret, var, True)
                       for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    config_map_env = {var: (endpoints_config_map, var)
                      for var in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")}
    return secret_env, config_map_env


# Environment variable -> (Secret name, key[, optional]) and -> (ConfigMap name, key); a 2-tuple
# secret reference is required. Pass your own mappings to TrainJobSpec.
DEFAULT_SECRET_ENV, DEFAULT_CONFIG_MAP_ENV = credential_refs()


@dataclass(frozen=True)
class TrainJobSpec:
    """One distributed training run: where it runs and what `fairat train` reads and writes.

    Paths are inside the trainer pods; ``work_dir`` should be a shared volume (``volume_claim``
    mounted at ``mount_path``) so every node reads the prepared data and rank 0's checkpoints
    survive a retried job.

    Args:
        image: the project image (the one every pipeline component runs in).
        num_nodes: pods (nodes); the world size is ``num_nodes * gpus_per_node`` (or
            ``num_nodes`` processes on CPU when ``gpus_per_node`` is 0).
        gpus_per_node: accelerators requested per node; torchrun starts one rank per GPU.
        accelerator_type: their Kubernetes resource name (``nvidia.com/gpu``, ``amd.com/gpu``).
        cpu_per_node, memory_per_node: Kubernetes quantities ("8", "32Gi"); None = runtime default.
        params_path: params YAML inside the pod. overrides: ``-S key=value`` pairs for this run.
        data_dir, work_dir: prepared data in; model, checkpoints and metrics out under work_dir.
        env: plain, non-secret environment (e.g. ``FAIRAT_DIST_TIMEOUT_S``).
        secret_env: variable -> (secret name, key[, optional]): credentials by reference only.
        config_map_env: variable -> (ConfigMap name, key), optional references (endpoints).
        volume_claim: PersistentVolumeClaim holding ``work_dir``/``data_dir``; None = none mounted.
        resume: pass ``--resume`` (continue from ``checkpoints/last.pt`` after a retry).
        checkpoint_url: ``s3://...`` where rank 0 also mirrors the checkpoints; None = not.
        name: TrainJob name; None lets the SDK pick one. Set, :func:`submit_trainjob` adopts an
            existing TrainJob of that name instead of creating a second one.
        labels: extra TrainJob labels.
        tolerations: Kubernetes tolerations of the node pods (GPU node pools are usually
            tainted; :func:`fairat.cluster.pods.toleration` reads the ``KEY=VALUE:EFFECT`` form).
        node_selector: node labels the node pods must land on.
        shm_size: size limit of a memory-backed ``/dev/shm`` for the node pods (NCCL between the
            GPUs of a node outgrows Kubernetes' 64 MiB); None = the default.
        image_pull_secrets: Secrets to pull a private image with.
    """

    image: str
    num_nodes: int = 1
    gpus_per_node: int = 0
    accelerator_type: str = "nvidia.com/gpu"
    cpu_per_node: str | None = None
    memory_per_node: str | None = None
    params_path: str = "/workspace/params.yaml"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_dir: str = "/workspace/data/prepared"
    work_dir: str = "/workspace/run"
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, tuple[str, str] | tuple[str, str, bool]] = field(
        default_factory=lambda: dict(DEFAULT_SECRET_ENV))
    config_map_env: Mapping[str, tuple[str, str]] = field(
        default_factory=lambda: dict(DEFAULT_CONFIG_MAP_ENV))
    volume_claim: str | None = None
    mount_path: str = "/workspace"
    resume: bool = True
    checkpoint_url: str | None = None
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, str], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    shm_size: str | None = None
    image_pull_secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.image or ":" not in self.image.rsplit("/", 1)[-1] and "@" not in self.image:
            raise ValueError(f"image: {self.image!r} needs an explicit tag or digest")
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes: {self.num_nodes} must be >= 1")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node: {self.gpus_per_node} must be >= 0")
        clash = ((set(self.env) & set(self.secret_env)) | (set(self.env) & set(self.config_map_env))
                 | (set(self.secret_env) & set(self.config_map_env)))
        if clash:
            raise ValueError(f"env, secret_env and config_map_env both set {sorted(clash)}")
        for var in self.env:
            if any(word in var.upper() for word in ("SECRET", "PASSWORD", "TOKEN", "KEY")):
                raise ValueError(f"env: {var} looks like a credential; put it in secret_env "
                                 "(a Kubernetes secret reference), never inline")


def train_command(spec: TrainJobSpec) -> list[str]:
    """``torchrun -m fairat train ...`` for every node; torchrun takes nodes, processes per node,
    node rank and rendezvous from the ``PET_*`` variables the torch-distributed runtime sets."""
    out = spec.work_dir.rstrip("/")
    cmd = ["torchrun", "-m", "fairat", "train", "--params", spec.params_path,
           "--data", spec.data_dir, "--model", f"{out}/model.pt",
           "--checkpoints", f"{out}/checkpoints", "--metrics", f"{out}/train.json",
           "--history", f"{out}/train.csv"]
    if spec.resume:
        cmd.append("--resume")
    if spec.checkpoint_url:
        cmd += ["--checkpoint-url", spec.checkpoint_url]
    for key, value in spec.overrides.items():
        cmd += ["-S", f"{key}={_yaml_scalar(value)}"]
    return cmd


def _yaml_scalar(value: Any) -> str:
    """A value as `-S` parses it back (YAML): booleans/None spelled the YAML way, lists inline."""
    import json

    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def trainjob_request(spec: TrainJobSpec) -> tuple[Any, list[Any]]:
    """The SDK objects for ``TrainerClient().train(runtime=RUNTIME, trainer=..., options=...)``:
    a ``CustomTrainerContainer`` and the options (command, labels, secret env, volume)."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import Name
    from kubeflow.trainer.options import kubernetes as opt

    resources: dict[str, Any] = {}
    if spec.gpus_per_node:
        resources[spec.accelerator_type] = str(spec.gpus_per_node)  # a quantity string
    if spec.cpu_per_node:
        resources["cpu"] = spec.cpu_per_node
    if spec.memory_per_node:
        resources["memory"] = spec.memory_per_node
    trainer = CustomTrainerContainer(image=spec.image, num_nodes=spec.num_nodes,
                                     resources_per_node=resources or None,
                                     env=dict(spec.env) or None)
    options: list[Any] = [opt.TrainerCommand(command=train_command(spec)),
                          opt.Labels(labels={"app.kubernetes.io/part-of": "fairat",
                                             **spec.labels})]
    if spec.name:
        options.append(Name(name=spec.name))
    secret_env = [_env_ref(var, "secretKeyRef", *ref) for var, ref in spec.secret_env.items()]
    secret_env += [_env_ref(var, "configMapKeyRef", name, key, True)
                   for var, (name, key) in spec.config_map_env.items()]
    mounts, volumes = [], []
    if spec.volume_claim:
        mounts.append({"name": "fairat-work", "mountPath": spec.mount_path})
        volumes.append({"name": "fairat-work",
                        "persistentVolumeClaim": {"claimName": spec.volume_claim}})
    if spec.shm_size:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory",
                                                     "sizeLimit": spec.shm_size}})
    pod_fields = {"tolerations": [dict(t) for t in spec.tolerations] or None,
                  "node_selector": dict(spec.node_selector) or None,
                  "image_pull_secrets": [{"name": n} for n in spec.image_pull_secrets] or None}
    if secret_env or volumes or any(pod_fields.values()):
        container = opt.ContainerPatch(name=NODE, env=secret_env or None,
                                       volume_mounts=mounts or None)
        pod = opt.PodTemplatePatch(spec=opt.PodSpecPatch(containers=[container],
                                                         volumes=volumes or None,
                                                         **pod_fields))
        job = opt.ReplicatedJobPatch(name=NODE, template=opt.JobTemplatePatch(
            spec=opt.JobSpecPatch(template=pod)))
        options.append(opt.RuntimePatch(training_runtime_spec=opt.TrainingRuntimeSpecPatch(
            template=opt.JobSetTemplatePatch(spec=opt.JobSetSpecPatch(replicated_jobs=[job])))))
    return trainer, options


def _env_ref(var: str, kind: str, name: str, key: str, optional: bool = False) -> dict[str, Any]:
    """An env entry that *references* a key of a Secret or ConfigMap; ``optional`` lets the pod
    start without the key (kubelet leaves the variable unset) instead of refusing to start."""
    ref: dict[str, Any] = {"name": name, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": var, "valueFrom": {kind: ref}}


def _offline_runtime(spec: TrainJobSpec) -> Any:
    """The torch-distributed runtime as the SDK describes it after reading it from a cluster."""
    from kubeflow.trainer import RuntimeKind, RuntimeTrainer, TrainerType
    from kubeflow.trainer.types.types import Runtime

    trainer = RuntimeTrainer(trainer_type=TrainerType.CUSTOM_TRAINER, framework="torch",
                             image=spec.image)
    return Runtime(name=RUNTIME, trainer=trainer, kind=RuntimeKind.CLUSTER_TRAINING_RUNTIME)


def trainjob_manifest(spec: TrainJobSpec, namespace: str = "default") -> dict[str, Any]:
    """The TrainJob body the SDK would POST for ``spec``, rendered with no cluster.

    Runs the SDK's own ``KubernetesBackend.train`` (options, trainer CR, runtime patches) with the
    runtime given as an object (so nothing is looked up) and a recorder in place of the
    Kubernetes custom-objects API.
    """
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend

    class Recorder:
        def __init__(self) -> None:
            self.bodies: list[dict[str, Any]] = []

        def create_namespaced_custom_object(self, group, version, ns, plural, body):
            self.bodies.append({"group": group, "version": version, "namespace": ns,
                                "plural": plural, "body": body})

    class OfflineBackend(KubernetesBackend):
        def __init__(self) -> None:  # no kube-config, no API server
            self.namespace = namespace
            self.custom_api = Recorder()

    backend = OfflineBackend()
    trainer, options = trainjob_request(spec)
    backend.train(runtime=_offline_runtime(spec), trainer=trainer, options=options)
    (call,) = backend.custom_api.bodies
    return call["body"]


class TrainJobCancelled(BaseException):
    """SIGTERM reached the launcher (Kubeflow terminating the run, or the pod being evicted).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (the
    SDK has several) swallows it before the TrainJob is deleted.
    """


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`TrainJobCancelled` (main thread only: Python delivers
    signals there; elsewhere the default action stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: Any) -> None:
        raise TrainJobCancelled(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _sigterm_ignored() -> Iterator[None]:
    """Inside, a second SIGTERM does not cut the clean-up short (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _find_job(client: Any, name: str) -> Any:
    """The TrainJob ``name`` as the SDK describes it, or None when the API server has none."""
    from kubernetes.client.exceptions import ApiException

    try:
        return client.get_job(name)
    except RuntimeError as err:  # the SDK wraps the API's answer
        cause = err.__cause__
        if isinstance(cause, ApiException) and cause.status == 404:
            return None
        raise


def _print_logs(client: Any, name: str) -> None:
    for line in client.get_job_logs(name):
        print(line, end="" if line.endswith("\n") else "\n")


def _delete(client: Any, name: str, why: str, timeout_s: float = 60.0) -> None:
    """Delete the TrainJob and wait (up to ``timeout_s``) until the API server no longer has it,
    so that a retry may create one of the same name; a failed delete is reported, not raised, so
    it never hides the error that led here."""
    try:
        client.delete_job(name)
        deadline = time.monotonic() + timeout_s
        while _find_job(client, name) is not None and time.monotonic() < deadline:
            time.sleep(1.0)
        print(f"TrainJob {name}: deleted ({why})", flush=True)
    except Exception as err:  # noqa: BLE001 (report and go on: the original error matters more)
        print(f"TrainJob {name}: could not delete it ({why}): {err}; delete it by hand: "
              f"kubectl delete trainjob {name}", flush=True)


def submit_trainjob(spec: TrainJobSpec, namespace: str | None = None, wait: bool = False,
                    timeout_s: int = 24 * 3600, keep_failed: bool = False,
                    poll_s: float = 10.0) -> str:
    """Create the TrainJob on the cluster in the current kube context; returns its name.

    With ``spec.name`` set, a TrainJob of that name (left by an earlier attempt of the same run:
    a retried or re-submitted launcher) is adopted instead of creating a second one: a running
    one is waited for, a completed one only has its logs printed, and a failed one is deleted and
    created anew (its checkpoints let it resume), unless ``keep_failed`` says to leave it for
    inspection (then this raises, naming it).

    With ``wait``, block until it completes and print the rank-0 node's logs. A TrainJob that
    fails or does not finish within ``timeout_s`` raises (so a pipeline step wrapping this fails
    too) and is deleted unless ``keep_failed``; one whose launcher is cancelled (SIGTERM, which
    Kubernetes sends when a run is terminated, or Ctrl-C) is always deleted: no TrainJob goes
    on holding GPUs for a launcher that is gone.
    """
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient

    # $KUBECONFIG as it is now (the kubernetes client reads it once, when first imported);
    # unset inside a pod, where the SDK takes the in-cluster service account
    client = TrainerClient(backend_config=KubernetesBackendConfig(
        namespace=namespace, config_file=os.environ.get("KUBECONFIG") or None))
    name = spec.name
    try:
        with _sigterm_raises():
            name, status = _create_or_adopt(client, spec, keep_failed)
            if not wait:
                return name
            if status != "Complete":
                _wait(client, name, timeout_s, poll_s, keep_failed)
    except (TrainJobCancelled, KeyboardInterrupt) as err:
        if name:
            with _sigterm_ignored():
                _delete(client, name, f"the launcher was cancelled: {err or 'interrupted'}")
        raise
    _print_logs(client, name)
    return name


def _create_or_adopt(client: Any, spec: TrainJobSpec, keep_failed: bool) -> tuple[str, str]:
    """``(name, status)`` of the TrainJob this launcher follows: the one an earlier attempt
    created under ``spec.name`` (a failed one replaced unless ``keep_failed``), else a new one."""
    existing = _find_job(client, spec.name) if spec.name else None
    if existing is not None and existing.status == "Failed":
        if keep_failed:
            raise RuntimeError(f"TrainJob {spec.name} of an earlier attempt failed and is kept "
                               f"(keep_failed_trainjob): inspect it, delete it (kubectl delete "
                               f"trainjob {spec.name}) and retry; its checkpoints stay")
        _delete(client, spec.name, "it failed in an earlier attempt; starting it again")
        existing = None
    if existing is not None:
        print(f"TrainJob {existing.name}: adopted from an earlier attempt of this run "
              f"({existing.status}); not creating another", flush=True)
        return existing.name, existing.status
    trainer, options = trainjob_request(spec)
    name = client.train(runtime=RUNTIME, trainer=trainer, options=options)
    print(f"TrainJob {name}: {spec.num_nodes} node(s) x {spec.gpus_per_node or 'CPU'} "
          f"({RUNTIME}): {shlex.join(train_command(spec))}", flush=True)
    return name, "Created"


def _wait(client: Any, name: str, timeout_s: float, poll_s: float, keep_failed: bool) -> None:
    """Wait for Complete; on Failed or a timeout print what the rank-0 node logged, delete the
    TrainJob unless ``keep_failed``, and raise."""
    try:
        client.wait_for_job_status(name, status={"Complete"}, timeout=timeout_s,
                                   polling_interval=poll_s)
    except (RuntimeError, TimeoutError) as err:  # Failed, or not done in time
        try:
            _print_logs(client, name)
        except Exception:  # noqa: BLE001 (the pods may be gone; the failure is what matters)
            pass
        if keep_failed:
            print(f"TrainJob {name}: kept for inspection (keep_failed_trainjob); delete it with "
                  f"kubectl delete trainjob {name}", flush=True)
        else:
            _delete(client, name, str(err))
        raise RuntimeError(f"TrainJob {name} did not complete: {err}") from err
