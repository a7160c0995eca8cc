"""`fairat` command line: a thin front over :mod:`fairat.steps` (argv in, step call, exit code out).

Every command reads the same params (``params.yaml`` by default; ``--params`` repeated merges
overlays in order, :mod:`fairat.overlays`); ``-S key=value`` overrides one value for this invocation (``-S train.method=pgd_at -S train.epochs=3``). Bad values stop the
command at once with a message naming the key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from fairat.artifacts import BASELINE, LOCAL
from fairat.config import ConfigError, Params
from fairat.errors import DataError, RegistryError, TrainingDiverged
from fairat.overlays import load_params_files
from fairat.stages import STAGES, Stage

DESCRIPTION = """\
fairat: fair adversarial training (FairAT) with PGD-AT and TRADES baselines, evaluated class by
class with PGD, CW and AutoAttack.

Typical use, all driven by one params file:
  fairat prepare   # load + validate data, write data/prepared/{train,val,test}.npz + manifest
  fairat train     # adversarial training; writes models/model.pt and per-epoch metrics
  fairat evaluate  # class-wise clean/PGD/CW/AutoAttack report: metrics/eval.json + chart
  fairat gate      # fairness gate on the report: metrics/gate.json (fail-closed)
  fairat register  # MLflow model version with its evidence; alias `candidate` iff gate passed
  fairat run       # all of the above in a row (the default params use the bundled digits data)
  fairat models    # list registered versions, their gate results and class-wise numbers
  fairat approve NAME VERSION --by YOU   # promote a candidate to `champion`
  fairat pipeline compile|submit         # the same pipeline on Kubeflow (docs/kubeflow.md)
  fairat storage push|pull|dvc-remote    # folders and the DVC remote on S3 (docs/storage.md)
  fairat guard serve|register            # revert hand-set aliases that skip the gate (docs/guard.md)

