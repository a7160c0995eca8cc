"""The pipeline's stages in one table: name, step function, files in, files out, in run order.

Why one table: the stage order and wiring were written four times (``dvc.yaml``, ``fairat run``,
the Kubeflow pipeline, the study harness) and could drift. Now ``dvc.yaml`` is checked against
:data:`STAGES` (``tests/test_layout.py``: same stages, same order, each ``--flag path`` of its
command, each input among its deps, each output among its outs), ``fairat run`` and the study
harness run the stages this table lists in this order (:func:`fairat.fronts.cli.run_stages`), and
:mod:`fairat.fronts.dvc_deps` finds each stage's code from :attr:`Stage.step`.

Files are named by their key in :data:`fairat.artifacts.LOCAL` (the model's files) or, for a stage
with ``baseline=True``, in :data:`fairat.artifacts.BASELINE` for the keys it has (the PGD-AT
baseline's own files). The key is also the ``fairat`` command's flag (``--report``), except
``prepare``'s output, which is its ``--out``. Foundation module: no imports above ``artifacts``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fairat.artifacts import BASELINE, LOCAL


@dataclass(frozen=True)
class Stage:
    name: str                  # the dvc.yaml stage (and the Kubeflow task it corresponds to)
    step: str                  # "module:function" of the one step function it calls
    inputs: tuple[str, ...]    # artifact keys it reads
    outputs: tuple[str, ...]   # artifact keys it writes
    baseline: bool = False     # the step again on the PGD-AT baseline's files (BASELINE)
    needs_baseline: bool = False  # reads the baseline's report and training summary
    # when `fairat run` runs it: "always", "baseline" (with --with-baseline), "tracking" (when
    # params `track.enabled`); `dvc repro` and the Kubeflow pipeline run every stage
    runs_when: str = "always"
    optional_inputs: tuple[str, ...] = ()  # inputs it reads when present (e.g. the MLflow run)

    @property
    def module(self) -> str:
        return self.step.partition(":")[0]

    @property
    def command(self) -> str:
        """The ``fairat`` subcommand that runs it (``fairat.steps.train`` -> ``train``)."""
        return self.module.rsplit(".", 1)[-1]

    def path(self, key: str) -> str:
        """The local path of one of its files (the baseline's own file where it has one)."""
        return BASELINE[key] if self.baseline and key in BASELINE else LOCAL[key]

    def flags(self) -> dict[str, str]:
        """``--flag`` -> path for every file, as its ``dvc.yaml`` command passes them."""
        out = {f"--{k}": self.path(k) for k in (*self.inputs, *self.outputs)}
        if "data" in self.outputs:  # prepare writes the data folder: `--out`
            out["--out"] = out.pop("--data")
        if self.needs_baseline:
            out["--baseline-report"], out["--baseline-metrics"] = (BASELINE["report"],
                                                                   BASELINE["metrics"])
        return out


_TRAIN_OUT = ("model", "checkpoints", "metrics", "history")
_EVAL_OUT = ("report", "plot", "markdown", "summary")

STAGES: tuple[Stage, ...] = (
    Stage("prepare", "fairat.steps.prepare:prepare_step", (), ("data",)),
    Stage("train", "fairat.steps.train:train_step", ("data",), _TRAIN_OUT),
    Stage("evaluate", "fairat.steps.evaluate:evaluate_step", ("data", "model", "metrics"),
          _EVAL_OUT, optional_inputs=("metrics",)),
    Stage("baseline_train", "fairat.steps.train:train_step", ("data",), _TRAIN_OUT,
          baseline=True, runs_when="baseline"),
    Stage("baseline_evaluate", "fairat.steps.evaluate:evaluate_step",
          ("data", "model", "metrics"), _EVAL_OUT, baseline=True,
          runs_when="baseline", optional_inputs=("metrics",)),
    Stage("compare", "fairat.steps.compare:compare_step", ("report", "metrics"),
          ("comparison", "chart"),
          needs_baseline=True, runs_when="baseline", optional_inputs=("metrics",)),
    Stage("gate", "fairat.steps.gate:gate_step", ("model", "report"), ("gate",)),
    Stage("register", "fairat.steps.register:register_step",
          ("data", "model", "metrics", "report", "plot", "gate"), ("card", "registered"),
          needs_baseline=True, runs_when="tracking", optional_inputs=("metrics", "plot")),
)

BY_NAME = {stage.name: stage for stage in STAGES}


def input_paths(st: Stage) -> set[str]:
    """Local paths of every file the stage reads (the baseline's report and summary included)."""
    paths = {st.path(k) for k in st.inputs}
    if st.needs_baseline:
        paths |= {BASELINE["report"], BASELINE["metrics"]}
    return paths


def upstream(st: Stage) -> tuple[str, ...]:
    """The stages whose outputs ``st`` reads, in table order: the edges of the pipeline's graph
    (what `dvc.yaml` implies through deps and outs, and what a Kubeflow task must wait for)."""
    wanted = input_paths(st)
    return tuple(other.name for other in STAGES if other is not st
                 and wanted & {other.path(k) for k in other.outputs})


def stage(name: str) -> Stage:
    """The stage called ``name``; a clear error naming the known ones otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(BY_NAME)}") from None
