"""`fairat pipeline compile | submit`: the Kubeflow pipeline from the command line.

Why a module apart from the CLI: compiling needs kfp and submitting needs a cluster, while
`fairat --help` must answer without either, so kfp (and the pipeline definition) are imported only
inside the functions that use them.

Submitting compiles the pipeline with defaults from the given params file and passes every knob
explicitly as a run argument, so the run is exactly ``--params`` plus ``-S`` overrides whatever the
committed YAML says. A host that cannot be reached or that answers with an error stops with a
message naming the host (exit code 2), never with a library traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fairat.config import ConfigError, Params, load_params

# CLI flag -> ClusterSettings field (pipelines.fairat_pipeline); None keeps the field's default.
CLUSTER_FLAGS = {"--image": "image", "--s3-secret": "s3_secret",
                 "--mlflow-secret": "mlflow_secret", "--mlflow-auth-secret": "mlflow_auth_secret",
                 "--endpoints-config-map": "endpoints_config_map",
                 "--shared-volume-claim": "shared_volume_claim",
                 "--trainer-namespace": "trainer_namespace"}
CONNECT_TIMEOUT_S = 10.0


class KubeflowError(RuntimeError):
    """The Kubeflow Pipelines endpoint is unreachable or refused a request."""


def cluster_settings(values: dict[str, Any]) -> Any:
    """ClusterSettings with the given non-None fields replaced."""
    from pipelines.fairat_pipeline import ClusterSettings

    return ClusterSettings(**{k: v for k, v in values.items() if v is not None})


def compile_to(out_path: str | Path, params_file: str | Path, settings: Any = None) -> Path:
    """Compile the pipeline IR (YAML) with parameter defaults from ``params_file``."""
    from pipelines.fairat_pipeline import ClusterSettings, compile_pipeline

    return compile_pipeline(out_path, params_file, settings or ClusterSettings())


def _check_reachable(host: str) -> None:
    """Fail fast, naming the host, when nothing accepts a TCP connection there.

    The kfp client has no connect timeout and retries a refused connection several times; a
    preflight connect gives one clear error within ``CONNECT_TIMEOUT_S``.
    """
    url = urlparse(host if "://" in host else f"https://{host}")
    if not url.hostname:
        raise KubeflowError(f"--host {host!r} is not a URL like http://127.0.0.1:8888")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise KubeflowError(f"cannot reach Kubeflow Pipelines at {host} "
                            f"({url.hostname}:{port}): {err}") from None


def submit(host: str, params: Params, experiment: str = "fairat", run_name: str | None = None,
           namespace: str | None = None, resources: dict[str, Any] | None = None,
           settings: Any = None, enable_caching: bool | None = None) -> dict[str, str]:
    """Compile with ``params`` as defaults and start a run; returns {run_id, experiment_id, host}.

    Args:
        host: KFP API endpoint, e.g. ``http://127.0.0.1:8888`` (a port-forward of ml-pipeline-ui).
        params: the full params (file plus overrides); every knob is sent as a run argument.
        resources: pipeline arguments ``accelerator_type``, ``gpus_per_node``, ``num_nodes``.
        enable_caching: None keeps the compiled per-task caching; False forces every step to run.
    """
    import kfp
    import kfp_server_api
    import urllib3
    from kfp import compiler

    from fairat.cluster.params import pipeline_arguments
    from pipelines.fairat_pipeline import ClusterSettings, build_pipeline

    settings = settings or ClusterSettings()
    num_nodes = (resources or {}).get("num_nodes", 1)
    if num_nodes < 1:
        raise KubeflowError(f"--num-nodes {num_nodes} must be >= 1")
    if num_nodes > 1 and not settings.shared_volume_claim:
        # the run would fail in its train step after prepare; say so before submitting
        raise KubeflowError(f"--num-nodes {num_nodes} runs training as a Kubeflow Trainer "
                            "TrainJob, which needs a shared ReadWriteMany volume: pass "
                            "--shared-volume-claim NAME (see docs/kubeflow.md)")
    _check_reachable(host)
    arguments = {**pipeline_arguments(params), **(resources or {})}
    with tempfile.TemporaryDirectory(prefix="fairat-kfp-") as tmp:
        package = Path(tmp) / "fairat_pipeline.yaml"
        compiler.Compiler().compile(build_pipeline(params, settings), str(package))
        try:
            with warnings.catch_warnings():  # the client warns on every construction
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host, namespace=namespace or "kubeflow")
            result = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name,
                experiment_name=experiment, namespace=namespace, enable_caching=enable_caching)
        except kfp_server_api.ApiException as err:
            body = err.body.decode("utf-8", "replace") if isinstance(err.body, bytes) \
                else str(err.body or "")
            raise KubeflowError(f"Kubeflow Pipelines at {host} answered {err.status} "
                                f"{err.reason}: {body.strip()[:500]}") from None
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
        a.add_argument("--params", default="params.yaml", type=Path,
                       help="params file the parameter defaults come from (default: %(default)s)")
        for flag, field in CLUSTER_FLAGS.items():
            a.add_argument(flag, dest=field, default=None,
                           help=f"compile-time {field.replace('_', ' ')} (default: the pipeline's)")
    compile_p, submit_p = actions.choices["compile"], actions.choices["submit"]
    compile_p.add_argument("--out", default="pipelines/fairat_pipeline.yaml", type=Path,
                           help="output YAML (default: %(default)s)")
    submit_p.add_argument("--host", required=True,
                          help="KFP API endpoint, e.g. http://127.0.0.1:8888")
    submit_p.add_argument("--experiment", default="fairat", help="(default: %(default)s)")
    submit_p.add_argument("--run-name", default=None, help="run name shown in the UI")
    submit_p.add_argument("--namespace", default=None,
                          help="user namespace (multi-user Kubeflow)")
    submit_p.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="override one param (repeatable)")
    submit_p.add_argument("--accelerator-type", default=None,
                          help="GPU resource name (default: the pipeline's, nvidia.com/gpu)")
    submit_p.add_argument("--gpus-per-node", type=int, default=None,
                          help="GPUs for the train task; >1 runs torchrun (default: 1)")
    submit_p.add_argument("--num-nodes", type=int, default=None,
                          help="training nodes; above 1 a Kubeflow Trainer TrainJob trains "
                               "(needs --shared-volume-claim) (default: 1)")
    submit_p.add_argument("--no-cache", action="store_true",
                          help="run every step even where a cached result exists")


def main(args: argparse.Namespace) -> int:
    """Run `fairat pipeline ...`; errors print one line and return 2."""
    settings_values = {field: getattr(args, field) for field in CLUSTER_FLAGS.values()}
    try:
        settings = cluster_settings(settings_values)
        if args.action == "compile":
            out = compile_to(args.out, args.params, settings)
            print(f"compiled the fairat pipeline -> {out}")
            return 0
        resources = {k: v for k, v in (("accelerator_type", args.accelerator_type),
                                       ("gpus_per_node", args.gpus_per_node),
                                       ("num_nodes", args.num_nodes)) if v is not None}
        run = submit(args.host, load_params(args.params, args.overrides), args.experiment, args.run_name,
                     args.namespace, resources, settings, False if args.no_cache else None)
    except (KubeflowError, ConfigError) as err:
        print(f"fairat pipeline {args.action}: error: {err}", file=sys.stderr)
        return 2
    print(f"submitted run {run['run_id']} (experiment {run['experiment_id']}) to {run['host']}")
    return 0