`dvc repro` runs the same steps as a cached pipeline (dvc.yaml). MLflow's store is
MLFLOW_TRACKING_URI when set, else sqlite:///mlruns/mlflow.db in the current folder.
"""


PLUGIN_GROUP = "fairat.commands"
# Commands whose code lives in their own module, imported only when that command runs (or for the
# full help): the code a pipeline stage runs, and so its generated dvc.yaml deps
# (fairat/fronts/dvc_deps.py), is then the step's code and this module's, never the S3, guard or
# Kubeflow fronts'. Each module has ``add_parser(sub)``; the one-line help shows in `fairat -h`.
ON_USE = {"approve": ("fairat.fronts.registry_cli",
                      "promote a registered version to alias `champion`"),
          "models": ("fairat.fronts.registry_cli", "list registered versions with gate results"),
          "storage": ("fairat.fronts.storage_cli", "push or pull a folder to or from S3"),
          "guard": ("fairat.fronts.guard_cli",
                    "revert hand-set candidate/champion aliases that skip the gate")}


def plugin_commands(only: str | None = None) -> dict[str, Any]:
    """Subcommand modules declared under the ``fairat.commands`` entry point (pyproject.toml),
    loaded: all of them, or (``only``) just that command's, if it is one.

    Why entry points: ``fairat pipeline`` lives in the top-level ``pipelines`` package, which
    imports ``fairat``; finding it through the installed metadata keeps the package free of an
    import of its own orchestration layer. Each module has ``add_parser(sub)`` and ``main(args)``.
    """
    return {name: ep.load() for name, ep in _plugin_entry_points().items()
            if only is None or name == only}


def _plugin_entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def _on_use_module(command: str) -> Any:
    from importlib import import_module

    return import_module(ON_USE[command][0])


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


PARAMS_HELP = ("params YAML; repeat to merge overlays in order, e.g. --params params.yaml --params "
               "params/cifar10-cpu.yaml (sections merge key by key, later files win; default: "
               "params.yaml)")


def params_files(args: argparse.Namespace) -> list[Path]:
    """The ``--params`` files in order (``params.yaml`` when none is given)."""
    return list(args.params or [Path("params.yaml")])


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", action="append", default=None, type=Path, metavar="FILE",
                   help=PARAMS_HELP)
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="override one param, e.g. -S train.method=pgd_at (repeatable; YAML values)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=LOCAL["data"], type=Path,
                   help="prepared-data folder written by `fairat prepare` (default: %(default)s)")


def _add_train_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=LOCAL["model"], type=Path,
                   help="where the selected model is written (default: %(default)s)")
    p.add_argument("--checkpoints", default=LOCAL["checkpoints"], type=Path,
                   help="per-epoch checkpoints last.pt / best.pt (default: %(default)s)")
    p.add_argument("--metrics", default=LOCAL["metrics"], type=Path,
                   help="training summary JSON (default: %(default)s)")
    p.add_argument("--history", default=LOCAL["history"], type=Path,
                   help="per-epoch metrics CSV (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <checkpoints>/last.pt if it exists (same params required)")
    p.add_argument("--checkpoint-url", default=None, metavar="S3_URL",
                   help="also keep the checkpoints under s3://bucket/prefix after every epoch; "
                        "with --resume and no local last.pt, fetch them from there first "
                        "(endpoint and credentials from the environment, docs/storage.md)")


def _add_eval_outputs(p: argparse.ArgumentParser, with_model: bool) -> None:
    if with_model:
        p.add_argument("--model", default=LOCAL["model"], type=Path,
                       help="model file written by `fairat train` (default: %(default)s)")
    p.add_argument("--report", default=LOCAL["report"], type=Path,
                   help="class-wise report JSON (default: %(default)s)")
    p.add_argument("--plot", default=LOCAL["plot"], type=Path,
                   help="per-class bar chart PNG (default: %(default)s)")
    p.add_argument("--markdown", default=LOCAL["markdown"], type=Path,
                   help="class-wise report in Markdown (default: %(default)s)")
    p.add_argument("--summary", default=LOCAL["summary"], type=Path,
                   help="average / worst / gap per attack, the DVC metrics (default: %(default)s)")


def _add_gate_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gate", default=LOCAL["gate"], type=Path,
                   help="fairness-gate decision JSON (default: %(default)s)")


def _add_register_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--card", default=LOCAL["card"], type=Path,
                   help="model card, written after the gate (default: %(default)s)")
    p.add_argument("--registered", default=LOCAL["registered"], type=Path,
                   help="registered model name / version / alias JSON (default: %(default)s)")


def _add_baseline_inputs(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--baseline-report", required=required, default=None, type=Path,
                   help="evaluation report of the PGD-AT baseline trained beside this model "
                        f"(dvc.yaml: {BASELINE['report']}); the card shows the lift over it")
    p.add_argument("--baseline-metrics", default=None, type=Path,
                   help="the baseline's training summary (its time and MLflow run; dvc.yaml: "
                        f"{BASELINE['metrics']})")


def _add_registry_commands(sub: Any) -> None:
    p = sub.add_parser("gate", help="fairness gate: pass or block the evaluated model",
                       description="Judge the evaluation report against params `gate` "
                                   "(fail-closed: missing, malformed or stale evidence blocks). "
                                   "Writes the decision with every reason it failed.")
    _add_common(p)
    _add_eval_outputs(p, with_model=True)
    _add_gate_outputs(p)
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when the gate blocks (default: record and exit 0)")

    p = sub.add_parser("register", help="register the model in MLflow with its evidence",
                       description="Log the model (mlflow.pytorch) and its evidence, create a "
                                   "model version tagged with the gate decision, and set alias "
                                   "`candidate` only when the gate passed.")
    _add_common(p)
    _add_data(p)
    _add_train_outputs(p)
    _add_eval_outputs(p, with_model=False)
    _add_gate_outputs(p)
    _add_register_outputs(p)
    _add_baseline_inputs(p, required=False)

    p = sub.add_parser("compare", help="lift on the weakest class over the PGD-AT baseline",
                       description="Compare the evaluated model with the PGD-AT baseline trained "
                                   "beside it (same data, seed, budget): weakest class, average "
                                   "and training time, judged on params `gate.attack`. Both "
                                   "reports must be evaluate's untouched output.")
    _add_common(p)
    p.add_argument("--report", default=LOCAL["report"], type=Path,
                   help="this model's evaluation report (default: %(default)s)")
    p.add_argument("--metrics", default=LOCAL["metrics"], type=Path,
                   help="this model's training summary (default: %(default)s)")
    _add_baseline_inputs(p, required=True)
    p.add_argument("--comparison", default=LOCAL["comparison"], type=Path,
                   help="the numbers, a DVC metric (default: %(default)s)")
    p.add_argument("--chart", default=None, type=Path,
                   help="also draw the per-class chart: this model's bars beside the baseline's, "
                        f"with the gate's threshold (dvc.yaml and `fairat run`: {LOCAL['chart']})")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, the other fronts' commands are named with their one
    line of help but their modules are not imported (see :data:`ON_USE`)."""
    parser = argparse.ArgumentParser(prog="fairat", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="load, validate and subset a data set",
                       description="Load the data source named in params `data`, validate it, take "
                                   "stratified subsets and a validation split, and write .npz "
                                   "files plus a manifest (counts per class, content hashes).")
    _add_common(p)
    p.add_argument("--out", default=LOCAL["data"], type=Path,
                   help="output folder (default: %(default)s)")

    p = sub.add_parser("train", help="adversarially train a model (pgd_at, trades, fairat)",
                       description="Train with params `model` and `train`. Works unchanged under "
                                   "`torchrun --nproc_per_node N`.")
    _add_common(p)
    _add_data(p)
    _add_train_outputs(p)

    p = sub.add_parser("evaluate", help="class-wise clean / PGD / CW / AutoAttack evaluation",
                       description="Evaluate a trained model on params `evaluate.split` (test by "
                                   "default) and write a JSON report with provenance, a chart "
                                   "and a model card.")
    _add_common(p)
    _add_data(p)
    _add_eval_outputs(p, with_model=True)
    p.add_argument("--metrics", default=LOCAL["metrics"], type=Path,
                   help="training summary JSON naming the MLflow run the evaluation is logged "
                        "to (default: %(default)s)")

    p = sub.add_parser("run", help="prepare, train, evaluate, gate and register in one go",
                       description="The whole local job with the default output layout "
                                   "(register only when params `track.enabled`).")
    _add_common(p)
    _add_data(p)
    _add_train_outputs(p)
    _add_eval_outputs(p, with_model=False)
    _add_gate_outputs(p)
    _add_register_outputs(p)
    p.add_argument("--with-baseline", action="store_true",
                   help="also train and evaluate the PGD-AT baseline beside the model (files "
                        "under models/baseline and metrics/baseline, as `dvc repro` does) and "
                        "show the lift on the card")
    _add_registry_commands(sub)
    for name in _plugin_entry_points():  # `fairat pipeline` (kfp loads on use)
        if command is None or command == name:
            plugin_commands(name)[name].add_parser(sub)
        else:
            sub.add_parser(name, help=f"see `fairat {name} -h`")
    wanted = {module for name, (module, _) in ON_USE.items() if command in (None, name)}
    for name, (module, text) in ON_USE.items():
        if module in wanted:  # the module adds every command it serves, once
            if name == next(n for n, (m, _) in ON_USE.items() if m == module):
                _on_use_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=text)
    return parser


