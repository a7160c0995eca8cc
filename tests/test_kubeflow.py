"""Kubeflow: knob mapping, the compiled IR, a local run through kfp.local, and a real SDK round trip.

The submit tests talk to a stand-in KFP API server on 127.0.0.1 that answers the v2beta1 REST calls
the kfp client makes (healthz, experiment lookup and creation, run creation) and records them with
their headers, so the whole client stack (kfp.Client -> kfp_server_api -> urllib3 -> HTTP) really
runs, credentials included; on demand it refuses a route with 401, 403 or a login redirect.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from fairat.config import ConfigError, Params, load_params, to_dict, with_overrides
from fairat.cluster.params import (NULL, NULL_MEANS, knob_lines, knobs, key_of, params_from_lines,
                                   pipeline_arguments, yaml_comments)
from servers import JsonHandler

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


# ---------------------------------------------------------------- knobs <-> pipeline parameters

def _as_backend_text(knob, value):
    """What a KFP backend substitutes into a string: numbers as doubles, bools lower-case."""
    if knob.kind == "bool":
        return "true" if value else "false"
    if knob.kind in ("int", "float"):
        return repr(float(value))
    return value


def test_every_knob_round_trips_through_pipeline_text():
    table = knobs(PARAMS)
    assert {k.key for k in table} >= {"train.attack.eps", "train.fairat.augment", "gate.max_gap"}
    assert all(key_of(k.name) == k.key and "." not in k.name for k in table)
    text = knob_lines({k.key: _as_backend_text(k, k.default) for k in table})
    assert params_from_lines(text) == PARAMS


def test_knobs_are_typed_with_a_sentinel_for_null_and_lists_as_json_text():
    kinds = {k.key: (k.kind, k.default) for k in knobs(PARAMS)}
    assert kinds["train.milestones"] == ("json", "[0.5, 0.75]")
    assert kinds["data.train_per_class"] == ("int", -1)
    assert kinds["model.width"] == ("int", 16)
    assert kinds["gate.min_average"] == ("float", -1.0)
    assert kinds["track.register"] == ("str", "")  # a nullable boolean: "", true or false
    assert kinds["train.epochs"] == ("int", 30) and kinds["train.flip"] == ("bool", False)
    assert kinds["train.method"] == ("str", "fairat")
    assert {k for k, (kind, _) in kinds.items() if kind == "json"} == {
        "train.milestones", "train.fairat.augment", "evaluate.autoattack_attacks"}


def test_null_sentinels_decode_to_none_and_are_never_valid_values():
    nullable = [k for k in knobs(PARAMS) if k.nullable]
    assert {k.key for k in nullable} == set(NULL_MEANS)  # each says what null means
    for knob in nullable:
        sentinel = NULL[knob.base]
        assert knob.null == sentinel
        # the sentinel as a backend substitutes it ("-1.0" for an int too) decodes to None ...
        decoded = to_dict(params_from_lines(f"{knob.key}={_as_backend_text(knob, sentinel)}"))
        node = decoded
        for part in knob.key.split("."):
            node = node[part]
        assert node is None, knob.key
        # ... and is no value the CLI accepts, so no valid value is lost to it
        with pytest.raises(ConfigError, match=knob.key.rsplit(".", 1)[-1]):
            with_overrides(Params(), {knob.key: sentinel})
    cfg = params_from_lines("data.train_per_class=20.0\ngate.max_gap=0.25\ntrack.register=true")
    assert (cfg.data.train_per_class, cfg.gate.max_gap, cfg.track.register) == (20, 0.25, True)
    assert params_from_lines("track.register=false").track.register is False


@pytest.mark.parametrize("key,text,value", [
    ("data.train_per_class", "-2", -2), ("model.width", "0", 0), ("gate.min_average", "1.5", 1.5),
    ("gate.max_gap", "-0.5", -0.5), ("track.register", "yes", "yes"), ("train.epochs", "0", 0),
    ("train.attack.eps", "2.0", 2.0), ("train.method", "sgd", "sgd")])
def test_pipeline_values_fail_validation_with_the_cli_message(key, text, value):
    with pytest.raises(ConfigError) as cli:
        with_overrides(PARAMS, {key: value})
    with pytest.raises(ConfigError) as pipeline:
        params_from_lines(f"{key}={text}")
    assert str(pipeline.value) == str(cli.value)


def test_decoded_values_are_validated_like_the_cli():
    with pytest.raises(ConfigError, match="train.attack.eps"):
        params_from_lines("train.attack.eps=-0.5")
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        params_from_lines("train.epochs=2.5")
    with pytest.raises(ConfigError, match="known key"):
        params_from_lines("train.epochz=3")
    assert params_from_lines("train.fairat.augment=[cutout]").train.fairat.augment == ("cutout",)


# ---------------------------------------------------------------- the compiled IR

@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    from pipelines.cli import compile_to

    out = compile_to(tmp_path_factory.mktemp("ir") / "fairat_pipeline.yaml", REPO / "params.yaml")
    return out.read_text()


def test_committed_yaml_matches_the_python_definition(ir):
    committed = (REPO / "pipelines" / "fairat_pipeline.yaml").read_text()
    assert ir == committed, ("pipelines/fairat_pipeline.yaml is stale: run "
                             "`fairat pipeline compile` and commit the result")


def _spec(ir):
    """The pipeline document (the second YAML document is the Kubernetes platform spec)."""
    return next(yaml.safe_load_all(ir))


def test_parameter_defaults_equal_params_yaml(ir):
    inputs = _spec(ir)["root"]["inputDefinitions"]["parameters"]
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
    inputs = _spec(ir)["root"]["inputDefinitions"]["parameters"]
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
    assert inputs["gpus_per_node"]["defaultValue"] == 1 and "torchrun" in \
        inputs["gpus_per_node"]["description"]
    assert all(0 < len(spec.get("description", "")) <= 1024 for spec in inputs.values())  # proto limit
    assert "#    train__epochs: int [Default: 30]\n" in ir  # kfp's header comment too
    assert "defaultValue: 30.0" not in ir


def test_knob_descriptions_come_from_the_params_yaml_comments():
    text = ("data:\n  root: \"a # b\"   # the folder\n  seed: 0\n"
            "train:   # section\n  attack:\n    eps: 0.1  # radius: L-inf\n")
    assert yaml_comments(text) == {"data.root": "the folder", "train": "section",
                                   "train.attack.eps": "radius: L-inf"}
    described = {k.key: k.description for k in knobs(PARAMS, yaml_comments(text))}
    assert described["train.attack.eps"] == "radius: L-inf"
    assert described["data.seed"] == "params.yaml key data.seed"
    assert described["train.attack.loss"] == "params.yaml key train.attack.loss. One of: ce | cw"
    assert described["gate.max_gap"] == "params.yaml key gate.max_gap. -1.0 = null (no threshold)"


def test_every_task_runs_the_project_image_without_installing_packages(ir):
    from components import IMAGE

    executors = _spec(ir)["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-prepare", "exec-train", "exec-evaluate", "exec-gate",
                              "exec-register", "exec-register-2",  # the gate's two branches
                              "exec-train-2", "exec-evaluate-2", "exec-compare"}  # the baseline
    for name, ex in executors.items():
        assert ex["container"]["image"] == IMAGE, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name
        assert "from fairat.cluster.runtime import" in ex["container"]["command"][-1], name


def test_train_requests_gpus_and_retries(ir):
    spec = _spec(ir)
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
    tasks = _spec(ir)["root"]["dag"]["tasks"]
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
        register = _spec(ir)["components"][branch]["dag"]["tasks"]
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
                    "keep_failed_trainjob": False}  # names only, never values


def test_registration_as_candidate_only_inside_the_gate_condition(ir):
    components = _spec(ir)["components"]
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
    components = _spec(ir)["components"]
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


# ---------------------------------------------------------------- component runtime guards

def test_train_launches_torchrun_per_gpu_on_one_node_and_checks_sizes(tmp_path):
    from fairat.cluster.runtime import run_train, torchrun_command

    with pytest.raises(ValueError, match="num_nodes=0"):
        run_train("", str(tmp_path), str(tmp_path / "m"), str(tmp_path / "s"), 1, 0)
    cmd = torchrun_command(tmp_path / "p.yaml", "d", "m", "s", tmp_path / "c", 4)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:8] == ["-m", "fairat", "train"] and "m/model.pt" in cmd


RESUME_KNOBS = {"data.val_per_class": 5, "model.width": 8, "train.epochs": 5,
                "train.max_batches": 3, "train.batch_size": 64, "train.attack.steps": 2,
                "train.val_attack_steps": 2, "train.fairat.warmup_epochs": 1,
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


def test_submit_refuses_a_bad_checkpoint_url_before_contacting_the_host(capsys):
    from fairat.fronts.cli import main

    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--params",
                 str(REPO / "params.yaml"), "--checkpoint-url", "minio/bucket"]) == 2
    assert "--checkpoint-url: not an S3 prefix URL" in capsys.readouterr().err


def test_train_gets_the_run_id_and_the_checkpoint_url(ir):
    task = _spec(ir)["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert task["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    assert task["checkpoint_url"] == {"componentInputParameter": "checkpoint_url"}
    default = _spec(ir)["root"]["inputDefinitions"]["parameters"]["checkpoint_url"]
    assert default["defaultValue"] == "" and "s3://" in default["description"]


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
    assert staged.train.epochs == 7 and staged == params_from_lines(text)

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
                               "persistentVolumeClaim": {"claimName": "fairat-work"}}]
    assert container["volumeMounts"] == [{"name": "fairat-work", "mountPath": str(mount)}]
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


# ---------------------------------------------------------------- local run through kfp.local

TINY = {"data.val_per_class": 5, "model.width": 8, "train.epochs": 2, "train.max_batches": 4,
        "train.batch_size": 64, "train.attack.steps": 2, "train.val_attack_steps": 2,
        "train.fairat.warmup_epochs": 1, "train.progress": False, "train.device": "cpu",
        "evaluate.examples_per_class": 5, "evaluate.pgd_steps": 3, "evaluate.autoattack": "none",
        "evaluate.device": "cpu", "gate.min_worst_class": 0.0, "track.model_name": "fairat-kfp",
        # a tiny model: judged on clean accuracy, with one threshold (all-zero gates are refused)
        "gate.attack": "clean", "gate.min_average": 0.01, "gate.min_clean_class": 0.0}


@pytest.mark.slow
def test_pipeline_runs_end_to_end_with_kfp_local(tmp_path, monkeypatch, mlflow_sqlite):
    from kfp import local

    from pipelines.fairat_pipeline import build_pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite(tmp_path / "mlflow.db"))
    monkeypatch.chdir(tmp_path)  # the components' working folder: keep strays out of the repo
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    arguments = {**pipeline_arguments(with_overrides(PARAMS, TINY)), "gpus_per_node": 0}
    task = build_pipeline(PARAMS)(**arguments)
    assert task is not None

    (run_dir,) = (tmp_path / "root").iterdir()
    registered = json.loads((run_dir / "register" / "registration" / "registered.json")
                            .read_text())
    assert registered["passed"] is True and registered["alias"] == "candidate"
    assert not (run_dir / "register-2").exists()  # the blocked branch did not run
    decision = json.loads((run_dir / "gate" / "decision" / "gate.json").read_text())
    assert decision["passed"] is True and decision["thresholds"]["min_worst_class"] == 0.0
    for path in ("prepare/data/manifest.json", "train/model/model.pt", "train/summary/train.json",
                 "evaluate/report/eval.json", "evaluate/report/eval_classwise.png",
                 "evaluate/report_md", "evaluate/chart"):
        assert (run_dir / path).exists(), path
    assert "# Class-wise robustness report" in (run_dir / "evaluate" / "report_md").read_text()
    # the PGD-AT baseline beside the model, compared and on the card
    base = json.loads((run_dir / "evaluate-2" / "report" / "eval.json").read_text())
    assert base["provenance"]["train_config"]["train"]["method"] == "pgd_at"
    comparison = json.loads((run_dir / "compare" / "comparison" / "comparison.json").read_text())
    mine = json.loads((run_dir / "evaluate" / "report" / "eval.json").read_text())
    attack = decision["attack"]
    assert comparison["worst_lift"] == pytest.approx(
        mine["attacks"][attack]["summary"]["worst"] - base["attacks"][attack]["summary"]["worst"])
    card = (run_dir / "register" / "card").read_text()
    assert "baseline was trained beside this model" in card

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")  # not the global URI
    version = client.get_model_version_by_alias("fairat-kfp", "candidate")
    assert version.version == registered["version"]


# ---------------------------------------------------------------- submission: a real SDK round trip

class _StandInKFP(JsonHandler):
    """Answers the KFP v2beta1 calls `create_run_from_pipeline_package` makes; records them.

    ``headers`` holds each request's (method, path, lower-cased headers); ``refuse`` maps a path
    to the status it answers instead (401 like an auth proxy without credentials, 403 like a
    profile the identity may not use, 302 like oauth2-proxy sending a browser to its login page).
    """

    calls: list[tuple[str, str, dict, object]] = []
    headers_seen: list[tuple[str, str, dict]] = []
    refuse: dict[str, int] = {}
    LOGIN = "https://dex.example.com/dex/auth?client_id=kubeflow-oidc-authservice&state=xyz"

    def _record(self, body: object = None) -> tuple[str, dict]:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.calls.append((self.command, url.path, query, body))
        self.headers_seen.append((self.command, url.path,
                                  {k.lower(): v for k, v in self.headers.items()}))
        return url.path, query

    def _refused(self, path: str) -> bool:
        status = self.refuse.get(path)
        if status == 302:
            self.send_response(302)
            self.send_header("Location", self.LOGIN)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif status == 401:
            self._reply({"error": "Unauthenticated: no user identity", "code": 16}, 401)
        elif status == 403:
            self._reply({"error": "user is not authorized in namespace", "code": 7}, 403)
        return status is not None

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path, _ = self._record()
        if self._refused(path):
            return
        if path == "/apis/v2beta1/healthz":
            self._reply({"multi_user": False, "commit_sha": "stand-in"})
        elif path == "/apis/v2beta1/experiments":
            self._reply({"experiments": [], "total_size": 0})  # none yet: the client creates it
        else:
            self._reply({"error": f"unexpected GET {path}"}, 404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path, _ = self._record(body)
        if self._refused(path):
            return
        if path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-1", "experiment_id": body["experiment_id"],
                         "display_name": body["display_name"], "state": "PENDING"})
        else:
            self._reply({"error": f"unexpected POST {path}"}, 404)


@pytest.fixture
def stand_in_kfp(monkeypatch):
    for var in ("KF_PIPELINES_TOKEN", "KF_PIPELINES_COOKIE", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)  # none of the machine's credentials
    _StandInKFP.calls = []
    _StandInKFP.headers_seen = []
    _StandInKFP.refuse = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _StandInKFP.calls
    server.shutdown()
    server.server_close()


def test_submit_sends_the_pipeline_and_overridden_parameters(stand_in_kfp, tmp_path, monkeypatch,
                                                             capsys):
    from fairat.fronts.cli import main

    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp context from the machine
    code = main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml"),
                 "--experiment", "fairness", "--run-name", "nightly",
                 "-S", "train.epochs=3", "-S", "train.fairat.augment=[cutout]",
                 "--gpus-per-node", "4"])
    assert code == 0, capsys.readouterr().err
    assert "submitted run run-1" in capsys.readouterr().out

    routes = [(method, path) for method, path, _, _ in calls]
    assert ("POST", "/apis/v2beta1/experiments") in routes
    experiment = next(body for method, path, _, body in calls
                      if (method, path) == ("POST", "/apis/v2beta1/experiments"))
    assert experiment["display_name"] == "fairness"
    (run,) = [body for method, path, _, body in calls if (method, path) == ("POST",
                                                                         "/apis/v2beta1/runs")]
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "fairat"
    assert "exec-train" in spec["deploymentSpec"]["executors"]
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-register"]
    assert "fairat-mlflow" in {s["secretName"] for s in secrets["secretAsEnv"]}
    sent = run["runtime_config"]["parameters"]
    assert sent["train__epochs"] == 3 and sent["train__fairat__augment"] == '["cutout"]'
    assert sent["gpus_per_node"] == 4 and sent["train__attack__eps"] == PARAMS.train.attack.eps
    assert set(sent) == {k.name for k in knobs(PARAMS)} | {"gpus_per_node"}
    # the run's defaults are the submitted params too, so the UI shows what ran
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["train__epochs"]["defaultValue"] == 3


def test_submit_reports_an_endpoint_error_with_status_and_body(stand_in_kfp, tmp_path,
                                                               monkeypatch, capsys):
    from fairat.fronts.cli import main

    host, calls = stand_in_kfp
    _StandInKFP.refuse = {"/apis/v2beta1/runs": 403}
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["pipeline", "submit", "--host", host, "--params",
                 str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"Kubeflow Pipelines at {host} answered 403" in err and "not authorized" in err
    assert ("POST", "/apis/v2beta1/runs") in [(m, p) for m, p, _, _ in calls]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_to_an_unreachable_host_names_it_and_exits_2(capsys):
    from fairat.fronts.cli import main

    host = f"http://127.0.0.1:{_free_port()}"
    assert main(["pipeline", "submit", "--host", host, "--params",
                 str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach Kubeflow Pipelines at {host}" in err and "Traceback" not in err


def test_submit_refuses_multi_node_without_a_shared_volume_before_contacting_the_host(capsys):
    from fairat.fronts.cli import main

    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:1", "--num-nodes", "2",
                 "--params", str(REPO / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Kubeflow Trainer" in err and "--shared-volume-claim" in err


def test_submit_two_nodes_with_a_shared_volume(stand_in_kfp, tmp_path, monkeypatch, capsys):
    from fairat.fronts.cli import main

    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml"),
                 "--num-nodes", "2", "--gpus-per-node", "8",
                 "--shared-volume-claim", "fairat-work"]) == 0, capsys.readouterr().err
    (run,) = [body for method, path, _, body in calls if (method, path) == ("POST",
                                                                         "/apis/v2beta1/runs")]
    sent = run["runtime_config"]["parameters"]
    assert sent["num_nodes"] == 2 and sent["gpus_per_node"] == 8
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    assert executors["exec-train"]["pvcMount"][0]["constant"] == "fairat-work"


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


# ---------------------------------------------------------------- submission: authentication

SECRET_TOKEN = "fairat-test-token-7f3c9e1d5b"  # fake; must never leave the request headers
SECRET_COOKIE = "authservice_session=fairat-test-session-4a8b2c"


def _submit(host, *extra):
    from fairat.fronts.cli import main

    return main(["pipeline", "submit", "--host", host, "--params", str(REPO / "params.yaml"),
                 *extra])


def _assert_never_leaked(secret, capsys, caplog, tmp_path, calls=()):
    out, err = capsys.readouterr()
    assert secret not in out and secret not in err and secret not in caplog.text
    for _, _, _, body in calls:  # the pipeline package and the run arguments sent
        assert secret not in json.dumps(body)
    for path in tmp_path.rglob("*"):  # ~/.config/kfp/context.json and friends
        assert not path.is_file() or secret not in path.read_text(errors="replace"), path
    return out, err


def test_submit_sends_the_bearer_token_from_the_environment(stand_in_kfp, tmp_path, monkeypatch,
                                                            capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    caplog.set_level(logging.DEBUG)
    assert _submit(host) == 0, capsys.readouterr().err
    seen = _StandInKFP.headers_seen
    assert {path for _, path, _ in seen} >= {"/apis/v2beta1/healthz", "/apis/v2beta1/runs"}
    assert all(h.get("authorization") == f"Bearer {SECRET_TOKEN}" for _, _, h in seen), seen
    assert all("cookie" not in h for _, _, h in seen)
    out, _ = _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path, calls)
    assert "with the bearer token from $KF_PIPELINES_TOKEN" in out


def test_submit_reads_the_token_from_another_variable_and_refuses_an_unset_one(
        stand_in_kfp, tmp_path, monkeypatch, capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TEAM_KFP_TOKEN", SECRET_TOKEN)
    assert _submit(host, "--token-env", "TEAM_KFP_TOKEN") == 0, capsys.readouterr().err
    assert all(h.get("authorization") == f"Bearer {SECRET_TOKEN}"
               for _, _, h in _StandInKFP.headers_seen)
    _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path, calls)
    assert _submit(host, "--token-env", "NO_SUCH_KFP_TOKEN") == 2
    assert "NO_SUCH_KFP_TOKEN is not set" in capsys.readouterr().err


def test_a_token_on_the_command_line_is_refused_without_echoing_it(stand_in_kfp, capsys):
    host, calls = stand_in_kfp
    assert _submit(host, "--token-env", "eyJhbGciOi.JSUzI1NiJ9-" + SECRET_TOKEN) == 2
    err = capsys.readouterr().err
    assert "NAME of an environment variable" in err and SECRET_TOKEN not in err
    assert _submit(host, "--token-env", "abc123secret") == 2  # could be a name: still not shown
    err = capsys.readouterr().err
    assert "not set" in err and "abc123secret" not in err
    assert calls == []  # nothing was sent


def test_submit_with_the_in_cluster_service_account_token(stand_in_kfp, tmp_path, monkeypatch,
                                                          capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "not-this-one")  # the in-cluster token replaces it
    token_file = tmp_path / "sa" / "token"
    token_file.parent.mkdir()
    token_file.write_text(SECRET_TOKEN + "\n")
    assert _submit(host, "--in-cluster-token", "--token-path", str(token_file)) == 0, \
        capsys.readouterr().err
    assert all(h.get("authorization") == f"Bearer {SECRET_TOKEN}"
               for _, _, h in _StandInKFP.headers_seen)
    out, _ = _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path / "home-less", calls)
    assert f"the ServiceAccount token at {token_file}" in out
    assert _submit(host, "--in-cluster-token", "--token-path", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert "cannot read the ServiceAccount token" in err and len(err.splitlines()) == 1


def test_submit_sends_the_session_cookie(stand_in_kfp, tmp_path, monkeypatch, capsys, caplog):
    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_COOKIE", SECRET_COOKIE)
    assert _submit(host) == 0, capsys.readouterr().err
    seen = _StandInKFP.headers_seen
    assert seen and all(h.get("cookie") == SECRET_COOKIE for _, _, h in seen), seen
    assert all("authorization" not in h for _, _, h in seen)
    out, _ = _assert_never_leaked(SECRET_COOKIE.split("=", 1)[1], capsys, caplog, tmp_path, calls)
    assert "the authservice_session cookie from $KF_PIPELINES_COOKIE" in out
    monkeypatch.setenv("KF_PIPELINES_COOKIE", "just-a-value")
    assert _submit(host) == 2
    err = capsys.readouterr().err
    assert "expected NAME=VALUE" in err and "just-a-value" not in err


@pytest.mark.parametrize("route,status,reason", [
    ("/apis/v2beta1/healthz", 401, "401 Unauthorized"),
    ("/apis/v2beta1/healthz", 403, "403 Forbidden"),
    ("/apis/v2beta1/healthz", 302, "302 Found"),
    ("/apis/v2beta1/experiments", 401, "401 Unauthorized"),
    ("/apis/v2beta1/runs", 403, "403 Forbidden")])
@pytest.mark.parametrize("with_token", [False, True])
def test_401_and_403_give_one_line_naming_what_to_provide(stand_in_kfp, tmp_path, monkeypatch,
                                                          capsys, caplog, route, status, reason,
                                                          with_token):
    import time

    host, calls = stand_in_kfp
    monkeypatch.setenv("HOME", str(tmp_path))
    if with_token:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    _StandInKFP.refuse = {route: status}
    started = time.monotonic()
    assert _submit(host, "--namespace", "team-a") == 2
    assert time.monotonic() - started < 20  # no retries of the refused health check
    _, err = _assert_never_leaked(SECRET_TOKEN, capsys, caplog, tmp_path, calls)
    (line,) = err.splitlines()  # one line, no traceback
    assert line.startswith(f"fairat pipeline submit: error: Kubeflow Pipelines at {host} "
                           f"answered {reason}")
    assert "KF_PIPELINES_TOKEN" in line and "--cookie-env" in line
    assert "authservice_session" in line and "docs/kubeflow.md" in line
    if with_token:
        assert "the bearer token from $KF_PIPELINES_TOKEN" in line
    else:
        assert "no credentials were sent" in line
    if status == 302:
        assert "https://dex.example.com/dex/auth" in line and "state=" not in line
    if status == 403 and with_token:
        assert "namespace team-a" in line
    if route != "/apis/v2beta1/healthz":
        assert ("GET", "/apis/v2beta1/healthz") in [(m, p) for m, p, _, _ in calls]


def test_compiled_package_holds_no_credentials(tmp_path, monkeypatch, capsys):
    from fairat.fronts.cli import main

    monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("KF_PIPELINES_COOKIE", SECRET_COOKIE)
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--params",
                 str(REPO / "params.yaml")]) == 0
    text = out.read_text()
    streams = "".join(capsys.readouterr())
    for secret in (SECRET_TOKEN, SECRET_COOKIE):
        assert secret not in text and secret not in streams


def test_help_names_every_default():
    import kfp.client

    from fairat.fronts.cli import build_parser
    from pipelines.cli import CLUSTER_DEFAULTS, SA_TOKEN_PATH
    from pipelines.fairat_pipeline import ClusterSettings

    defaults = ClusterSettings()
    # the help's spelled-out defaults are the pipeline's (None for the auth secret: follows
    # --mlflow-secret, whose default is the same name)
    assert CLUSTER_DEFAULTS == {**{k: getattr(defaults, k) for k in CLUSTER_DEFAULTS},
                                "mlflow_auth_secret": None}
    assert defaults.mlflow_auth_secret == defaults.mlflow_secret
    assert SA_TOKEN_PATH == kfp.client.KF_PIPELINES_SA_TOKEN_PATH
    parser = build_parser()
    pipeline = parser._subparsers._group_actions[0].choices["pipeline"]
    actions = pipeline._subparsers._group_actions[0].choices
    for action in ("compile", "submit"):
        text = " ".join(actions[action].format_help().split())
        for name in (defaults.image, defaults.s3_secret, defaults.mlflow_secret,
                     defaults.endpoints_config_map, "train runs in its own pod",
                     "the pipeline pod's", "default: params.yaml"):
            assert name in text, (action, name)
    text = " ".join(actions["submit"].format_help().split())
    for name in ("default: KF_PIPELINES_TOKEN", "default: KF_PIPELINES_COOKIE", SA_TOKEN_PATH,
                 "default: fairat", "default: none, single-user", "nvidia.com/gpu"):
        assert name in text, name
