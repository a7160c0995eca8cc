"""The GPU request reaches the pod: a replay of what the KFP v2 driver does with the compiled IR.

The driver (kubeflow/pipelines ``backend/src/v2/driver/driver.go``, ``initPodSpecPatch``) sets a
task's accelerator limit from ``container.resources.accelerator``: a ``resourceCount`` of the form
``{{$.inputs.parameters['NAME']}}`` is looked up in the task's executor input and read with
``GetStringValue()`` (``resolve.go``, ``resolvePodSpecInputRuntimeParameter``), which is ``""``
for a number; the limit is set only when both the type and the count are non-empty, and the count
must parse as a Kubernetes quantity. Run arguments reach the executor input as the API stores
them: a ``google.protobuf.Value`` typed by the parameter's type (a run form and ``kfp.Client`` send
a STRING parameter as a string and a NUMBER_INTEGER one as a number). 2.16.0, 2.17.0 and master
behave the same. No cluster here, so this replays those rules on the IR; the last test checks that
the replay does drop a number-typed limit, the bug it exists to catch.
"""

import re

import pytest
from google.protobuf import struct_pb2
from kfp import compiler, dsl

from kfp_fixtures import pipeline_spec, ir  # noqa: F401 (ir: a fixture)

CHANNEL = re.compile(r"\$.inputs.parameters\['(.+?)'\]")  # the driver's inputPipelineChannelPattern
QUANTITY = re.compile(r"^[0-9]+$")  # the whole-number quantities a GPU count may take


def run_argument(parameter_type: str, value: object) -> struct_pb2.Value:
    """A run argument as the KFP API stores it, typed by the root parameter's type."""
    stored = struct_pb2.Value()
    if parameter_type == "STRING":
        stored.string_value = str(value)
    elif parameter_type in ("NUMBER_INTEGER", "NUMBER_DOUBLE"):
        stored.number_value = float(value)
    elif parameter_type == "BOOLEAN":
        stored.bool_value = bool(value)
    else:
        raise AssertionError(f"no replay for parameter type {parameter_type}")
    return stored


def get_string_value(value: struct_pb2.Value) -> str:
    """Go's ``structpb.Value.GetStringValue()``: the string, or "" for any other kind."""
    return value.string_value if value.WhichOneof("kind") == "string_value" else ""


def driver_limits(spec: dict, task_name: str, arguments: dict[str, object]) -> dict[str, str]:
    """The ``resources.limits`` the driver's pod-spec patch gives a root-level task's pod."""
    task = spec["root"]["dag"]["tasks"][task_name]
    executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    accelerator = (spec["deploymentSpec"]["executors"][executor]["container"]
                   .get("resources", {}).get("accelerator"))
    if not accelerator:
        return {}
    root = spec["root"]["inputDefinitions"]["parameters"]

    def resolve(text: str) -> str:
        match = CHANNEL.search(text)
        if not match:
            return text  # a constant is taken as it is
        source = task["inputs"]["parameters"][match[1]]
        if "componentInputParameter" in source:
            name = source["componentInputParameter"]
            value = arguments.get(name, root[name].get("defaultValue"))
            return get_string_value(run_argument(root[name]["parameterType"], value))
        constant = source["runtimeValue"]["constant"]
        return get_string_value(struct_pb2.Value(
            **({"string_value": constant} if isinstance(constant, str)
               else {"number_value": float(constant)})))

    kind = resolve(accelerator.get("resourceType", ""))
    count = resolve(accelerator.get("resourceCount", ""))
    if not (kind and count):
        return {}
    assert QUANTITY.match(count), f"the driver fails the task: {count!r} is not a quantity"
    return {kind: count}


@pytest.mark.parametrize("task_name", ["train", "train-2"])  # train and baseline-train
def test_the_gpu_limit_reaches_the_train_pods(ir, task_name):  # noqa: F811
    spec = pipeline_spec(ir)
    assert spec["root"]["dag"]["tasks"][task_name]["componentRef"]["name"].startswith("comp-train")
    # what a run form sends for the STRING parameter, and the compiled default
    assert driver_limits(spec, task_name, {"gpus_per_node": "4"}) == {"nvidia.com/gpu": "4"}
    assert driver_limits(spec, task_name, {}) == {"nvidia.com/gpu": "1"}
    assert driver_limits(spec, task_name, {"gpus_per_node": "2",
                                           "accelerator_type": "amd.com/gpu"}) == \
        {"amd.com/gpu": "2"}


def test_every_accelerator_limit_is_bound_to_a_string_parameter(ir):  # noqa: F811
    spec = pipeline_spec(ir)
    root = spec["root"]["inputDefinitions"]["parameters"]
    bound = 0
    for name, task in spec["root"]["dag"]["tasks"].items():
        executor = spec["components"][task["componentRef"]["name"]].get("executorLabel")
        container = spec["deploymentSpec"]["executors"].get(executor, {}).get("container", {})
        count = container.get("resources", {}).get("accelerator", {}).get("resourceCount")
        if count and CHANNEL.search(count):
            source = task["inputs"]["parameters"][CHANNEL.search(count)[1]]
            assert root[source["componentInputParameter"]]["parameterType"] == "STRING", name
            bound += 1
    assert bound == 2  # train and baseline-train


def test_the_replay_drops_a_number_typed_limit_as_the_driver_does(tmp_path):
    """The bug the replay exists to catch: a NUMBER_INTEGER run parameter as the limit. (No
    ``from __future__ import annotations`` in this module: kfp reads these annotations as types.)"""

    @dsl.component(base_image="python:3.11-slim")
    def work():
        pass

    @dsl.pipeline(name="number-limit")
    def numbered(gpus: int = 1):
        task = work()
        task.set_accelerator_type("nvidia.com/gpu")
        task.set_accelerator_limit(gpus)

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(numbered, str(out))
    spec = pipeline_spec(out.read_text())
    assert driver_limits(spec, "work", {"gpus": 4}) == {}
