"""`fairat pipeline compile | submit`: the Kubeflow pipeline from the command line.

Why a module apart from the CLI: compiling needs kfp and submitting needs a cluster, while
`fairat --help` must answer without either, so kfp (and the pipeline definition) are imported only
inside the functions that use them. For the same reason the cluster-setting defaults the help shows
are spelled out here (:data:`CLUSTER_DEFAULTS`); a test keeps them equal to ``ClusterSettings``.

Submitting compiles the pipeline with defaults from the given params files (``--params`` repeated
merges overlays in order, as the main CLI does: :func:`fairat.overlays.load_params_files`) and
passes every knob explicitly as a run argument, so the run is exactly ``--params`` plus ``-S``
overrides whatever the committed YAML says. A host that cannot be reached or that answers with an error stops with a
message naming the host (exit code 2), never with a library traceback.

Credentials, TLS, proxy and the preflight checks live in :mod:`pipelines.connection`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

from fairat.config import ConfigError, Params
from fairat.overlays import load_params_files
from pipelines.connection import (COOKIE_ENV, SA_TOKEN_PATH, TOKEN_ENV,  # noqa: F401 (API)
                                  Credentials, KubeflowError, Transport, _check_access,
                                  _check_reachable, _error_detail, _namespace_hint, auth_message,
                                  credentials_from, transport_from)

# CLI flag -> ClusterSettings field (pipelines.fairat_pipeline).
CLUSTER_FLAGS = {"--image": "image", "--s3-secret": "s3_secret",
                 "--mlflow-secret": "mlflow_secret", "--mlflow-auth-secret": "mlflow_auth_secret",
                 "--endpoints-config-map": "endpoints_config_map",
                 "--shared-volume-claim": "shared_volume_claim",
                 "--trainer-namespace": "trainer_namespace",
                 "--signing-key-secret": "signing_key_secret",
                 "--verify-key-secret": "verify_key_secret"}
# ClusterSettings' defaults, spelled out for --help without importing kfp (a test compares them).
# mlflow_auth_secret None: the --mlflow-secret (ClusterSettings' default is the same name).
CLUSTER_DEFAULTS: dict[str, str | None] = {
    "image": "ghcr.io/fairat/fairat:0.1.0", "s3_secret": "fairat-s3",
    "mlflow_secret": "fairat-mlflow", "mlflow_auth_secret": None,
    "endpoints_config_map": "fairat-endpoints", "shared_volume_claim": None,
    "trainer_namespace": None, "shm_size": "8Gi", "train_retries": 2,
    "signing_key_secret": None, "verify_key_secret": None}
CLUSTER_HELP = {
    "image": "container image of every task; {commit} in it becomes the checkout's commit "
             "(e.g. ghcr.io/fairat/fairat:{commit}, the tag the image was built with, see "
             "docs/kubeflow.md), refused when the files the image copies have uncommitted "
             "changes (default: %(default)s)",
    "s3_secret": "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, mounted as optional "
                 "(default: %(default)s)",
    "mlflow_secret": "Secret with MLFLOW_TRACKING_URI, required by train, evaluate and register "
                     "(default: %(default)s)",
    "mlflow_auth_secret": "Secret with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                          "mounted as optional (default: the --mlflow-secret, fairat-mlflow)",
    "endpoints_config_map": "ConfigMap with AWS_ENDPOINT_URL and MLFLOW_S3_ENDPOINT_URL, mounted "
                            "as optional (default: %(default)s)",
    "shared_volume_claim": "ReadWriteMany PersistentVolumeClaim; set: train runs as a Kubeflow "
                           "Trainer TrainJob, needed for --num-nodes above 1 (default: none, train "
                           "runs in its own pod)",
    "trainer_namespace": "namespace the TrainJob is created in (default: the pipeline pod's)",
    "signing_key_secret": "Secret with FAIRAT_SIGNING_KEY (an Ed25519 private key, PEM) for the "
                          "evaluate and gate pods, which then sign the report and the decision; "
                          "required once named (docs/kubeflow.md) (default: none, local mode: "
                          "nothing signed, which guards against accidents, not adversaries)",
    "verify_key_secret": "Secret with FAIRAT_VERIFY_KEY (the public key, PEM) for the register "
                         "pods, which then verify the signed decision (default: the "
                         "--signing-key-secret, of which register gets only that key)"}
COMMIT_TAG = "{commit}"
REPO_ROOT = Path(__file__).resolve().parents[1]
# What the Dockerfile copies (see .dockerignore): a change there means another image.
IMAGE_SOURCES = ("pyproject.toml", "constraints.txt", "README.md", "params.yaml", "fairat",
                 "components", "pipelines", "Dockerfile")


def resolve_image(image: str, repo: Path = REPO_ROOT) -> str:
    """``image`` with ``{commit}`` replaced by the checkout's 12-digit commit.

    Why: a tag that changes with the code (``ghcr.io/fairat/fairat:<commit>``, built as
    docs/kubeflow.md shows) makes every node pull the code the run was compiled from; a reused
    tag leaves nodes with ``IfNotPresent`` on older code. Uncommitted changes to what the image
    copies would make the tag lie, so they are refused (the compiled YAML itself is exempt).
    """
    if COMMIT_TAG not in image:
        return image
    import subprocess

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                 timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KubeflowError(f"--image {image}: cannot run git ({err})") from None
        if out.returncode != 0:
            raise KubeflowError(f"--image {image}: {repo} is not a git checkout "
                                f"({out.stderr.strip()}); pass a fixed tag")
        return out.stdout

    commit = git("rev-parse", "--short=12", "HEAD").strip()
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no", "--",
                                      *IMAGE_SOURCES).splitlines()
             if not line.endswith("pipelines/fairat_pipeline.yaml")]
    if dirty:
        raise KubeflowError(f"--image {image}: {', '.join(dirty[:3])}"
                            f"{' ...' if len(dirty) > 3 else ''} changed since commit {commit}, "
                            "so an image tagged with it would not hold this code: commit first "
                            "(and build the image), or pass a fixed tag")
    return image.replace(COMMIT_TAG, commit)


def cluster_settings(values: dict[str, Any]) -> Any:
    """ClusterSettings with the given non-None fields replaced; a malformed one (a toleration,
    a quantity) is a :class:`KubeflowError` naming it. ``shm_size`` None means none, and
    ``{commit}`` in the image is resolved (:func:`resolve_image`)."""
    from pipelines.fairat_pipeline import ClusterSettings

    fields = {k: v for k, v in values.items() if v is not None}
    if fields.get("image"):
        fields["image"] = resolve_image(fields["image"])
    if "shm_size" in values:
        fields["shm_size"] = values["shm_size"]
    try:
        return ClusterSettings(**fields)
    except ValueError as err:
        raise KubeflowError(str(err)) from None


def compile_to(out_path: str | Path, params_files: str | Path | Sequence[str | Path],
               settings: Any = None) -> Path:
    """Compile the pipeline IR (YAML) with parameter defaults from ``params_files`` (one file, or
    several merged in order)."""
    from pipelines.fairat_pipeline import ClusterSettings, compile_pipeline

    return compile_pipeline(out_path, params_files, settings or ClusterSettings())


def submit(host: str, params: Params, experiment: str = "fairat", run_name: str | None = None,
           namespace: str | None = None, resources: dict[str, Any] | None = None,
           settings: Any = None, enable_caching: bool | None = None,
           credentials: Credentials | None = None,
           transport: Transport | None = None) -> dict[str, str]:
    """Compile with ``params`` as defaults and start a run; returns {run_id, experiment_id, host}.

    Args:
        host: KFP API endpoint, e.g. ``http://127.0.0.1:8888`` (a port-forward of ml-pipeline-ui).
        params: the full params (file plus overrides); every knob is sent as a run argument.
        resources: pipeline arguments ``accelerator_type``, ``gpus_per_node``, ``num_nodes``,
            ``checkpoint_url``.
        enable_caching: None keeps the compiled per-task caching; False forces every step to run.
        credentials: what authenticates the requests (:func:`credentials_from`); None: nothing.
        transport: CA, TLS verification and proxy (:func:`transport_from`); None: certifi's CAs,
            verified, no proxy.
    """
    import kfp
    import kfp_server_api
    import urllib3

    from fairat.cluster.params import accelerator_count, pipeline_arguments
    from pipelines.fairat_pipeline import ClusterSettings, build_pipeline, write_package

    settings = settings or ClusterSettings()
    creds = credentials or Credentials()
    resources = dict(resources or {})
    if "gpus_per_node" in resources:  # a STRING run parameter: the driver reads the GPU limit
        try:                          # with GetStringValue() (fairat.cluster.params)
            resources["gpus_per_node"] = str(accelerator_count(resources["gpus_per_node"]))
        except ConfigError as err:
            raise KubeflowError(f"--gpus-per-node: {err}") from None
    num_nodes = resources.get("num_nodes", 1)
    if resources.get("checkpoint_url"):
        from fairat.edge.storage import StorageError, parse_prefix_url

        try:
            parse_prefix_url(resources["checkpoint_url"])
        except StorageError as err:
            raise KubeflowError(f"--checkpoint-url: {err}") from None
    if num_nodes < 1:
        raise KubeflowError(f"--num-nodes {num_nodes} must be >= 1")
    if num_nodes > 1 and not settings.shared_volume_claim:
        # the run would fail in its train step after prepare; say so before submitting
        raise KubeflowError(f"--num-nodes {num_nodes} runs training as a Kubeflow Trainer "
                            "TrainJob, which needs a shared ReadWriteMany volume: pass "
                            "--shared-volume-claim NAME (see docs/kubeflow.md)")
    transport = transport or Transport()
    _check_reachable(host, transport)
    _check_access(host, creds, namespace, transport)
    arguments = {**pipeline_arguments(params), **resources}
    with tempfile.TemporaryDirectory(prefix="fairat-kfp-") as tmp:
        package = write_package(build_pipeline(params, settings), Path(tmp) / "fairat_pipeline.yaml")
        try:
            with warnings.catch_warnings():  # the client warns on every construction
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                client = kfp.Client(host=host, namespace=namespace or "kubeflow",
                                    **creds.client_kwargs(), **transport.client_kwargs())
                result = client.create_run_from_pipeline_package(
                    str(package), arguments=arguments, run_name=run_name,
                    experiment_name=experiment, namespace=namespace,
                    enable_caching=enable_caching)
        except kfp_server_api.ApiException as err:
            if err.status in (401, 403):
                raise KubeflowError(auth_message(host, err.status, err.reason or "",
                                                 _error_detail(err.body), creds,
                                                 namespace)) from None
            raise KubeflowError(f"Kubeflow Pipelines at {host} answered {err.status} "
                                f"{err.reason}: "
                                f"{_namespace_hint(_error_detail(err.body), namespace)}") from None
        except (urllib3.exceptions.HTTPError, TimeoutError, OSError) as err:
            raise KubeflowError(f"cannot talk to Kubeflow Pipelines at {host}: {err}") from None
    run = result.run_info
    return {"run_id": run.run_id, "experiment_id": run.experiment_id or "", "host": host}


def add_parser(sub: Any) -> None:
    """Add `fairat pipeline compile | submit` to the CLI's subcommands."""
    p = sub.add_parser("pipeline", help="compile the Kubeflow pipeline or submit a run",
                       description="The same pipeline on Kubeflow Pipelines (see docs/kubeflow.md).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("compile", "write the pipeline IR YAML"),
                       ("submit", "start a run on a Kubeflow Pipelines endpoint")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--params", action="append", default=None, type=Path, metavar="FILE",
                       help="params file the parameter defaults come from; repeat to merge "
                            "overlays in order, e.g. --params params.yaml --params "
                            "params/cifar10-cpu.yaml (sections merge key by key, later files "
                            "win; default: params.yaml)")
        cluster = a.add_argument_group("compile-time cluster settings (names only; the values "
                                       "live in the cluster)")
        for flag, field_name in CLUSTER_FLAGS.items():
            cluster.add_argument(flag, dest=field_name, default=CLUSTER_DEFAULTS[field_name],
                                 help=CLUSTER_HELP[field_name])
        cluster.add_argument("--keep-failed-trainjob", action="store_true",
                             help="leave a failed TrainJob for inspection instead of deleting "
                                  "it (a cancelled run's TrainJob is deleted either way; "
                                  "default: delete)")
        cluster.add_argument("--no-baseline", action="store_true",
                             help="leave out the PGD-AT baseline trained beside the model (half "
                                  "the training cost; the card then shows no lift; default: "
                                  "train it, as dvc repro does)")
        cluster.add_argument("--image-pull-secret", dest="image_pull_secrets", action="append",
                             default=[], metavar="NAME",
                             help="Secret in the run's namespace to pull a private --image with "
                                  "(repeatable; default: none)")
        gpu = a.add_argument_group("the GPU training pods (train and baseline-train in their own "
                                   "pods, or the nodes of their TrainJob)")
        gpu.add_argument("--gpu-toleration", dest="gpu_tolerations", action="append", default=[],
                         metavar="KEY[=VALUE][:EFFECT]",
                         help="tolerate a GPU node taint, e.g. nvidia.com/gpu:NoSchedule "
                              "(repeatable; default: none)")
        gpu.add_argument("--gpu-node-selector", dest="gpu_node_selector", action="append",
                         default=[], metavar="KEY=VALUE",
                         help="run only on nodes with this label, e.g. nvidia.com/gpu.product="
                              "NVIDIA-H100-80GB-HBM3 (repeatable; default: none)")
        gpu.add_argument("--train-cpu-request", default=None, metavar="CPU",
                         help="CPU request of the train pods, e.g. 8 (default: none)")
        gpu.add_argument("--train-memory-request", default=None, metavar="MEMORY",
                         help="memory request of the train pods, e.g. 32Gi (default: none; "
                              "without one the pod is the first evicted under memory pressure)")
        gpu.add_argument("--shm-size", default=CLUSTER_DEFAULTS["shm_size"], metavar="SIZE",
                         help="size limit of the memory-backed /dev/shm the train pods mount "
                              "(NCCL between GPUs outgrows Kubernetes' 64 MiB); 0: none "
                              "(default: %(default)s)")
        gpu.add_argument("--train-retries", type=int, default=CLUSTER_DEFAULTS["train_retries"],
                         metavar="N",
                         help="retries of a failed train pod, with backoff; a pod lost with its "
                              "node needs the Argo retry policy in docs/kubeflow.md (default: "
                              "%(default)s)")
    compile_p, submit_p = actions.choices["compile"], actions.choices["submit"]
    compile_p.add_argument("--out", default="pipelines/fairat_pipeline.yaml", type=Path,
                           help="output YAML (default: %(default)s)")
    submit_p.add_argument("--host", required=True,
                          help="KFP API endpoint, e.g. http://127.0.0.1:8888 (a port-forward) or "
                               "https://kubeflow.example.com/pipeline (through the gateway)")
    submit_p.add_argument("--experiment", default="fairat",
                          help="experiment the run is filed under (default: %(default)s)")
    submit_p.add_argument("--run-name", default=None,
                          help="run name shown in the UI (default: kfp's, the pipeline name and "
                               "the time)")
    submit_p.add_argument("--namespace", default=None,
                          help="profile namespace of a multi-user Kubeflow, e.g. "
                               "kubeflow-user-example-com (default: none, single-user)")
    submit_p.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="override one param (repeatable)")
    submit_p.add_argument("--accelerator-type", default=None,
                          help="GPU resource name (default: the pipeline's, nvidia.com/gpu)")
    submit_p.add_argument("--gpus-per-node", type=int, default=None,
                          help="GPUs for the train task, sent as the text run parameter the "
                               "KFP driver needs for the GPU limit; >1 runs torchrun; >0: train "
                               "refuses to start without a usable GPU; 0: CPU (default: 1)")
    submit_p.add_argument("--num-nodes", type=int, default=None,
                          help="training nodes; above 1 a Kubeflow Trainer TrainJob trains "
                               "(needs --shared-volume-claim) (default: 1)")
    submit_p.add_argument("--checkpoint-url", default=None, metavar="S3_URL",
                          help="s3://bucket/prefix for train's epoch checkpoints, so a retried "
                               "train pod resumes (default: none, pod scratch space)")
    submit_p.add_argument("--no-cache", action="store_true",
                          help="run every step even where a cached result exists")
    tls = submit_p.add_argument_group(
        "connection: TLS and proxy (the proxy comes from HTTPS_PROXY / HTTP_PROXY, minus "
        "NO_PROXY, as for curl and pip)")
    tls.add_argument("--ca-cert", default=None, metavar="PEM_FILE",
                     help="trust the CA certificates in this PEM file for the endpoint (a "
                          "private CA); default: the public CAs of certifi")
    tls.add_argument("--insecure-skip-tls-verify", action="store_true",
                     help="do not verify the endpoint's TLS certificate at all (anyone in "
                          "between can read the token); only on purpose, for a test cluster; "
                          "default: verify")
    auth = submit_p.add_argument_group(
        "authentication (docs/kubeflow.md): secrets come from the environment or a file, never "
        "from the command line, and are never printed")
    auth.add_argument("--token-env", default=TOKEN_ENV, metavar="NAME",
                      help="environment variable holding a bearer token (a user or "
                           "ServiceAccount token), sent as 'Authorization: Bearer'; the default "
                           "is read when set, another NAME must be set (default: %(default)s)")
    auth.add_argument("--in-cluster-token", action="store_true",
                      help="send the pod's projected ServiceAccount token (audience "
                           "pipelines.kubeflow.org), re-read on every request, instead of "
                           "--token-env")
    auth.add_argument("--token-path", default=None, metavar="PATH",
                      help=f"where --in-cluster-token reads the token; implies it (default: "
                           f"{SA_TOKEN_PATH})")
    auth.add_argument("--cookie-env", default=COOKIE_ENV, metavar="NAME",
                      help="environment variable holding the session cookie NAME=VALUE of a "
                           "logged-in browser: authservice_session=... (Dex + oidc-authservice) or "
                           "oauth2_proxy_kubeflow=... (oauth2-proxy, Kubeflow 1.9+); "
                           "the default is read when set, another NAME must be set "
                           "(default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    """Run `fairat pipeline ...`; errors print one line and return 2."""
    settings_values = {name: getattr(args, name) for name in CLUSTER_FLAGS.values()}
    settings_values["keep_failed_trainjob"] = args.keep_failed_trainjob or None
    settings_values["baseline"] = False if args.no_baseline else None
    settings_values.update(
        gpu_tolerations=tuple(args.gpu_tolerations),
        gpu_node_selector=tuple(args.gpu_node_selector),
        train_cpu_request=args.train_cpu_request, train_memory_request=args.train_memory_request,
        shm_size=None if args.shm_size in ("0", "", "none") else args.shm_size,
        train_retries=args.train_retries, image_pull_secrets=tuple(args.image_pull_secrets))
    if settings_values["mlflow_auth_secret"] is None:  # one secret serves both, unless told
        settings_values["mlflow_auth_secret"] = settings_values["mlflow_secret"]
    params_files = list(args.params or [Path("params.yaml")])
    try:
        settings = cluster_settings(settings_values)
        if args.action == "compile":
            out = compile_to(args.out, params_files, settings)
            print(f"compiled the fairat pipeline -> {out}")
            return 0
        resources = {k: v for k, v in (("accelerator_type", args.accelerator_type),
                                       ("gpus_per_node", args.gpus_per_node),
                                       ("num_nodes", args.num_nodes),
                                       ("checkpoint_url", args.checkpoint_url)) if v is not None}
        params = load_params_files(params_files, args.overrides)
        creds = credentials_from(args.token_env, args.cookie_env, args.in_cluster_token,
                                 args.token_path)
        transport = transport_from(args.host, args.ca_cert, args.insecure_skip_tls_verify)
        if not transport.verify:
            print(f"fairat pipeline submit: warning: TLS verification of {args.host} is off "
                  "(--insecure-skip-tls-verify): the credentials go to whoever answers",
                  file=sys.stderr)
        if transport.proxy:
            print(f"through the proxy {transport.proxy} (from ${transport.proxy_source})")
        run = submit(args.host, params, args.experiment, args.run_name, args.namespace,
                     resources, settings, False if args.no_cache else None, creds, transport)
    except (KubeflowError, ConfigError) as err:
        print(f"fairat pipeline {args.action}: error: {err}", file=sys.stderr)
        return 2
    print(f"submitted run {run['run_id']} (experiment {run['experiment_id']}) to {run['host']} "
          f"with {creds.source}")  # where the credentials came from, never their values
    return 0