def load_cli_params(args: argparse.Namespace) -> Params:
    """Every ``--params`` file merged in order, then every ``-S``, validated once
    (:func:`fairat.overlays.load_params_files`)."""
    return load_params_files(params_files(args), args.overrides)


FileOf = Callable[[Stage, str], "Path | None"]


def run_stages(params: Params, names: Sequence[str], file: FileOf, **options: Any) -> list[Any]:
    """Run the named stages of :data:`fairat.stages.STAGES`, in the table's order, each by one
    call of its step; what `fairat <step>`, `fairat run` and the study harness share.

    ``file(stage, key)`` gives the path of one of the stage's files (None: not wanted). Options:
    ``resume``, ``checkpoint_url`` and ``track`` for training. A baseline stage trains and
    evaluates the PGD-AT baseline on the same params. Returns each step's result.
    """
    from importlib import import_module

    from fairat.config import with_overrides

    results = []
    for st in (s for s in STAGES if s.name in names):
        f = lambda key, st=st: file(st, key)  # noqa: E731
        _check_inputs(st, f)  # before any work, and before anything is written
        step = getattr(import_module(st.module), st.step.partition(":")[2])
        p = params
        if st.baseline:
            from fairat.evidence.comparison import BASELINE_METHOD

            p = with_overrides(params, {"train.method": BASELINE_METHOD})
        if st.command == "prepare":
            results.append(step(p, f("data")))
        elif st.command == "train":
            from fairat.engine.training import TrainPaths

            extra = {k: options[k] for k in ("track", "checkpoint_url") if k in options
                     and not (st.baseline and k == "checkpoint_url")}  # the model's mirror only
            results.append(step(p, f("data"), TrainPaths(f("model"), f("checkpoints"),
                                                         f("metrics"), f("history")),
                                resume=options.get("resume", False), **extra))
        elif st.command == "evaluate":
            results.append(step(p, f("data"), f("model"), f("report"), f("plot"), f("markdown"),
                                f("summary"), f("metrics")))
        elif st.command == "gate":
            results.append(step(p, f("report"), f("model"), f("gate")))
        elif st.command == "compare":
            results.append(step(p, f("report"), f("baseline_report"), f("comparison"),
                                f("metrics"), f("baseline_metrics"), chart_path=f("chart")))
        elif st.command == "register":
            results.append(step(p, f("model"), f("report"), f("gate"), f("metrics"), f("data"),
                                f("registered"), f("plot"), f("card"), f("baseline_report"),
                                f("baseline_metrics")))
        else:  # a stage added to the table without its call here
            raise ValueError(f"stage {st.name!r}: no call for step {st.step}")
    return results


