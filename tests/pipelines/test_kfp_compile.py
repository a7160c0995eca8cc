"""Kubeflow: the compiled pipeline IR (pipelines/fairat_pipeline.py), `fairat pipeline compile`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from fairat.config import Params
from fairat.cluster.params import knobs, yaml_comments
from kfp_fixtures import PARAMS, REPO, pipeline_spec, ir


def test_committed_yaml_matches_the_python_definition(ir):
    committed = (REPO / "pipelines" / "fairat_pipeline.yaml").read_text()
    assert ir == committed, ("pipelines/fairat_pipeline.yaml is stale: run "
                             "`fairat pipeline compile` and commit the result")


def test_parameter_defaults_equal_params_yaml(ir):
    inputs = pipeline_spec(ir)["root"]["inputDefinitions"]["parameters"]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for knob in knobs(PARAMS):
        default = inputs[knob.name]["defaultValue"]
        value = json.loads(default) if knob.kind == "json" else default
        if knob.nullable and default == knob.null:
            value = None
        elif knob.nullable and knob.base == "bool":
            value = {"true": True, "false": False}[default]
        expected = raw
        for part in knob.key.split("."):
            expected = expected[part]
        assert value == expected, knob.key
    assert set(inputs) == {k.name for k in knobs(PARAMS)} | {
        "accelerator_type", "gpus_per_node", "num_nodes", "checkpoint_url"}


def _hint_types():
    """params key -> the Python type of its value (the base type of an Optional)."""
    import dataclasses
    import typing

    out = {}

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{f.name}.")
                continue
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            origin = typing.get_origin(hint)
            if origin is tuple:
                out[prefix + f.name] = list
            elif origin is typing.Literal:
                out[prefix + f.name] = str
            elif args and type(None) in typing.get_args(hint):
                out[prefix + f.name] = args[0]
            else:
                out[prefix + f.name] = hint
    walk(Params, "")
    return out


def test_run_form_is_typed_with_defaults_and_descriptions_from_params_yaml(ir):
    """Every parameter: its type, its default as params.yaml has it (sentinel for null), and a
    description from the params.yaml comment (or naming the key)."""
    inputs = pipeline_spec(ir)["root"]["inputDefinitions"]["parameters"]
    text = (REPO / "params.yaml").read_text()
    raw, comments, hints = yaml.safe_load(text), yaml_comments(text), _hint_types()
    ir_type = {int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN", str: "STRING"}
    sentinel = {int: -1, float: -1.0, str: "", bool: ""}
    for knob in knobs(PARAMS, comments):
        spec, hint = inputs[knob.name], hints[knob.key]
        expected = raw
        for part in knob.key.split("."):
            expected = expected[part]
        default = spec["defaultValue"]
        if hint is list:
            assert spec["parameterType"] == "STRING" and json.loads(default) == expected
            assert "JSON list" in spec["description"], knob.key
        elif hint is bool and knob.nullable:  # track.register: "", true or false
            assert spec["parameterType"] == "STRING", knob.key
            assert default == ("" if expected is None else str(expected).lower())
        else:
            assert spec["parameterType"] == ir_type[hint], knob.key
            assert type(default) is hint, (knob.key, default)  # 30, never 30.0
            assert default == (sentinel[hint] if expected is None else expected), knob.key
        if knob.nullable:
            assert f"{json.dumps(sentinel[hint])} = null" in spec["description"], knob.key
        assert spec["description"] == knob.description, knob.key
        if knob.key in comments:
            assert spec["description"].startswith(comments[knob.key]), knob.key
        else:
            assert knob.key in spec["description"], knob.key
    # the three sizing parameters are typed and described as well
    # the GPU count is text: the KFP driver reads the limit bound to it as a string
    assert inputs["gpus_per_node"]["defaultValue"] == "1" and "torchrun" in \
        inputs["gpus_per_node"]["description"]
    assert inputs["gpus_per_node"]["parameterType"] == "STRING"
    assert all(0 < len(spec.get("description", "")) <= 1024 for spec in inputs.values())  # proto limit
    assert "#    train__epochs: int [Default: 30]\n" in ir  # kfp's header comment too
    assert "defaultValue: 30.0" not in ir


def test_every_task_runs_the_project_image_without_installing_packages(ir):
    from components import IMAGE

    executors = pipeline_spec(ir)["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-prepare", "exec-train", "exec-evaluate", "exec-gate",
                              "exec-register", "exec-register-2",  # the gate's two branches
                              "exec-train-2", "exec-evaluate-2", "exec-compare"}  # the baseline
    for name, ex in executors.items():
        assert ex["container"]["image"] == IMAGE, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name
        assert "from fairat.cluster.runtime import" in ex["container"]["command"][-1], name


def test_train_requests_gpus_and_retries(ir):
    spec = pipeline_spec(ir)
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("train", "train-2"):  # the model and the baseline beside it
        resources = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]["resources"]
        assert "pipelinechannel--accelerator_type" in resources["accelerator"]["resourceType"]
        assert "pipelinechannel--gpus_per_node" in resources["accelerator"]["resourceCount"]
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
        assert "trainjob" not in tasks[name]["inputs"]["parameters"]  # trains in its own pod
    caching = {name: t.get("cachingOptions", {}).get("enableCache", False)
               for name, t in tasks.items() if name != "condition-branches-1"}
    assert caching == {"prepare": True, "train": False, "evaluate": True, "gate": True,
                       "train-2": False, "evaluate-2": True, "compare": True}


def _params_text(task: dict) -> str:
    return task["inputs"]["parameters"]["params"]["runtimeValue"]["constant"]


def test_the_baseline_trains_pgd_at_on_every_other_knob_of_the_run(ir):
    """Comparable by construction: the baseline's train task reads the same run parameters as
    the model's, except the method, fixed to PGD-AT; register receives both reports."""
    tasks = pipeline_spec(ir)["root"]["dag"]["tasks"]
    assert tasks["train-2"]["taskInfo"]["name"] == "baseline-train"
    mine = _params_text(tasks["train"]).splitlines()
    base = _params_text(tasks["train-2"]).splitlines()
    assert "train.method={{$.inputs.parameters['pipelinechannel--train__method']}}" in mine
    assert "train.method=pgd_at" in base
    assert [line for line in mine if not line.startswith("train.method=")] == \
        [line for line in base if not line.startswith("train.method=")]
    artifacts = tasks["compare"]["inputs"]["artifacts"]
    assert {k: v["taskOutputArtifact"]["producerTask"] for k, v in artifacts.items()} == {
        "report": "evaluate", "summary": "train", "baseline_report": "evaluate-2",
        "baseline_summary": "train-2"}
    for branch in ("comp-condition-2", "comp-condition-3"):
        register = pipeline_spec(ir)["components"][branch]["dag"]["tasks"]
        (task,) = register.values()
        assert task["inputs"]["artifacts"]["baseline_report"] == {
            "componentInputArtifact": "pipelinechannel--evaluate-2-report"}


