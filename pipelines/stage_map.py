"""The stage table (:data:`fairat.stages.STAGES`) as Kubeflow tasks: the one place that maps them.

Why: the stage order and wiring were written by hand in the pipeline and could drift from
``dvc.yaml`` and ``fairat run``. :func:`pipelines.fairat_pipeline.build_pipeline` now creates one
task per stage of :func:`pipeline_stages`, in table order, with its artifact inputs taken from the
outputs of its upstream stages (:func:`wiring`, from :func:`fairat.stages.upstream`). What a
stage's task *is* (its component, its params sections, GPU and retry settings, the gate condition
around register) stays explicit in the pipeline module; what it reads and after what comes from
the table. ``tests/pipelines/test_kfp_compile.py`` reads the compiled IR back and checks its tasks and
edges against the table through :data:`TASK_NAMES`.

Imports neither kfp nor torch.
"""

from __future__ import annotations

from typing import Sequence

from fairat.stages import BY_NAME, STAGES, Stage, input_paths, upstream

# The task(s) each stage becomes, by the name the task shows in the UI (``taskInfo.name`` in the
# IR; the IR's own task keys are kfp's, e.g. ``train-2`` for the second train task, which shows
# as ``baseline-train``). register is two tasks, one per branch of the gate's condition
# (``register-candidate`` when the gate passed, ``register-blocked`` otherwise).
TASK_NAMES: dict[str, tuple[str, ...]] = {
    "prepare": ("prepare",), "train": ("train",), "evaluate": ("evaluate",),
    "baseline_train": ("baseline-train",), "baseline_evaluate": ("baseline-evaluate",),
    "compare": ("compare",), "gate": ("gate",),
    "register": ("register-candidate", "register-blocked")}
STAGE_OF_TASK = {shown: stage for stage, names in TASK_NAMES.items() for shown in names}

# Which artifact key of the table travels as which component artifact (the producing component's
# output and the consuming component's input share the name; a baseline file read by a
# non-baseline stage arrives as ``baseline_<name>``). Keys not here ride inside another artifact
# (evaluate's ``plot`` PNG sits in its ``report`` folder) or are read by no later Kubeflow task
# (checkpoints, history, comparison, chart, card).
PORTS = {"data": "data", "model": "model", "metrics": "summary", "report": "report",
         "gate": "decision"}

# What each step's pod is given (by name: the values stay in the cluster, see ClusterSettings):
# S3 keys and endpoints, the MLflow server (each step that logs to its run), the private signing
# key (evaluate and the gate sign what they make) or only the public verify key (register checks
# the signed decision). And which steps are cached: the deterministic ones. train is not (GPU
# training is not bitwise reproducible), nor register (a registration is a side effect).
POD_ACCESS = {"prepare": ("s3",), "train": ("s3", "mlflow"),
              "evaluate": ("s3", "mlflow", "signing_key"), "gate": ("signing_key",),
              "compare": ("s3", "mlflow"), "register": ("s3", "mlflow", "verify_key")}
CACHED = frozenset({"prepare", "evaluate", "gate", "compare"})


def pipeline_stages(baseline: bool = True) -> tuple[Stage, ...]:
    """The stages the pipeline runs, in table order: every one (``dvc repro`` runs them all), but
    the baseline's own (``runs_when="baseline"``) only with ``baseline``."""
    return tuple(st for st in STAGES if baseline or st.runs_when != "baseline")


def wiring(st: Stage, present: Sequence[str] = tuple(BY_NAME)) -> dict[str, tuple[str, str]]:
    """``st``'s component artifact inputs: input name -> (upstream stage, its output), derived
    from the table (:func:`fairat.stages.upstream` and the files each stage writes); stages not
    in ``present`` (the baseline, when left out) are skipped."""
    wanted, out = input_paths(st), {}
    for name in upstream(st):
        other = BY_NAME[name]
        for key in other.outputs:
            if name in present and key in PORTS and other.path(key) in wanted:
                prefix = "baseline_" if other.baseline and not st.baseline else ""
                out[prefix + PORTS[key]] = (name, PORTS[key])
    return out
