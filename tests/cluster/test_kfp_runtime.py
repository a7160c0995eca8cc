"""Kubeflow: what the components run in the image (fairat.cluster.runtime): train in its own pod,
resume from S3 checkpoints, the TrainJob launcher, the register branch guard."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fairat.config import ConfigError, load_params, with_overrides
from fairat.cluster.params import knob_lines, knobs, params_from_lines


# ---------------------------------------------------------------- component runtime guards

def test_train_launches_torchrun_per_gpu_on_one_node_and_checks_sizes(tmp_path):
    from fairat.cluster.runtime import run_train, torchrun_command

    with pytest.raises(ValueError, match="num_nodes=0"):
        run_train("", str(tmp_path), str(tmp_path / "m"), str(tmp_path / "s"), "1", 0)
    # the GPU count arrives as text (a STRING run parameter) and is checked before any work
    for bad in ("-1", "1.5", "two", "", " ", True):
        with pytest.raises(ConfigError, match="gpus_per_node: expected a non-negative integer"):
            run_train("", str(tmp_path), str(tmp_path / "m"), str(tmp_path / "s"), bad, 1)
    assert not (tmp_path / "m").exists()
    cmd = torchrun_command(tmp_path / "p.yaml", "d", "m", "s", tmp_path / "c", 4)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:8] == ["-m", "fairat", "train"] and "m/model.pt" in cmd


RESUME_KNOBS = {"data.val_per_class": 5, "model.width": 8, "train.epochs": 5,
                "train.max_batches": 3, "train.batch_size": 64, "train.attack.steps": 2,
                "train.val_attack_steps": 2, "train.fairat.warmup": 0.2,
                "train.progress": False, "train.device": "cpu", "track.enabled": False}
TRAIN_POD = """
import sys

from fairat.cluster.runtime import run_train
run_train(open(sys.argv[1]).read(), *sys.argv[2:5], gpus_per_node=0, num_nodes=1,
          checkpoint_url=sys.argv[5], run_id="3f2a9c1e-run")