def _check_inputs(st: Stage, file: Callable[[str], "Path | None"]) -> None:
    """Refuse a stage whose input files are missing, naming them, before it reads or writes
    anything. Why: in a fresh clone the DVC-cached files (the prepared data, the models) are
    absent while the committed metrics are there; `fairat gate` would otherwise record a
    blocked decision over the committed one, and `fairat evaluate` would fail late."""
    keys = [k for k in st.inputs if k not in st.optional_inputs]
    if st.needs_baseline and file("baseline_report") is not None:
        keys.append("baseline_report")
    missing = [str(p) for p in (file(k) for k in keys) if p is not None and not Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f"missing input {', '.join(missing)}; nothing was written. In a fresh clone `dvc "
            f"pull` fetches the pipeline's files from the DVC remote (docs/storage.md), or `dvc "
            f"repro` rebuilds them; otherwise run the stage that writes it first")


def _cli_files(args: argparse.Namespace) -> FileOf:
    """Paths from the command line; the baseline's own files for baseline stages."""
    def file(st: Stage, key: str) -> Path | None:
        if st.baseline and key in BASELINE:
            return Path(BASELINE[key])
        if st.command == "prepare" and args.command == "prepare":
            return args.out
        value = getattr(args, key, None)
        if value is None and key in LOCAL and args.command == "run":
            value = LOCAL[key]  # `fairat run` has no flag for it (the comparison)
        return None if value is None else Path(value)
    return file


def _in_run(st: Stage, baseline: bool, tracking: bool) -> bool:
    """Whether `fairat run` runs a stage: the table's, less the baseline's unless
    ``--with-baseline`` and less register unless tracking is on."""
    return {"always": True, "baseline": baseline, "tracking": tracking}[st.runs_when]


def run_command(args: argparse.Namespace) -> int:
    """Run the pipeline command(s) ``args`` names; returns the exit status."""
    params = load_cli_params(args)  # bad params stop here, before torch is even imported
    baseline = getattr(args, "with_baseline", False)
    names = [args.command] if args.command != "run" else [s.name for s in STAGES if _in_run(
        s, baseline, params.track.enabled)]
    if baseline:
        args.baseline_report, args.baseline_metrics = (Path(BASELINE["report"]),
                                                       Path(BASELINE["metrics"]))
    results = run_stages(params, names, _cli_files(args), resume=getattr(args, "resume", False),
                         **({"checkpoint_url": args.checkpoint_url}
                            if getattr(args, "checkpoint_url", None) else {}))
    if "register" in names:
        hint = dvc_remote_hint(Path.cwd())
        if hint:
            print(hint, flush=True)
    if args.command == "gate" and getattr(args, "strict", False) and not results[-1]["passed"]:
        return 1
    return 0


def dvc_remote_hint(start: Path) -> str | None:
    """A line for the end of a run inside a DVC repository that has no remote: DVC then suggests
    `dvc push`, which has nowhere to go. None outside DVC or when a remote is configured."""
    import re

    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            break
    else:
        return None
    remote = re.compile(r"""^\s*\[\s*['"]?remote\s""", re.MULTILINE)
    for name in ("config", "config.local"):
        path = folder / ".dvc" / name
        if path.is_file() and remote.search(path.read_text(errors="replace")):
            return None
    return ("note: this DVC repository has no remote, so `dvc push` has nowhere to send the data "
            "and models; add one first: `fairat storage dvc-remote s3://BUCKET/PREFIX` (endpoint "
            "and credentials from the environment, docs/storage.md) or `dvc remote add -d NAME URL`")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv)).parse_args(argv)
    plugins = plugin_commands(args.command)
    if args.command in plugins:  # Kubeflow compile/submit: needs neither torch nor MLflow
        return plugins[args.command].main(args)
    # approve / models; S3 push / pull / DVC remote; the alias guard beside MLflow
    runner = _on_use_module(args.command).run if args.command in ON_USE else run_command
    from fairat.edge.storage import StorageError  # light: boto3 loads on use

    try:
        return runner(args)
    except (ConfigError, DataError, RegistryError, StorageError, TrainingDiverged, ValueError,
            OSError) as err:  # OSError: a missing input, an unwritable or full output
        from fairat.redact import redact

        print(f"fairat {args.command}: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fairat {args.command}: interrupted; rerun with --resume to continue training",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
