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

import yaml

from fairat.config import ConfigError, Params, load_params, with_overrides

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

`dvc repro` runs the same steps as a cached pipeline (dvc.yaml). MLflow's store is
MLFLOW_TRACKING_URI when set, else sqlite:///mlruns/mlflow.db in the current folder.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", type=Path,
                   help="params YAML with sections data/model/train/evaluate (default: %(default)s)")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="override one param, e.g. -S train.method=pgd_at (repeatable; YAML values)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="data/prepared", type=Path,
                   help="prepared-data folder written by `fairat prepare` (default: %(default)s)")


def _add_train_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/model.pt", type=Path,
                   help="where the selected model is written (default: %(default)s)")
    p.add_argument("--checkpoints", default="models/checkpoints", type=Path,
                   help="per-epoch checkpoints last.pt / best.pt (default: %(default)s)")
    p.add_argument("--metrics", default="metrics/train.json", type=Path,
                   help="training summary JSON (default: %(default)s)")
    p.add_argument("--history", default="plots/train.csv", type=Path,
                   help="per-epoch metrics CSV (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <checkpoints>/last.pt if it exists (same params required)")


def _add_eval_outputs(p: argparse.ArgumentParser, with_model: bool) -> None:
    if with_model:
        p.add_argument("--model", default="models/model.pt", type=Path,
                       help="model file written by `fairat train` (default: %(default)s)")
    p.add_argument("--report", default="metrics/eval.json", type=Path,
                   help="class-wise report JSON (default: %(default)s)")
    p.add_argument("--plot", default="plots/eval_classwise.png", type=Path,
                   help="per-class bar chart PNG (default: %(default)s)")
    p.add_argument("--card", default="reports/model_card.md", type=Path,
                   help="markdown model card (default: %(default)s)")
    p.add_argument("--summary", default="metrics/eval_summary.json", type=Path,
                   help="average / worst / gap per attack, the DVC metrics (default: %(default)s)")


def _add_gate_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gate", default="metrics/gate.json", type=Path,
                   help="fairness-gate decision JSON (default: %(default)s)")


def _add_register_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registered", default="metrics/registered.json", type=Path,
                   help="registered model name / version / alias JSON (default: %(default)s)")


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

    p = sub.add_parser("approve", help="promote a registered version to alias `champion`",
                       description="Refused, with the reasons, unless the version's tags show a "
                                   "passed fairness gate on complete evidence.")
    p.add_argument("model_name", help="registered model name (params `track.model_name`)")
    p.add_argument("version", type=int, help="model version number")
    p.add_argument("--by", required=True, help="who approves (recorded as a tag)")
    p.add_argument("--note", default="", help="why (recorded as a tag)")

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
    p.add_argument("--out", default="data/prepared", type=Path,
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

    p = sub.add_parser("run", help="prepare, train, evaluate, gate and register in one go",
                       description="The whole local job with the default output layout "
                                   "(register only when params `track.enabled`).")
    _add_common(p)
    _add_data(p)
    _add_train_outputs(p)
    _add_eval_outputs(p, with_model=False)
    _add_gate_outputs(p)
    _add_register_outputs(p)
    _add_registry_commands(sub)
    from fairat.kubeflow import add_parser as add_pipeline_parser  # light: kfp loads on use

    add_pipeline_parser(sub)
    from fairat import storage_cli  # light: boto3 loads on use

    storage_cli.add_parser(sub)
    return parser


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3"]`` -> ``{"train.epochs": 3}`` (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-S {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"-S {item!r}: value is not valid YAML: {err}") from None
    return out


def load_cli_params(args: argparse.Namespace) -> Params:
    params = load_params(args.params)
    overrides = parse_overrides(args.overrides)
    return with_overrides(params, overrides) if overrides else params


def _print_models(rows: list[dict[str, Any]], name: str) -> None:
    if not rows:
        print(f"no versions of {name!r} are registered")
        return
    print(f"{'version':>7}  {'aliases':<20} {'gate':<6} {'worst':>6} {'class':<12} "
          f"{'average':>7}  approved by")
    for r in rows:
        gate = {"true": "passed", "false": "FAILED"}.get(r.get("gate_passed", ""), "?")
        worst, avg = r.get("worst_class_robust") or "-", r.get("average_robust") or "-"
        print(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<20} {gate:<6} "
              f"{worst[:6]:>6} {r.get('worst_class', '-')[:12]:<12} {avg[:7]:>7}  "
              f"{r.get('approved_by', '-')}")
        if r.get("gate_passed") != "true" and r.get("gate_reasons"):
            for reason in json.loads(r["gate_reasons"]):
                print(f"{'':9}blocked: {reason}")


def run_registry_command(args: argparse.Namespace) -> int:
    from fairat import registry

    if args.command == "approve":
        result = registry.approve(args.model_name, args.version, args.by, args.note)
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
    from fairat import steps
    from fairat.training import TrainPaths

    stages = {"run": ("prepare", "train", "evaluate", "gate", "register")}.get(
        args.command, (args.command,))
    if args.command == "run" and not params.track.enabled:
        stages = stages[:-1]
    if "prepare" in stages:
        steps.prepare_step(params, args.out if args.command == "prepare" else args.data)
    if "train" in stages:
        paths = TrainPaths(args.model, args.checkpoints, args.metrics, args.history)
        steps.train_step(params, args.data, paths, resume=args.resume)
    if "evaluate" in stages:
        steps.evaluate_step(params, args.data, args.model, args.report, args.plot, args.card,
                            args.summary)
        metrics = getattr(args, "metrics", Path("metrics/train.json"))
        steps.track_evaluation_step(params, metrics, args.report, [args.plot, args.card])
    if "gate" in stages:
        decision = steps.gate_step(params, args.report, args.model, args.gate)
        if getattr(args, "strict", False) and not decision["passed"]:
            return 1
    if "register" in stages:
        steps.register_step(params, args.model, args.report, args.gate, args.metrics, args.data,
                            args.registered, args.plot, args.card)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pipeline":  # Kubeflow compile/submit: needs neither torch nor MLflow
        from fairat.kubeflow import main as pipeline_main

        return pipeline_main(args)
    if args.command == "storage":  # S3 push / pull / DVC remote: needs neither torch nor MLflow
        from fairat import storage_cli

        return storage_cli.run(args)
    from fairat.data import DataError
    from fairat.registry import RegistryError

    try:
        return run_command(args)
    except (ConfigError, DataError, RegistryError, ValueError, FileNotFoundError) as err:
        print(f"fairat {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fairat {args.command}: interrupted; rerun with --resume to continue training",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
