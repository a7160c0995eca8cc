"""`fairat` command line: a thin front over :mod:`fairat.steps` (argv in, step call, exit code out).

Every command reads the same params file (``params.yaml`` by default); ``-S key=value`` overrides
one value for this invocation (``-S train.method=pgd_at -S train.epochs=3``). Bad values stop the
command at once with a message naming the key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from fairat.artifacts import BASELINE, LOCAL
from fairat.config import ConfigError, Params, load_params
from fairat.errors import DataError, RegistryError, TrainingDiverged
from fairat.fronts import storage_cli  # light: boto3 loads on use
from fairat.fronts import guard_cli

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


def plugin_commands() -> dict[str, Any]:
    """Subcommand modules declared under the ``fairat.commands`` entry point (pyproject.toml).

    Why entry points: ``fairat pipeline`` lives in the top-level ``pipelines`` package, which
    imports ``fairat``; finding it through the installed metadata keeps the package free of an
    import of its own orchestration layer. Each module has ``add_parser(sub)`` and ``main(args)``.
    """
    from importlib.metadata import entry_points

    return {ep.name: ep.load() for ep in entry_points(group=PLUGIN_GROUP)}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", type=Path,
                   help="params YAML with sections data/model/train/evaluate (default: %(default)s)")
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

    p = sub.add_parser("approve", help="promote a registered version to alias `champion`",
                       description="Refused, with the reasons, unless the version's tags show a "
                                   "passed fairness gate on complete evidence.")
    p.add_argument("model_name", help="registered model name (params `track.model_name`)")
    p.add_argument("version", type=int, help="model version number")
    p.add_argument("--by", required=True, help="who approves (recorded as a tag)")
    p.add_argument("--note", default="", help="why (recorded as a tag)")
    p.add_argument("--yes", action="store_true",
                   help="approve without the question (needed when stdin is not a terminal)")

    p = sub.add_parser("models", help="list registered versions with gate results",
                       description="Versions of a registered model, their aliases, gate verdict "
                                   "and class-wise robust accuracy, for the approver.")
    p.add_argument("model_name", nargs="?", default=None,
                   help="registered model name (default: params `track.model_name`)")
    p.add_argument("--params", default="params.yaml", type=Path,
                   help="params file naming the model when none is given (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
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
    for command in plugin_commands().values():  # `fairat pipeline` (light: kfp loads on use)
        command.add_parser(sub)
    storage_cli.add_parser(sub)
    guard_cli.add_parser(sub)
    return parser


def load_cli_params(args: argparse.Namespace) -> Params:
    """``--params`` merged with every ``-S``, validated once (see :func:`fairat.config.load_params`)."""
    return load_params(args.params, args.overrides)


def _print_models(rows: list[dict[str, Any]], name: str) -> None:
    if not rows:
        print(f"no versions of {name!r} are registered")
        return
    print(f"{name}")
    print(f"{'version':>7}  {'created (UTC)':<16} {'method':<7} {'data':<11} {'aliases':<18} "
          f"{'gate':<6} {'worst':>6} {'class':<10} {'average':>7} {'vs PGD-AT':>9}  approved by")
    for r in rows:
        gate = {"true": "passed", "false": "FAILED"}.get(r.get("gate_passed", ""), "?")
        if r.get("gate_informational") == "true":
            gate = "info"
        worst, avg = (f"{100 * float(r[k]):.1f}%" if r.get(k) else "-"
                      for k in ("worst_class_robust", "average_robust"))
        lift = r.get("worst_lift_over_baseline")  # the baseline trained beside it, worst class
        lift = f"{100 * float(lift):+.1f}" if lift else "-"
        print(f"{r['version']:>7}  {r.get('created', '-')[:16]:<16} {r.get('method') or '-':<7} "
              f"{(r.get('data_source') or '-')[:11]:<11} {','.join(r['aliases']) or '-':<18} "
              f"{gate:<6} {worst[:6]:>6} {r.get('worst_class', '-')[:10]:<10} {avg[:7]:>7} "
              f"{lift:>9}  "
              f"{r.get('approved_by', '-')}")
        if r.get("gate_passed") != "true" and r.get("gate_reasons"):
            for reason in json.loads(r["gate_reasons"]):
                print(f"{'':9}blocked: {reason}")
        if r.get("guard_reverted"):
            print(f"{'':9}guard reverted: {r['guard_reverted']}")
    attested = {r.get("attested") for r in rows}
    from fairat.evidence.attestation import LOCAL_MODE

    print("verdicts: each version's signed gate decision, verified against its logged files"
          if attested <= {"verified", "unverified"} else f"verdicts from tags; {LOCAL_MODE}")


def run_registry_command(args: argparse.Namespace) -> int:
    from fairat.edge import registry

    if args.command == "approve":
        def confirm(description: str) -> bool:
            """Show what is approved (the card summary); ask unless --yes."""
            print(f"{args.model_name} version {args.version}:\n"
                  f"{description or '(no model card summary)'}")
            if args.yes:
                return True
            if not sys.stdin.isatty():
                raise RegistryError("approve: stdin is not a terminal; read the card above, "
                                    "then pass --yes")
            return input(f"Make version {args.version} the champion? Type 'yes': ").strip() == "yes"

        result = registry.approve(args.model_name, args.version, args.by, args.note, confirm)
        if result is None:
            print("not approved")
            return 1
        print(f"approved {result['model_name']} version {result['version']} as "
              f"{result['alias']} (by {result['approved_by']} at {result['approved_at']})")
        return 0
    name = args.model_name or load_params(args.params).track.model_name
    rows = registry.list_versions(name)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_models(rows, name)
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run the pipeline command(s) ``args`` names; returns the exit status."""
    if args.command in ("approve", "models"):
        return run_registry_command(args)
    params = load_cli_params(args)  # bad params stop here, before torch is even imported
    stages = {"run": ("prepare", "train", "evaluate", "gate", "register")}.get(
        args.command, (args.command,))
    if args.command == "run" and not params.track.enabled:
        stages = stages[:-1]
    baseline = getattr(args, "with_baseline", False)
    if baseline:
        args.baseline_report, args.baseline_metrics = (Path(BASELINE["report"]),
                                                       Path(BASELINE["metrics"]))
    if "prepare" in stages:
        from fairat.steps.prepare import prepare_step

        prepare_step(params, args.out if args.command == "prepare" else args.data)
    if baseline:
        _run_baseline(params, args)
    if "train" in stages:
        from fairat.engine.training import TrainPaths
        from fairat.steps.train import train_step

        train_step(params, args.data, TrainPaths(args.model, args.checkpoints, args.metrics,
                                                 args.history), resume=args.resume,
                   checkpoint_url=args.checkpoint_url)
    if "evaluate" in stages:
        from fairat.steps.evaluate import evaluate_step

        evaluate_step(params, args.data, args.model, args.report, args.plot, args.markdown,
                      args.summary, args.metrics)
    if "gate" in stages:
        from fairat.steps.gate import gate_step

        decision = gate_step(params, args.report, args.model, args.gate)
        if getattr(args, "strict", False) and not decision["passed"]:
            return 1
    if "compare" in stages or (baseline and "evaluate" in stages):
        from fairat.steps.compare import compare_step

        compare_step(params, args.report, args.baseline_report,
                     getattr(args, "comparison", None) or LOCAL["comparison"], args.metrics,
                     args.baseline_metrics)
    if "register" in stages:
        from fairat.steps.register import register_step

        register_step(params, args.model, args.report, args.gate, args.metrics, args.data,
                      args.registered, args.plot, args.card,
                      getattr(args, "baseline_report", None),
                      getattr(args, "baseline_metrics", None))
    return 0


