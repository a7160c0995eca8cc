"""`fairat` command line: a thin front over :mod:`fairat.steps` (argv in, step call, exit code out).

Every command reads the same params file (``params.yaml`` by default); ``-S key=value`` overrides
one value for this invocation (``-S train.method=pgd_at -S train.epochs=3``). Bad values stop the
command at once with a message naming the key.
"""

from __future__ import annotations

import argparse
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
  fairat run       # all three in a row (the default params train on the bundled digits data)
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

    p = sub.add_parser("run", help="prepare, train and evaluate in one go",
                       description="The whole local job with the default output layout.")
    _add_common(p)
    _add_data(p)
    _add_train_outputs(p)
    _add_eval_outputs(p, with_model=False)
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


def run_command(args: argparse.Namespace) -> None:
    # Imported here so `fairat --help` and bad-params errors answer without loading torch.
    from fairat import steps
    from fairat.training import TrainPaths

    params = load_cli_params(args)
    if args.command in ("prepare", "run"):
        steps.prepare_step(params, args.out if args.command == "prepare" else args.data)
    if args.command in ("train", "run"):
        paths = TrainPaths(args.model, args.checkpoints, args.metrics, args.history)
        steps.train_step(params, args.data, paths, resume=args.resume)
    if args.command in ("evaluate", "run"):
        steps.evaluate_step(params, args.data, args.model, args.report, args.plot, args.card)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fairat.data import DataError

    try:
        run_command(args)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as err:
        print(f"fairat {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fairat {args.command}: interrupted; rerun with --resume to continue training",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
