"""Kubeflow: the compiled pipeline's tasks and edges are the stage table's (fairat/stages.py).

The DAG is read back from the compiled IR, not from the Python that built it: every task of every
DAG (the gate's condition branches included) by its shown name, mapped to its stage through
``pipelines.stage_map.TASK_NAMES``, and every edge kfp wrote (an artifact or parameter taken from
another task's output, passed down through the condition components, or an explicit dependency).
"""

from __future__ import annotations

import pytest

from fairat.stages import BY_NAME, STAGES, upstream
from kfp_fixtures import REPO, ir, pipeline_spec  # noqa: F401 (ir: a fixture)
from pipelines.stage_map import STAGE_OF_TASK, TASK_NAMES, pipeline_stages, wiring


def compiled_dag(spec: dict) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """(IR task key -> shown name, {(producer key, consumer key)}) over the whole pipeline:
    condition components are followed, with their inputs traced back to the producing tasks."""
    shown: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()

    def producers(task: dict, channels: dict[str, set[str]]) -> dict[str, set[str]]:
        """Each input of ``task`` -> the tasks it comes from."""
        out: dict[str, set[str]] = {}
        for kind in ("artifacts", "parameters"):
            for name, source in task.get("inputs", {}).get(kind, {}).items():
                found = set()
                for ref in ("taskOutputArtifact", "taskOutputParameter"):
                    if ref in source:
                        found.add(source[ref]["producerTask"])
                for ref in ("componentInputArtifact", "componentInputParameter"):
                    if ref in source:
                        found |= channels.get(source[ref], set())
                out[name] = found
        return out

    def walk(dag: dict, channels: dict[str, set[str]], inherited: set[str]) -> None:
        for key, task in dag["tasks"].items():
            sources = producers(task, channels)
            after = set(task.get("dependentTasks", ())) | inherited
            ref = task["componentRef"]["name"]
            if ref.startswith("comp-condition"):  # a branch: its inputs carry the producers on,
                condition = task.get("triggerPolicy", {}).get("condition", "")  # and it waits
                gates = {p for name, found in sources.items() if f"'{name}'" in condition
                         for p in found}  # for the outputs its condition reads
                walk(spec["components"][ref]["dag"], sources, after | gates)
                continue
            shown[key] = task["taskInfo"]["name"]
            edges.update((p, key) for found in sources.values() for p in found)
            edges.update((p, key) for p in after)

    walk(spec["root"]["dag"], {}, set())
    return shown, edges


def table_dag(baseline: bool) -> tuple[set[str], set[tuple[str, str]]]:
    """The shown task names and (producer, consumer) edges the table asks for."""
    present = {st.name for st in pipeline_stages(baseline)}
    names = {shown for name in present for shown in TASK_NAMES[name]}
    edges = {(up, shown) for st in pipeline_stages(baseline) for shown in TASK_NAMES[st.name]
             for name in upstream(st) if name in present for up in TASK_NAMES[name]}
    return names, edges


def _check(spec: dict, baseline: bool) -> None:
    shown, edges = compiled_dag(spec)
    names, expected = table_dag(baseline)
    assert sorted(shown.values()) == sorted(names)  # one task per name, none other
    assert {(shown[a], shown[b]) for a, b in edges} == expected
    # the shown names map back to the stages the pipeline runs, register once per branch
    assert {STAGE_OF_TASK[n] for n in shown.values()} == {s.name for s in pipeline_stages(baseline)}


def test_the_compiled_dag_has_the_tables_tasks_and_edges(ir):  # noqa: F811
    _check(pipeline_spec(ir), baseline=True)
    # and the table's edges are real: register waits for the gate, the baseline and the model
    _, expected = table_dag(True)
    assert ("gate", "register-candidate") in expected
    assert ("baseline-evaluate", "compare") in expected and ("train", "gate") in expected


def test_without_the_baseline_the_dag_is_the_table_minus_the_baseline_stages(tmp_path):
    from pipelines.cli import cluster_settings, compile_to

    text = compile_to(tmp_path / "p.yaml", REPO / "params.yaml",
                      cluster_settings({"baseline": False})).read_text()
    _check(pipeline_spec(text), baseline=False)
    names, _ = table_dag(False)
    assert not {"baseline-train", "baseline-evaluate", "compare"} & names


def test_the_reader_sees_a_missing_edge(ir):  # noqa: F811
    """The IR reader is not vacuous: dropping an input from the compiled spec drops its edge."""
    spec = pipeline_spec(ir)
    del spec["root"]["dag"]["tasks"]["gate"]["inputs"]["artifacts"]["report"]
    spec["root"]["dag"]["tasks"]["gate"].pop("dependentTasks", None)
    shown, edges = compiled_dag(spec)
    assert ("evaluate", "gate") not in {(shown[a], shown[b]) for a, b in edges}
    with pytest.raises(AssertionError):
        _check(spec, baseline=True)


def test_every_stage_of_the_table_has_kubeflow_tasks_and_wiring():
    assert set(TASK_NAMES) == set(BY_NAME), "a stage without a Kubeflow task (or one too many)"
    assert len(STAGE_OF_TASK) == sum(len(v) for v in TASK_NAMES.values())  # names unique
    assert [st.name for st in pipeline_stages(True)] == [st.name for st in STAGES]
    for st in STAGES:  # each upstream stage hands over at least one artifact
        assert {src for src, _ in wiring(st).values()} == set(upstream(st)), st.name
    assert wiring(BY_NAME["register"])["baseline_report"] == ("baseline_evaluate", "report")
    assert wiring(BY_NAME["baseline_evaluate"])["model"] == ("baseline_train", "model")