def _run_baseline(params: Params, args: argparse.Namespace) -> None:
    """`fairat run --with-baseline`: PGD-AT on the same params, into the baseline's own files."""
    from fairat.config import with_overrides
    from fairat.engine.training import TrainPaths
    from fairat.evidence.comparison import BASELINE_METHOD
    from fairat.steps.evaluate import evaluate_step
    from fairat.steps.train import train_step

    base = with_overrides(params, {"train.method": BASELINE_METHOD})
    files = {key: Path(path) for key, path in BASELINE.items()}
    train_step(base, args.data, TrainPaths(files["model"], files["checkpoints"], files["metrics"],
                                           files["history"]), resume=args.resume)
    evaluate_step(base, args.data, files["model"], files["report"], files["plot"],
                  files["markdown"], files["summary"], files["metrics"])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plugins = plugin_commands()
    if args.command in plugins:  # Kubeflow compile/submit: needs neither torch nor MLflow
        return plugins[args.command].main(args)
    if args.command == "storage":  # S3 push / pull / DVC remote: needs neither torch nor MLflow
        return storage_cli.run(args)
    if args.command == "guard":  # alias guard beside `mlflow server`
        return guard_cli.run(args)
    from fairat.edge.storage import StorageError  # light: boto3 loads on use

    try:
        return run_command(args)
    except (ConfigError, DataError, RegistryError, StorageError, TrainingDiverged, ValueError,
            OSError) as err:  # OSError: a missing input, an unwritable or full output
        print(f"fairat {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fairat {args.command}: interrupted; rerun with --resume to continue training",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
