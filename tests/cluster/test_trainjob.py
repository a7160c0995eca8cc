"""The Kubeflow Trainer TrainJob the project would create, rendered by the SDK without a cluster."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from fairat.config import parse_overrides
from fairat.fronts.cli import build_parser
from fairat.cluster.trainjob import (RUNTIME, TrainJobSpec, submit_trainjob, train_command,
                             trainjob_manifest, trainjob_request)

IMAGE = "registry.example.com/fairat:0.3.1"


def _spec(**kw) -> TrainJobSpec:
    base = dict(image=IMAGE, num_nodes=2, gpus_per_node=8, cpu_per_node="32",
                memory_per_node="200Gi", overrides={"train.epochs": 3, "train.amp": "auto",
                                                    "train.fairat.augment": ("cutout", "cutmix"),
                                                    "train.progress": False},
                env={"FAIRAT_DIST_TIMEOUT_S": "900"},
                volume_claim="fairat-work", name="fairat-train-1")
    base.update(kw)
    return TrainJobSpec(**base)


def _node_container(manifest: dict) -> dict:
    (patch,) = manifest["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    pod = job["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return {**container, "volumes": pod.get("volumes")}


def test_manifest_targets_torch_distributed_with_nodes_gpus_image_and_command():
    m = trainjob_manifest(_spec(), namespace="ml")
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"]["name"] == "fairat-train-1"
    assert m["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fairat"
    spec = m["spec"]
    assert spec["runtimeRef"] == {"kind": "ClusterTrainingRuntime", "name": RUNTIME}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["image"] == IMAGE
    for side in ("limits", "requests"):
        res = trainer["resourcesPerNode"][side]
        assert res["nvidia.com/gpu"] == "8" and res["cpu"] == "32" and res["memory"] == "200Gi"
    cmd = trainer["command"]
    assert cmd[:4] == ["torchrun", "-m", "fairat", "train"]  # torchrun reads PET_* from the runtime
    assert "--nproc_per_node" not in cmd and "--resume" in cmd
    assert cmd[cmd.index("--checkpoints") + 1] == "/workspace/run/checkpoints"
    assert trainer["env"] == [{"name": "FAIRAT_DIST_TIMEOUT_S", "value": "900"}]
    json.dumps(m)  # plain JSON, ready for kubectl or the API


def test_command_parses_with_our_cli_and_keeps_override_values():
    cmd = train_command(_spec())
    args = build_parser().parse_args(cmd[3:])  # what `python -m fairat` sees after torchrun
    assert args.command == "train" and args.resume
    assert parse_overrides(args.overrides) == {"train.epochs": 3, "train.amp": "auto",
                                               "train.fairat.augment": ["cutout", "cutmix"],
                                               "train.progress": False}
    assert shlex.split(shlex.join(cmd)) == cmd


def test_credentials_come_from_secrets_by_reference_only():
    m = trainjob_manifest(_spec(secret_env={"AWS_SECRET_ACCESS_KEY": ("s3-creds", "secret"),
                                            "AWS_ACCESS_KEY_ID": ("s3-creds", "id")},
                                config_map_env={}))
    container = _node_container(m)
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}}
    assert all("value" not in e for e in container["env"])  # never an inline value
    assert container["volumeMounts"] == [{"name": "fairat-work", "mountPath": "/workspace"}]
    assert container["volumes"] == [{"name": "fairat-work",
                                     "persistentVolumeClaim": {"claimName": "fairat-work"}}]
    with pytest.raises(ValueError, match="credential"):
        _spec(env={"AWS_SECRET_ACCESS_KEY": "hunter2"}, secret_env={})


def test_default_references_match_the_pipeline_secrets_and_optionality():
    """The same objects as docs/kubeflow.md and the pipeline's tasks: the tracking URI from the
    fairat-mlflow secret (required), its login and the S3 keys optional, endpoints optional."""
    env = {e["name"]: e["valueFrom"] for e in _node_container(trainjob_manifest(_spec()))["env"]}
    assert env["MLFLOW_TRACKING_URI"] == {"secretKeyRef": {"name": "fairat-mlflow",
                                                           "key": "MLFLOW_TRACKING_URI"}}
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[var] == {"secretKeyRef": {"name": "fairat-mlflow", "key": var,
                                             "optional": True}}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[var] == {"secretKeyRef": {"name": "fairat-s3", "key": var, "optional": True}}
    for var in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        assert env[var] == {"configMapKeyRef": {"name": "fairat-endpoints", "key": var,
                                                "optional": True}}
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):  # a URI is a reference, not env
        _spec(env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})


def test_other_accelerator_resource_names_pass_through():
    trainer = trainjob_manifest(_spec(accelerator_type="amd.com/gpu"))["spec"]["trainer"]
    assert trainer["resourcesPerNode"]["limits"]["amd.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]


def test_cpu_job_requests_no_gpus_and_single_node_is_allowed():
    m = trainjob_manifest(_spec(num_nodes=1, gpus_per_node=0, cpu_per_node=None,
                                memory_per_node=None, volume_claim=None, secret_env={},
                                config_map_env={}))
    trainer = m["spec"]["trainer"]
    assert trainer["numNodes"] == 1 and "resourcesPerNode" not in trainer
    assert "runtimePatches" not in m["spec"]


@pytest.mark.parametrize("kw, match", [({"image": "fairat"}, "tag"), ({"num_nodes": 0}, "num_nodes"),
                                       ({"gpus_per_node": -1}, "gpus_per_node")])
def test_spec_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        _spec(**kw)


def test_request_objects_are_the_sdk_types():
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import Labels, Name, RuntimePatch, TrainerCommand

    trainer, options = trainjob_request(_spec())
    assert isinstance(trainer, CustomTrainerContainer) and trainer.num_nodes == 2
    assert {type(o) for o in options} == {TrainerCommand, Labels, Name, RuntimePatch}


def test_submit_without_a_cluster_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Exception):
        submit_trainjob(_spec(), namespace="ml")


# ---------------------------------------------------------------- against a stand-in API server
# `kube_api` (tests/servers.py) answers the Kubernetes calls the SDK's TrainerClient makes, over
# HTTP on loopback, as the current kube context: nothing in the SDK is patched.

JOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs"


def _named(**kw) -> TrainJobSpec:
    return _spec(name="fairat-0123456789abcdef", secret_env={}, config_map_env={}, **kw)


def _routes(api, method):
    return [path for m, path in api.calls if m == method]


@pytest.mark.parametrize("keep", [False, True])
def test_a_failed_trainjob_is_deleted_unless_kept(kube_api, keep, capsys):
    kube_api.fate = "failed"
    with pytest.raises(RuntimeError, match="fairat-0123456789abcdef did not complete"):
        submit_trainjob(_named(), namespace="ml", wait=True, keep_failed=keep, poll_s=0.05)
    assert _routes(kube_api, "POST") == [JOBS]
    deleted = _routes(kube_api, "DELETE")
    if keep:
        assert deleted == [] and "fairat-0123456789abcdef" in kube_api.jobs
        assert "kept for inspection" in capsys.readouterr().out
    else:
        assert deleted == [f"{JOBS}/fairat-0123456789abcdef"] and kube_api.jobs == {}


@pytest.mark.parametrize("status", ["running", "complete"])
def test_a_retried_launcher_adopts_its_trainjob_instead_of_creating_another(kube_api, status,
                                                                            capsys):
    kube_api.add_job("fairat-0123456789abcdef")
    kube_api.fate = status
    if status == "running":  # it completes while the retried launcher waits
        threading.Timer(0.5, setattr, (kube_api, "fate", "complete")).start()
    assert submit_trainjob(_named(), namespace="ml", wait=True,
                           poll_s=0.05) == "fairat-0123456789abcdef"
    assert _routes(kube_api, "POST") == [] and _routes(kube_api, "DELETE") == []
    assert f"{JOBS}/fairat-0123456789abcdef" in _routes(kube_api, "GET")
    assert "adopted from an earlier attempt" in capsys.readouterr().out


def test_a_failed_earlier_attempt_is_replaced_or_kept(kube_api):
    kube_api.add_job("fairat-0123456789abcdef")
    kube_api.fate = "failed"
    with pytest.raises(RuntimeError, match="failed and is kept"):
        submit_trainjob(_named(), namespace="ml", wait=True, keep_failed=True, poll_s=0.05)
    assert _routes(kube_api, "POST") == [] and _routes(kube_api, "DELETE") == []
    kube_api.on_create = lambda body: setattr(kube_api, "fate", "complete")
    submit_trainjob(_named(), namespace="ml", wait=True, poll_s=0.05)
    assert _routes(kube_api, "DELETE") == [f"{JOBS}/fairat-0123456789abcdef"]
    assert _routes(kube_api, "POST") == [JOBS]  # a new one, resuming from the checkpoints


LAUNCHER = """
from fairat.cluster.trainjob import TrainJobSpec, submit_trainjob
spec = TrainJobSpec(image="registry.example.com/fairat:0.3.1", name="fairat-0123456789abcdef",
                    secret_env={}, config_map_env={})
submit_trainjob(spec, namespace="ml", wait=True, poll_s=0.05)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_cancelled_launcher_deletes_its_trainjob(kube_api, signum):
    """Kubernetes stops a terminated run's pods with SIGTERM; Ctrl-C is SIGINT."""
    # SIGINT reaches the launcher even when the suite itself runs as a background job (a
    # non-interactive shell starts those with SIGINT ignored, and children inherit that)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while _routes(kube_api, "GET").count(f"{JOBS}/fairat-0123456789abcdef") < 3:
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()
            time.sleep(0.05)
        launcher.send_signal(signum)
        out, _ = launcher.communicate(timeout=30)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert _routes(kube_api, "POST") == [JOBS]
    assert _routes(kube_api, "DELETE") == [f"{JOBS}/fairat-0123456789abcdef"], out
    assert kube_api.jobs == {} and "deleted (the launcher was cancelled" in out