def test_no_baseline_compiles_the_five_steps_alone(tmp_path):
    from pipelines.cli import cluster_settings, compile_to

    text = compile_to(tmp_path / "p.yaml", REPO / "params.yaml",
                      cluster_settings({"baseline": False})).read_text()
    pipeline = next(yaml.safe_load_all(text))
    assert set(pipeline["root"]["dag"]["tasks"]) == {"prepare", "train", "evaluate", "gate",
                                                     "condition-branches-1"}
    assert "baseline_report" not in json.dumps(pipeline["root"])


def test_with_a_shared_volume_train_launches_a_trainjob_without_gpus(ir, tmp_path):
    from pipelines.cli import cluster_settings, compile_to

    platform = list(yaml.safe_load_all(ir))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    assert not any("pvcMount" in ex for ex in platform["executors"].values())
    settings = cluster_settings({"shared_volume_claim": "fairat-work",
                                 "shared_mount_path": "/shared"})
    text = compile_to(tmp_path / "p.yaml", REPO / "params.yaml", settings).read_text()
    pipeline, platform = yaml.safe_load_all(text)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["pvcMount"] == [{
        "constant": "fairat-work", "mountPath": "/shared",
        "pvcNameParameter": {"runtimeValue": {"constant": "fairat-work"}}}]
    assert executors["exec-train-2"]["pvcMount"] == executors["exec-train"]["pvcMount"]
    assert [name for name, ex in executors.items() if "pvcMount" in ex] == ["exec-train",
                                                                           "exec-train-2"]
    # a launcher: the TrainJob's nodes hold the GPUs; a retried launcher adopts its TrainJob
    assert "resources" not in pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
    task = pipeline["root"]["dag"]["tasks"]["train"]
    assert task["retryPolicy"]["maxRetryCount"] == 2
    inputs = task["inputs"]["parameters"]
    assert inputs["accelerator_type"] == {"componentInputParameter": "accelerator_type"}
    assert inputs["num_nodes"] == {"componentInputParameter": "num_nodes"}
    sent = json.loads(inputs["trainjob"]["runtimeValue"]["constant"])
    assert sent == {"image": settings.image, "volume_claim": "fairat-work", "mount_path": "/shared",
                    "namespace": None, "s3_secret": "fairat-s3", "mlflow_secret": "fairat-mlflow",
                    "mlflow_auth_secret": "fairat-mlflow",
                    "endpoints_config_map": "fairat-endpoints",
                    "keep_failed_trainjob": False,  # names only, never values
                    # the GPU pod settings the TrainJob's nodes get (test_kfp_runtime)
                    "tolerations": [], "node_selector": [], "cpu_request": None,
                    "memory_request": None, "shm_size": "8Gi", "image_pull_secrets": []}
    # the launcher holds no GPU: none of the GPU pod settings on its own pod
    assert "emptyDirMounts" not in executors["exec-train"]


