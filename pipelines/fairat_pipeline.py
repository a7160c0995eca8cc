"""The fairat Kubeflow pipeline: prepare -> train -> evaluate -> gate -> register, as in dvc.yaml,
with the PGD-AT baseline trained and evaluated beside the model (baseline-train, baseline-evaluate,
compare) so the model card and the version's tags show the lift on the weakest class next to the
cost; compile with ``ClusterSettings(baseline=False)`` (``--no-baseline``) to leave it out.

The tasks are the stages of the one stage table (:data:`fairat.stages.STAGES`, which ``dvc.yaml``'s
check and ``fairat run`` read too), created in its order, each wired to the outputs of the stages
it reads from (:mod:`pipelines.stage_map`, the one place that maps stages to Kubeflow tasks).

Wiring only. Every `params.yaml` knob is a pipeline parameter (``train.attack.eps`` ->
``train__attack__eps``, see :mod:`fairat.cluster.params`) whose default is read from the params
file when the pipeline is built, so the compiled YAML and the local pipeline share one source of
truth. Each task receives only the knobs of the sections its step reads, so a cached step is reused
when only other sections change (prepare, when training knobs change).

The run form is typed (see :mod:`fairat.cluster.params`): integers, floats and booleans are
``int``, ``float`` and ``bool`` parameters whose defaults are written as their type (``30``, not
kfp's ``30.0``); a nullable knob keeps its base type with a sentinel for null (``-1``, ``-1.0``,
``""``); lists are JSON text. Every parameter carries a description (the knob's comment in
``params.yaml``), which kfp takes from the pipeline function's ``Args:`` docstring section.

Four more run-time parameters set up the training task: ``accelerator_type`` (the Kubernetes
resource name, e.g. ``nvidia.com/gpu``), ``gpus_per_node`` (the accelerator limit, and the number of
torchrun processes when above 1), ``num_nodes`` and ``checkpoint_url`` (an S3 prefix for the epoch
checkpoints, so a retried train pod resumes). kfp 2.17 accepts pipeline parameters for the
accelerator type and limit, but the KFP v2 driver reads both with ``GetStringValue()``
(``backend/src/v2/driver``: ``initPodSpecPatch``, ``resolvePodSpecInputRuntimeParameter``), so a
number-typed limit resolves to ``""`` and the pod gets no GPU: ``gpus_per_node`` is a STRING
parameter (``"1"``), decoded and checked where it is used
(:func:`fairat.cluster.params.accelerator_count`). The train task also gets the run's id
(``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), which keys its checkpoints and its TrainJob so that a retry
finds them.

How train runs is fixed at compile time by ``ClusterSettings.shared_volume_claim``:

- without a claim (the default, and the committed YAML), the train task trains in its own pod on
  the GPUs it requests (torchrun across them when ``gpus_per_node > 1``); ``num_nodes > 1`` fails
  with a message asking for a shared volume;
- with a claim, the train task is a launcher *without* GPUs: it stages the prepared data on the
  claim, creates a Kubeflow Trainer TrainJob of ``num_nodes`` x ``gpus_per_node``
  (:mod:`fairat.cluster.trainjob`), waits for it and copies its outputs into the task's artifacts.

Why not both behind a run-time ``dsl.If`` on ``num_nodes``: evaluate, gate and register would then
take the model through ``dsl.OneOf`` over artifacts, which kfp.local 2.17 rejects ("Expected 1
artifact in ArtifactSelectorSpec") and which KFP backends up to 2.16 fail at run time
(kubeflow/pipelines#13436). And one task cannot do both: a launcher that requests
``gpus_per_node`` GPUs holds a GPU node idle, which can leave the TrainJob unschedulable.

Compile-time settings (:class:`ClusterSettings`) hold what must never be a run parameter: the
image, the names of the Kubernetes secrets that carry S3 and MLflow credentials and the signing
keys (never the keys themselves), and the shared volume claim.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import yaml
from kfp import compiler, dsl, kubernetes

from components import IMAGE, compare, evaluate, gate, prepare, register, train
from fairat.config import Params
from fairat.evidence.attestation import SIGNING_KEY_ENV, VERIFY_KEY_ENV
from fairat.overlays import load_params_files
from fairat.evidence.comparison import BASELINE_METHOD
from fairat.cluster.params import Knob, knob_lines, knobs, yaml_comments
from fairat.cluster.pods import check_quantity, check_secret_name, node_label, toleration
from fairat.stages import Stage
from pipelines.stage_map import CACHED, POD_ACCESS, TASK_NAMES, pipeline_stages, wiring

PIPELINE_NAME = "fairat"
REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "params.yaml"
COMPILED_FILE = Path(__file__).resolve().with_name("fairat_pipeline.yaml")

# Which params sections (or single keys) each step reads (register logs the whole params tree to
# MLflow). Evaluate also reads train.attack.eps: params validation checks the gate's threat model
# (evaluate.eps) against the training radius.
SECTIONS = {"prepare": ("data",), "train": ("model", "train"),
            "evaluate": ("evaluate", "track", "train.attack.eps"),
            "gate": ("gate",), "compare": ("gate", "track"),
            "register": ("data", "model", "train", "evaluate", "gate", "track")}

# Run-time settings of the training task, beside the params.yaml knobs: (name, type, default,
# text).
RESOURCE_PARAMETERS = (
    ("accelerator_type", str, "nvidia.com/gpu",
     "Kubernetes resource name of the GPUs the train task requests (nvidia.com/gpu, amd.com/gpu)"),
    ("gpus_per_node", str, "1",
     "GPUs per training node, a whole number written as text (the KFP driver reads the GPU "
     "limit as a string); above 1 torchrun starts one process per GPU; 0 trains on CPU; above 0 "
     "training refuses to start without a usable GPU"),
    ("num_nodes", int, 1,
     "training nodes; above 1 trains as a Kubeflow Trainer TrainJob, which needs the pipeline "
     "compiled with --shared-volume-claim"),
    ("checkpoint_url", str, "",
     "s3://bucket/prefix where train keeps its epoch checkpoints (under <prefix>/fairat-<run "
     "key>/, pushed after every epoch), so a retried train pod resumes instead of starting "
     "again; empty: pod scratch space only. With a shared volume they live on the volume and "
     "are also mirrored here. Endpoint and keys come from the fairat-s3 secret and the "
     "fairat-endpoints ConfigMap"))
SUMMARY = ("fairat: adversarial training (PGD-AT, TRADES, FairAT), class-wise robustness "
           "evaluation, fairness gate and MLflow registration.")


@dataclass(frozen=True)
class ClusterSettings:
    """Compile-time cluster settings; secret *names* only, values live in the cluster.

    Secrets (see docs/kubeflow.md for the kubectl commands that create them):
        s3_secret: keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (optional: data or an MLflow
            artifact store on S3 need it, a proxied MLflow server does not).
        mlflow_secret: key MLFLOW_TRACKING_URI (required by train, which logs its epochs to an
            MLflow run, and by register).
        mlflow_auth_secret: keys MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, mounted as
            optional (keys may be absent); by default the same secret as the tracking URI, so one
            `fairat-mlflow` secret serves this pipeline and the Trainer TrainJob alike.
        endpoints_config_map: keys AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL (optional; MinIO etc.).

    Training as a Kubeflow Trainer TrainJob (needed for ``num_nodes > 1``):
        shared_volume_claim: a ReadWriteMany PersistentVolumeClaim in the run's namespace,
            mounted at ``shared_mount_path`` on the train task and on every TrainJob node. Set:
            train always runs as a TrainJob; None (default): train runs in its own pod, and
            ``num_nodes > 1`` fails with a message saying so.
        trainer_namespace: where the TrainJob is created; None = the pipeline pod's namespace
            (its service account needs the RBAC in docs/kubeflow.md).
        keep_failed_trainjob: leave a failed TrainJob (and its pods) for inspection instead of
            deleting it; a cancelled launcher deletes its TrainJob either way.

    The baseline:
        baseline: train and evaluate a PGD-AT model beside the one the run trains (the same
            data, seed and every training knob but the method's own), and compare the two; the
            registered version carries the lift. Doubles the training cost; False leaves it out.

    The GPU training pods (train and baseline-train in their own pods, :func:`_on_gpu_nodes`, or
    the nodes of their TrainJob, through :func:`trainjob_settings`):
        gpu_tolerations: ``KEY[=VALUE][:EFFECT]`` taints they tolerate (GPU node pools are
            usually tainted, e.g. ``nvidia.com/gpu:NoSchedule``).
        gpu_node_selector: ``KEY=VALUE`` node labels they must land on.
        train_cpu_request, train_memory_request: their requests (``8``, ``32Gi``); None: none.
        shm_size: size limit of the memory-backed ``/dev/shm`` they mount; None: Kubernetes'
            64 MiB default.
        train_retries: how often a failed train pod is retried (the KFP backend's retry covers
            a failed container; a pod lost with its node needs the Argo default in
            docs/kubeflow.md).

    Every task:
        image_pull_secrets: Secrets (in the run's namespace) to pull a private image with.

    Signed evidence (docs/guard.md, attested mode; None: local mode, nothing signed):
        signing_key_secret: a Secret with key ``FAIRAT_SIGNING_KEY`` (the Ed25519 private key,
            PEM), given to the evaluate and gate pods (baseline-evaluate too), required.
        verify_key_secret: a Secret with key ``FAIRAT_VERIFY_KEY`` (the public key, PEM), given
            to the register pods; None: the same Secret as the signing key, of which register
            gets only that key. Needs ``signing_key_secret``.
    """

    image: str = IMAGE
    s3_secret: str = "fairat-s3"
    mlflow_secret: str = "fairat-mlflow"
    mlflow_auth_secret: str = "fairat-mlflow"
    endpoints_config_map: str = "fairat-endpoints"
    train_retries: int = 2  # preempted or lost GPU nodes are the usual failure; retry with backoff
    shared_volume_claim: str | None = None
    shared_mount_path: str = "/fairat-shared"
    trainer_namespace: str | None = None
    keep_failed_trainjob: bool = False
    baseline: bool = True  # train the PGD-AT baseline beside the model, as `dvc repro` does
    gpu_tolerations: tuple[str, ...] = ()
    gpu_node_selector: tuple[str, ...] = ()
    train_cpu_request: str | None = None
    train_memory_request: str | None = None
    shm_size: str | None = "8Gi"
    image_pull_secrets: tuple[str, ...] = ()
    signing_key_secret: str | None = None
    verify_key_secret: str | None = None

    def __post_init__(self) -> None:
        """Refuse a malformed setting now, naming it, not as a pod that never schedules."""
        for text in self.gpu_tolerations:
            toleration(text)
        for text in self.gpu_node_selector:
            node_label(text)
        check_quantity("train_cpu_request", self.train_cpu_request, memory=False)
        check_quantity("train_memory_request", self.train_memory_request, memory=True)
        check_quantity("shm_size", self.shm_size, memory=True)
        for name in (*self.image_pull_secrets, self.signing_key_secret, self.verify_key_secret):
            if name is not None:
                check_secret_name(name)
        if self.verify_key_secret and not self.signing_key_secret:
            raise ValueError(f"verify_key_secret {self.verify_key_secret!r} without a "
                             "signing_key_secret: evaluate and the gate would sign nothing, so "
                             "register would block every model; name the signing key's Secret")
        if self.train_retries < 0:
            raise ValueError(f"train_retries: {self.train_retries} must be >= 0")


def trainjob_settings(settings: ClusterSettings) -> str:
    """The compile-time JSON the train component needs to build a TrainJob (read by
    ``fairat.cluster.runtime.stage_trainjob``): the image, the shared volume, the *names* of the
    Secrets and ConfigMap the pipeline's own tasks use (the values stay in the cluster), and the
    GPU pod settings, which the TrainJob's nodes get as the train pods would."""
    import json

    return json.dumps({"image": settings.image, "volume_claim": settings.shared_volume_claim,
                       "mount_path": settings.shared_mount_path,
                       "namespace": settings.trainer_namespace, "s3_secret": settings.s3_secret,
                       "mlflow_secret": settings.mlflow_secret,
                       "mlflow_auth_secret": settings.mlflow_auth_secret,
                       "endpoints_config_map": settings.endpoints_config_map,
                       "keep_failed_trainjob": settings.keep_failed_trainjob,
                       "tolerations": list(settings.gpu_tolerations),
                       "node_selector": list(settings.gpu_node_selector),
                       "cpu_request": settings.train_cpu_request,
                       "memory_request": settings.train_memory_request,
                       "shm_size": settings.shm_size,
                       "image_pull_secrets": list(settings.image_pull_secrets)}, sort_keys=True)


def _trainer_inputs(settings: ClusterSettings, accelerator_type: Any) -> dict[str, Any]:
    """Extra train-task inputs when train runs as a TrainJob (none otherwise, so the default
    pipeline's train task is unchanged): the settings JSON and the GPU resource name."""
    if not settings.shared_volume_claim:
        return {}
    return {"trainjob": trainjob_settings(settings), "accelerator_type": accelerator_type}


def _with_s3(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    kubernetes.use_secret_as_env(task, settings.s3_secret, {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}, optional=True)
    kubernetes.use_config_map_as_env(task, settings.endpoints_config_map, {
        "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"}, optional=True)


def _with_mlflow(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    kubernetes.use_secret_as_env(task, settings.mlflow_secret,
                                 {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    kubernetes.use_secret_as_env(task, settings.mlflow_auth_secret, {
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}, optional=True)


def _with_signing_key(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    """The private key as ``FAIRAT_SIGNING_KEY`` (PEM text) from the Secret's key of that name;
    required: a pipeline compiled to sign must not quietly run unsigned. None: local mode."""
    if settings.signing_key_secret:
        kubernetes.use_secret_as_env(task, settings.signing_key_secret,
                                     {SIGNING_KEY_ENV: SIGNING_KEY_ENV})


def _with_verify_key(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    """Only the public key, ``FAIRAT_VERIFY_KEY``, from its Secret (by default the signing key's
    Secret, of which the pod then sees this one key): register never holds the private key."""
    secret = settings.verify_key_secret or settings.signing_key_secret
    if secret:
        kubernetes.use_secret_as_env(task, secret, {VERIFY_KEY_ENV: VERIFY_KEY_ENV})


ACCESS = {"s3": _with_s3, "mlflow": _with_mlflow, "signing_key": _with_signing_key,
          "verify_key": _with_verify_key}


def _on_gpu_nodes(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    """What a GPU training pod needs beyond its GPU limit: tolerations for the GPU nodes' taints,
    a node selector, CPU and memory requests (without them the pod is the first evicted, or
    OOM-killed), and a memory-backed ``/dev/shm`` (Kubernetes gives a container 64 MiB, which
    NCCL between the GPUs of one pod can outgrow; the volume counts as the pod's memory only as
    far as it is used, up to ``shm_size``)."""
    for text in settings.gpu_tolerations:
        kubernetes.add_toleration(task, **toleration(text))
    for text in settings.gpu_node_selector:
        kubernetes.add_node_selector(task, *node_label(text))
    if settings.train_cpu_request:
        task.set_cpu_request(settings.train_cpu_request)
    if settings.train_memory_request:
        task.set_memory_request(settings.train_memory_request)
    if settings.shm_size:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm",
                                   medium="Memory", size_limit=settings.shm_size)


def _signature(table: list[Knob]) -> inspect.Signature:
    types = {"str": str, "int": int, "float": float, "bool": bool, "json": str}
    P = inspect.Parameter
    params = [P(k.name, P.POSITIONAL_OR_KEYWORD, default=k.default, annotation=types[k.kind])
              for k in table]
    params += [P(name, P.POSITIONAL_OR_KEYWORD, default=default, annotation=kind)
               for name, kind, default, _ in RESOURCE_PARAMETERS]
    return inspect.Signature(params)


def _docstring(table: list[Knob]) -> str:
    """The pipeline function's docstring: kfp reads each parameter's description from its Google-
    style ``Args:`` section into ``inputDefinitions.parameters.<name>.description``."""
    lines = [SUMMARY, "", "Args:"]
    lines += [f"    {k.name}: {k.description}" for k in table]
    lines += [f"    {name}: {text}" for name, _, _, text in RESOURCE_PARAMETERS]
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=1)
def knob_comments(path: Path = PARAMS_FILE) -> dict[str, str]:
    """The knobs' descriptions: end-of-line comments of the repository's ``params.yaml`` (the
    reference file, whichever params file the defaults come from); none when it is absent."""
    return yaml_comments(path.read_text()) if path.is_file() else {}


def build_pipeline(params: Params, settings: ClusterSettings = ClusterSettings()) -> Any:
    """The pipeline (a kfp GraphComponent) with parameter defaults taken from ``params``: one
    task per stage of :func:`pipeline_stages`, created in table order, each wired to the outputs
    of its upstream stages (:func:`wiring`)."""
    table = knobs(params, knob_comments())
    signature = _signature(table)
    stages = pipeline_stages(settings.baseline)

    def fairat_pipeline(*args: Any) -> None:
        values = dict(zip(signature.parameters, args))

        def knob_text(st: Stage) -> str:
            """The step's knobs; the baseline's train task has the method fixed to PGD-AT."""
            fixed = {"train__method": BASELINE_METHOD} if st.baseline else {}
            return knob_lines({k.key: fixed.get(k.name, values[k.name]) for k in table
                               if k.section in SECTIONS[st.command]
                               or k.key in SECTIONS[st.command]})

        def train_task(st: Stage, inputs: dict[str, Any]) -> dsl.PipelineTask:
            # run_id: the run's uuid, the same for every retry, keys the checkpoints and the
            # TrainJob (with the params: the baseline's other method keeps them apart)
            task = train(params=knob_text(st), **inputs, gpus_per_node=values["gpus_per_node"],
                         num_nodes=values["num_nodes"], checkpoint_url=values["checkpoint_url"],
                         run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                         **_trainer_inputs(settings, values["accelerator_type"]))
            if settings.shared_volume_claim:
                # A launcher: no GPUs (the TrainJob's nodes hold them); a retried launcher adopts
                # the TrainJob of the attempt before it (named after the run), never a second one
                kubernetes.mount_pvc(task, pvc_name=settings.shared_volume_claim,
                                     mount_path=settings.shared_mount_path)
            else:
                task.set_accelerator_type(values["accelerator_type"])
                task.set_accelerator_limit(values["gpus_per_node"])
                _on_gpu_nodes(task, settings)
            return task.set_retry(num_retries=settings.train_retries, backoff_duration="60s",
                                  backoff_factor=2.0)

        def register_tasks(st: Stage, inputs: dict[str, Any]) -> list[dsl.PipelineTask]:
            """One register task per branch of the gate's decision; candidate only if passed."""
            with dsl.If(tasks["gate"][0].outputs["Output"] == True,  # noqa: E712
                        name="gate-passed"):
                candidate = register(params=knob_text(st), candidate=True, **inputs)
            with dsl.Else(name="gate-blocked"):
                blocked = register(params=knob_text(st), candidate=False, **inputs)
            return [candidate, blocked]

        def stage_tasks(st: Stage, inputs: dict[str, Any]) -> list[dsl.PipelineTask]:
            """The task(s) of one stage, by the step it runs, with the access its pod needs."""
            if st.command == "train":
                made = [train_task(st, inputs)]
            elif st.command == "register":
                made = register_tasks(st, inputs)
            else:
                made = [{"prepare": prepare, "evaluate": evaluate, "gate": gate,
                         "compare": compare}[st.command](params=knob_text(st), **inputs)]
            for task in made:
                task.set_caching_options(st.command in CACHED)
                for access in POD_ACCESS[st.command]:
                    ACCESS[access](task, settings)
            return made

        tasks: dict[str, list[dsl.PipelineTask]] = {}
        for st in stages:
            inputs = {port: tasks[src][0].outputs[out]
                      for port, (src, out) in wiring(st, [s.name for s in stages]).items()}
            tasks[st.name] = stage_tasks(st, inputs)
            for task, shown in zip(tasks[st.name], TASK_NAMES[st.name], strict=True):
                task.set_display_name(shown)
                task.set_container_image(settings.image)
                if settings.image_pull_secrets:
                    kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))

    fairat_pipeline.__signature__ = signature  # type: ignore[attr-defined]
    fairat_pipeline.__doc__ = _docstring(table)
    return dsl.pipeline(name=PIPELINE_NAME, description=SUMMARY)(fairat_pipeline)


def _integer_defaults(node: Any) -> None:
    """Write the defaults of ``NUMBER_INTEGER`` parameters as integers, in place.

    Why: the IR keeps every number as a protobuf double, so kfp writes an int default ``30`` as
    ``30.0``; the run form and the YAML should show the type the parameter has.
    """
    if isinstance(node, dict):
        for name, spec in (node.get("inputDefinitions", {}).get("parameters", {})).items():
            value = spec.get("defaultValue")
            if spec.get("parameterType") == "NUMBER_INTEGER" and isinstance(value, float) \
                    and value.is_integer():
                spec["defaultValue"] = int(value)
        for child in node.values():
            _integer_defaults(child)
    elif isinstance(node, list):
        for child in node:
            _integer_defaults(child)


_INT_COMMENT = re.compile(r"^(#    \w+: int \[Default: -?\d+)\.0\]$", re.MULTILINE)


def write_package(pipeline: Any, out_path: str | Path) -> Path:
    """Compile ``pipeline`` into ``out_path`` (YAML IR) with integer defaults as integers.

    kfp writes a comment header and then the documents with ``yaml.dump_all(sort_keys=True)``;
    the documents are re-dumped the same way, so only the integer defaults change.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out_path))
    text = out_path.read_text()
    body_at = next(i for i, line in enumerate(text.splitlines(keepends=True))
                   if not line.startswith("#"))
    lines = text.splitlines(keepends=True)
    header, body = "".join(lines[:body_at]), "".join(lines[body_at:])
    # libyaml's loader where PyYAML has it: the same documents, ~8x faster than the Python one
    # (about 0.5 s of every compile and submit); the dump stays PyYAML's Python emitter, whose
    # layout is kfp's (libyaml's wraps long strings differently)
    documents = list(yaml.load_all(body, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    _integer_defaults(documents[0])
    out_path.write_text(_INT_COMMENT.sub(r"\1]", header)
                        + yaml.dump_all(documents, sort_keys=True))
    return out_path


def compile_pipeline(out_path: str | Path = COMPILED_FILE,
                     params_files: str | Path | Sequence[str | Path] = PARAMS_FILE,
                     settings: ClusterSettings = ClusterSettings()) -> Path:
    """Compile the pipeline with defaults from ``params_files`` (one file, or a base and overlays
    merged in order, :func:`fairat.overlays.load_params_files`) into ``out_path`` (YAML IR)."""
    return write_package(build_pipeline(load_params_files(params_files), settings), out_path)