"""


def test_a_killed_train_pod_resumes_from_its_s3_checkpoints(tmp_path, s3_env, capsys):
    """What the pipeline's train task runs, in a process of its own (a pod): killed after its
    first epoch checkpoint reached S3 (a preempted node), run again (KFP's retry, same run id),
    it fetches the checkpoints and continues; the history holds every epoch once."""
    import csv

    from fairat.cluster.runtime import run_key, run_prepare
    from fairat.edge.storage import ensure_bucket

    ensure_bucket(s3_env)
    text = knob_lines(RESUME_KNOBS)
    (tmp_path / "params.txt").write_text(text)
    run_prepare(text, str(tmp_path / "data"))
    args = [sys.executable, "-c", TRAIN_POD, str(tmp_path / "params.txt"), str(tmp_path / "data"),
            str(tmp_path / "model"), str(tmp_path / "summary"), f"s3://{s3_env}/checkpoints"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pod = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env)
    first = []
    try:
        for line in pod.stdout:  # epoch 1's checkpoint is pushed before epoch 2 is logged
            first.append(line)
            if line.startswith("epoch 2/5"):
                pod.kill()
                break
    finally:
        pod.kill()
        pod.wait(30)
    assert any(line.startswith("epoch 2/5") for line in first), "".join(first)
    key = run_key(params_from_lines(text), "3f2a9c1e-run")
    assert f"checkpoints: s3://{s3_env}/checkpoints/{key} " in "".join(first)

    from fairat.cluster.runtime import run_train  # the retry: here, torch is imported already

    import torch

    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a busy machine
    try:
        run_train(text, *args[4:7], gpus_per_node=0, num_nodes=1, checkpoint_url=args[7],
                  run_id="3f2a9c1e-run")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert f"fetched best.pt, last.pt from s3://{s3_env}/checkpoints/{key}" in out
    resumed = re.search(r"resumed after epoch (\d+)", out)
    assert resumed and 1 <= int(resumed.group(1)) < 5, out
    assert f"epoch {int(resumed.group(1)) + 1}/5" in out and "epoch 1/5" not in out
    with open(tmp_path / "summary" / "train.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, 6))
    assert (tmp_path / "model" / "model.pt").is_file()


def test_train_refuses_a_bad_checkpoint_url_before_any_work(tmp_path):
    from fairat.cluster.runtime import run_train
    from fairat.edge.storage import StorageError

    for url in ("/mnt/checkpoints", "s3://", "s3://AKIAEXAMPLE:hunter2@bucket/ckpt"):
        with pytest.raises(StorageError, match="expected s3://bucket/prefix") as err:
            run_train("train.epochs=1", str(tmp_path / "none"), str(tmp_path / "m"),
                      str(tmp_path / "s"), 0, 1, checkpoint_url=url)
        assert "hunter2" not in str(err.value)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- multi-node: the TrainJob launcher
# No cluster here: the launcher is run with the pipeline's own compile-time JSON, the TrainJob it
# would create is rendered by the Kubeflow SDK offline (fairat.cluster.trainjob.trainjob_manifest), and
# for the copy-back test `submit_trainjob` -- the one call that talks to the API server -- is
# replaced by a stand-in that writes what rank 0 would write on the shared volume.

def _prepared(tmp_path):
    data = tmp_path / "artifacts" / "data"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text('{"dataset": "digits"}')
    return data


def _trainjob_json(mount, **kw):
    from pipelines.cli import cluster_settings
    from pipelines.fairat_pipeline import trainjob_settings

    values = {"image": "registry.example.com/fairat:0.3.1", "shared_volume_claim": "fairat-work",
              "shared_mount_path": str(mount), **kw}
    return trainjob_settings(cluster_settings(values))


def test_multi_node_stages_data_and_builds_the_trainjob(tmp_path):
    from fairat.cluster.runtime import stage_trainjob
    from fairat.cluster.trainjob import trainjob_manifest

    mount = tmp_path / "shared"
    text = knob_lines({"train.epochs": 7, "train.method": "fairat"})
    spec, namespace = stage_trainjob(text, str(_prepared(tmp_path)), 8, 2,
                                     _trainjob_json(mount, mlflow_secret="ml-uri"))
    assert namespace is None  # the SDK then reads the pod's service-account namespace
    (run_dir,) = mount.iterdir()
    assert (run_dir / "data" / "manifest.json").read_text() == '{"dataset": "digits"}'
    staged = load_params(run_dir / "params.yaml")
    # GPUs requested: the nodes train on CUDA or refuse, never a quiet CPU run
    assert staged.train.epochs == 7 and staged.train.device == "cuda"
    assert staged == with_overrides(params_from_lines(text), {"train.device": "cuda"})

    m = trainjob_manifest(spec, namespace="ml")
    assert m["kind"] == "TrainJob"
    assert m["spec"]["runtimeRef"] == {"kind": "ClusterTrainingRuntime",
                                       "name": "torch-distributed"}
    trainer = m["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["image"] == "registry.example.com/fairat:0.3.1"
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8"}
    cmd = trainer["command"]
    assert cmd[:4] == ["torchrun", "-m", "fairat", "train"] and "--resume" in cmd
    assert cmd[cmd.index("--params") + 1] == str(run_dir / "params.yaml")
    assert cmd[cmd.index("--data") + 1] == str(run_dir / "data")
    assert cmd[cmd.index("--model") + 1] == str(run_dir / "run" / "model.pt")
    assert "-S" not in cmd  # the knobs travel in the staged params file
    (patch,) = m["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["volumes"] == [{"name": "fairat-work",
                               "persistentVolumeClaim": {"claimName": "fairat-work"}},
                              {"name": "dshm",
                               "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    assert container["volumeMounts"] == [{"name": "fairat-work", "mountPath": str(mount)},
                                         {"name": "dshm", "mountPath": "/dev/shm"}]
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert all("value" not in e for e in container["env"])  # references only, never values
    # the same objects and optionality as the pipeline's tasks
    assert env["MLFLOW_TRACKING_URI"] == {"secretKeyRef": {"name": "ml-uri",
                                                           "key": "MLFLOW_TRACKING_URI"}}
    assert env["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": {
        "name": "fairat-mlflow", "key": "MLFLOW_TRACKING_PASSWORD", "optional": True}}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {
        "name": "fairat-s3", "key": "AWS_SECRET_ACCESS_KEY", "optional": True}
    assert env["AWS_ENDPOINT_URL"] == {"configMapKeyRef": {
        "name": "fairat-endpoints", "key": "AWS_ENDPOINT_URL", "optional": True}}


def test_the_trainjob_nodes_get_the_gpu_pod_settings_of_the_pipeline(tmp_path):
    """Tolerations, node selector, requests, /dev/shm and the pull secret reach the TrainJob's
    node pods as they reach the pipeline's own train pods (compile-time JSON -> TrainJob)."""
    from fairat.cluster.runtime import stage_trainjob
    from fairat.cluster.trainjob import trainjob_manifest

    mount = tmp_path / "shared"
    settings = _trainjob_json(mount, gpu_tolerations=("nvidia.com/gpu:NoSchedule",),
                              gpu_node_selector=("nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",),
                              train_cpu_request="8", train_memory_request="64Gi",
                              shm_size="16Gi", image_pull_secrets=("regcred",))
    spec, _ = stage_trainjob(knob_lines({"train.epochs": 7}), str(_prepared(tmp_path)), 4, 2,
                             settings)
    m = trainjob_manifest(spec, namespace="ml")
    assert m["spec"]["trainer"]["resourcesPerNode"]["limits"] == {
        "nvidia.com/gpu": "4", "cpu": "8", "memory": "64Gi"}
    (patch,) = m["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    assert shm in pod["volumes"]
    (container,) = pod["containers"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # the pipeline's defaults: /dev/shm only
    spec, _ = stage_trainjob(knob_lines({"train.epochs": 7}), str(_prepared(tmp_path / "b")), 4,
                             2, _trainjob_json(tmp_path / "shared-b"))
    pod = trainjob_manifest(spec, namespace="ml")["spec"]["runtimePatches"][0][
        "trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert {**shm, "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]


def _rank0_writes_outputs(body):
    """What the TrainJob's rank 0 leaves on the shared volume when it completes."""
    cmd = body["spec"]["trainer"]["command"]
    work = Path(cmd[cmd.index("--model") + 1]).parent
    work.mkdir(parents=True)
    (work / "model.pt").write_bytes(b"weights")
    (work / "train.json").write_text(json.dumps({"best": {"val_robust": 0.5}, "epochs": 3}))
    (work / "train.csv").write_text("epoch,loss\n1,2.0\n")


def test_multi_node_runs_the_trainjob_and_copies_its_outputs(tmp_path, kube_api):
    """Against a stand-in Kubernetes API (tests/servers.py): the SDK's real HTTP calls."""
    from fairat.cluster.runtime import run_train, run_key

    kube_api.fate = "complete"
    kube_api.on_create = _rank0_writes_outputs
    mount = tmp_path / "shared"
    numbers = run_train("train.epochs=3", str(_prepared(tmp_path)), str(tmp_path / "model"),
                        str(tmp_path / "summary"), 4, 3,
                        _trainjob_json(mount, trainer_namespace="team-a"), "amd.com/gpu",
                        run_id="run-7")
    (job,) = kube_api.jobs.values()
    name = run_key(params_from_lines("train.epochs=3"), "run-7")
    assert job["metadata"]["name"] == name and job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["fairat/kfp-run-id"] == "run-7"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["resourcesPerNode"]["limits"] == {
        "amd.com/gpu": "4"}
    assert (tmp_path / "model" / "model.pt").read_bytes() == b"weights"
    assert (tmp_path / "summary" / "train.csv").exists()
    assert numbers == {"best.val_robust": 0.5, "epochs": 3.0}
    assert list(mount.iterdir()) == []  # the staged folder is gone once the outputs are copied


def test_a_retried_launcher_collects_the_outputs_of_the_trainjob_it_started(tmp_path, kube_api,
                                                                           capsys):
    """The first launcher died after its TrainJob completed: the retry (same run id, same knobs,
    hence the same folder and TrainJob name) creates nothing and copies the outputs."""
    from fairat.cluster.runtime import run_key, run_train

    mount = tmp_path / "shared"
    name = run_key(params_from_lines("train.epochs=3"), "run-7")
    assert name != run_key(params_from_lines("train.epochs=4"), "run-7")  # other knobs
    assert name != run_key(params_from_lines("train.epochs=3"), "run-8")  # another run
    kube_api.add_job(name)
    kube_api.fate = "complete"
    staged = mount / name / "run"
    _rank0_writes_outputs({"spec": {"trainer": {"command": ["--model",
                                                            str(staged / "model.pt")]}}})
    run_train("train.epochs=3", str(_prepared(tmp_path)), str(tmp_path / "model"),
              str(tmp_path / "summary"), 1, 2, _trainjob_json(mount, trainer_namespace="ml"),
              run_id="run-7")
    assert [m for m, _ in kube_api.calls if m in ("POST", "DELETE")] == []
    assert ("GET", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/{name}") in \
        kube_api.calls
    assert (tmp_path / "model" / "model.pt").read_bytes() == b"weights"
    assert "adopted from an earlier attempt" in capsys.readouterr().out


def test_multi_node_without_a_shared_volume_says_what_to_configure(tmp_path):
    from fairat.cluster.runtime import run_train

    # what the default pipeline (compiled without a shared volume) passes: no trainjob settings
    with pytest.raises(ValueError, match="--shared-volume-claim"):
        run_train("", str(_prepared(tmp_path)), str(tmp_path / "m"), str(tmp_path / "s"), 8, 2)


def test_register_refuses_a_branch_that_disagrees_with_the_gate(tmp_path):
    from fairat.cluster.runtime import run_register

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "gate.json").write_text(json.dumps({"passed": False}))
    with pytest.raises(RuntimeError, match="candidate=True branch"):
        run_register("", True, "d", "m", "s", "r", str(tmp_path / "g"), "c", str(tmp_path / "o"))