def test_registration_as_candidate_only_inside_the_gate_condition(ir):
    components = pipeline_spec(ir)["components"]
    branches = components["comp-condition-branches-1"]["dag"]["tasks"]
    passed = branches["condition-2"]["triggerPolicy"]["condition"]
    blocked = branches["condition-3"]["triggerPolicy"]["condition"]
    assert passed == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    assert blocked == f"!({passed})"
    candidate = components["comp-condition-2"]["dag"]["tasks"]["register"]
    assert candidate["inputs"]["parameters"]["candidate"]["runtimeValue"]["constant"] is True
    assert candidate["taskInfo"]["name"] == "register-candidate"
    other = components["comp-condition-3"]["dag"]["tasks"]["register-2"]
    assert other["inputs"]["parameters"]["candidate"]["runtimeValue"]["constant"] is False
    assert not candidate.get("cachingOptions", {}).get("enableCache", False)


def test_gate_and_evaluation_numbers_are_metrics_artifacts(ir):
    components = pipeline_spec(ir)["components"]
    for comp in ("comp-gate", "comp-evaluate", "comp-train"):
        outputs = components[comp]["outputDefinitions"]["artifacts"]
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics", comp
    evaluate_out = components["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert evaluate_out["report_md"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert evaluate_out["chart"]["artifactType"]["schemaTitle"] == "system.HTML"
    gate_out = components["comp-gate"]["outputDefinitions"]["parameters"]
    assert gate_out["Output"]["parameterType"] == "BOOLEAN"


def test_credentials_come_from_secrets_never_from_parameters(ir):
    spec = yaml.safe_load_all(ir)
    pipeline, platform = list(spec)
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(w in p.lower() for w in
                                         ("secret", "password", "token", "access_key", "mlflow"))]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    envs = {name: {m["envVar"] for s in ex.get("secretAsEnv", []) for m in s["keyToEnv"]}
            for name, ex in executors.items()}
    creds = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"}
    for name in ("exec-train", "exec-register", "exec-register-2"):
        assert creds <= envs[name], name
    required = [s["secretName"] for ex in executors.values() for s in ex["secretAsEnv"]
                if not s["optional"]]
    assert set(required) == {"fairat-mlflow"}
    # the only credential-looking strings in the whole file are env/key *names*
    for line in ir.splitlines():
        if "AWS_SECRET_ACCESS_KEY" in line or "MLFLOW_TRACKING_PASSWORD" in line:
            assert line.split(":", 1)[-1].strip() in ("AWS_SECRET_ACCESS_KEY",
                                                       "MLFLOW_TRACKING_PASSWORD"), line


def test_pipeline_and_components_import_without_torch():
    code = ("import sys, pipelines.fairat_pipeline, components, pipelines.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cluster_settings_retarget_image_and_secrets(tmp_path):
    from pipelines.cli import cluster_settings, compile_to

    settings = cluster_settings({"image": "registry.example/fairat:abc", "mlflow_secret": "ml",
                                 "s3_secret": None})
    text = compile_to(tmp_path / "p.yaml", REPO / "params.yaml", settings).read_text()
    assert "registry.example/fairat:abc" in text and "ghcr.io/fairat" not in text
    assert "secretName: ml\n" in text and "secretName: fairat-s3" in text


def test_train_gets_the_run_id_and_the_checkpoint_url(ir):
    task = pipeline_spec(ir)["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert task["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    assert task["checkpoint_url"] == {"componentInputParameter": "checkpoint_url"}
    default = pipeline_spec(ir)["root"]["inputDefinitions"]["parameters"]["checkpoint_url"]
    assert default["defaultValue"] == "" and "s3://" in default["description"]


def test_compile_command_writes_the_yaml(tmp_path):
    from fairat.fronts.cli import main

    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--params",
                 str(REPO / "params.yaml")]) == 0
    assert out.read_text() == (REPO / "pipelines" / "fairat_pipeline.yaml").read_text()


def test_help_loads_neither_kfp_nor_torch():
    code = ("import sys; from fairat.fronts.cli import build_parser; build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'kfp')]; "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)


GPU_POD_FLAGS = ["--gpu-toleration", "nvidia.com/gpu:NoSchedule", "--gpu-toleration",
                 "dedicated=ml", "--gpu-node-selector",
                 "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3", "--train-cpu-request", "8",
                 "--train-memory-request", "32Gi", "--shm-size", "16Gi", "--train-retries", "4",
                 "--image-pull-secret", "regcred"]


def _kubernetes_executors(text):
    return list(yaml.safe_load_all(text))[1]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"]


def test_gpu_pod_settings_reach_the_train_tasks_only(tmp_path):
    """Tolerations, node selector, requests, /dev/shm and retries on train and baseline-train;
    the pull secret on every task; the other tasks stay off the GPU nodes' settings."""
    from fairat.fronts.cli import main

    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--params",
                 str(REPO / "params.yaml"), *GPU_POD_FLAGS]) == 0
    text = out.read_text()
    spec, platform = pipeline_spec(text), _kubernetes_executors(text)
    for name in ("train", "train-2"):
        resources = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]["resources"]
        assert resources["resourceCpuRequest"] == "8"
        assert resources["resourceMemoryRequest"] == "32Gi"
        assert spec["root"]["dag"]["tasks"][name]["retryPolicy"]["maxRetryCount"] == 4
        pod = platform[f"exec-{name}"]
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "dedicated", "operator": "Equal", "value": "ml"}]
        assert pod["nodeSelector"] == {"labels": {
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
        assert pod["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm",
                                          "medium": "Memory", "sizeLimit": "16Gi"}]
    for name, pod in platform.items():
        assert [s["secretName"] for s in pod["imagePullSecret"]] == ["regcred"], name
        if name not in ("exec-train", "exec-train-2"):
            assert not {"tolerations", "nodeSelector", "emptyDirMounts"} & set(pod), name
            resources = spec["deploymentSpec"]["executors"][name]["container"].get("resources")
            assert not resources, name


def test_the_default_train_pods_get_a_memory_backed_dev_shm(ir):
    platform = _kubernetes_executors(ir)
    for name in ("exec-train", "exec-train-2"):
        assert platform[name]["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm",
                                                     "medium": "Memory", "sizeLimit": "8Gi"}]
        assert "tolerations" not in platform[name] and "imagePullSecret" not in platform[name]


@pytest.mark.parametrize("flags,message", [
    (["--gpu-toleration", "nvidia.com/gpu:NoSchedul"], "expected KEY[=VALUE][:EFFECT]"),
    (["--gpu-node-selector", "gpu"], "expected KEY=VALUE"),
    (["--train-memory-request", "32GB"], "train_memory_request: '32GB' is not a Kubernetes"),
    (["--train-cpu-request", "eight"], "train_cpu_request: 'eight'"),
    (["--image-pull-secret", "Reg_Cred"], "not a Kubernetes Secret name"),
    (["--train-retries", "-1"], "train_retries: -1 must be >= 0")])
def test_malformed_gpu_pod_settings_fail_naming_the_setting(flags, message, tmp_path, capsys):
    from fairat.fronts.cli import main

    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_shm_size_zero_leaves_kubernetes_default(tmp_path):
    from fairat.fronts.cli import main

    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--shm-size", "0"]) == 0
    assert "emptyDirMounts" not in out.read_text()


def test_an_image_tag_from_the_commit_and_refused_on_uncommitted_code(tmp_path):
    from pipelines.cli import resolve_image
    from pipelines.connection import KubeflowError

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                               *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    with pytest.raises(KubeflowError, match="is not a git checkout"):
        resolve_image("r.example/fairat:{commit}", tmp_path)
    (tmp_path / "fairat").mkdir()
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "fairat" / "code.py").write_text("x = 1\n")
    (tmp_path / "pipelines" / "fairat_pipeline.yaml").write_text("a: 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "c")
    commit = git("rev-parse", "HEAD")[:12]
    assert resolve_image("r.example/fairat:{commit}", tmp_path) == f"r.example/fairat:{commit}"
    assert resolve_image("r.example/fairat:1.2", tmp_path) == "r.example/fairat:1.2"
    (tmp_path / "pipelines" / "fairat_pipeline.yaml").write_text("a: 2\n")  # compiled output
    (tmp_path / "notes.txt").write_text("not in the image\n")
    assert resolve_image("r.example/fairat:{commit}", tmp_path).endswith(commit)
    (tmp_path / "fairat" / "code.py").write_text("x = 2\n")
    with pytest.raises(KubeflowError, match=f"fairat/code.py changed since commit {commit}"):
        resolve_image("r.example/fairat:{commit}", tmp_path)
