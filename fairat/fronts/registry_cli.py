"""`fairat approve` and `fairat models`: the approver's commands on the MLflow registry.

Loaded only when one of them runs (``fairat.fronts.cli.ON_USE``), so no pipeline stage depends on
this code. Numbers are shown in percent (accuracy) and points (a difference of accuracies).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fairat.errors import RegistryError
from fairat.overlays import load_params_files


def add_parser(sub: Any) -> None:
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
    p.add_argument("--params", action="append", default=None, type=Path, metavar="FILE",
                   help="params file(s) naming the model when none is given, merged in order "
                        "(default: params.yaml)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def percent(value: Any, signed: bool = False) -> str:
    """A fraction (a number or a registry tag's text) for people: ``65.7%``, ``+5.7 pts`` with
    ``signed`` (a difference of two accuracies); ``-`` for a missing or unreadable value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    if number != number:  # NaN
        return "-"
    return f"{100 * number:+.1f} pts" if signed else f"{100 * number:.1f}%"


def _print_models(rows: list[dict[str, Any]], name: str) -> None:
    if not rows:
        print(f"no versions of {name!r} are registered")
        return
    print(f"{name}")
    print(f"{'version':>7}  {'created (UTC)':<16} {'method':<7} {'data':<11} {'aliases':<18} "
          f"{'gate':<6} {'worst':>6} {'class':<10} {'average':>7} {'vs PGD-AT':>9}  approved by")
    print(f"{'':9}(worst: the weakest class's robust accuracy; vs PGD-AT: its lift over the "
          "PGD-AT baseline trained beside it)")
    for r in rows:
        gate = {"true": "passed", "false": "FAILED"}.get(r.get("gate_passed", ""), "?")
        if r.get("gate_informational") == "true":
            gate = "info"
        worst, avg = percent(r.get("worst_class_robust")), percent(r.get("average_robust"))
        # the baseline trained beside it, worst class, in points of accuracy
        lift = percent(r.get("worst_lift_over_baseline"), signed=True)
        print(f"{r['version']:>7}  {r.get('created', '-')[:16]:<16} {r.get('method') or '-':<7} "
              f"{(r.get('data_source') or '-')[:11]:<11} {','.join(r['aliases']) or '-':<18} "
              f"{gate:<6} {worst:>6} {(r.get('worst_class') or '-')[:10]:<10} {avg:>7} "
              f"{lift:>9}  "
              f"{r.get('approved_by') or '-'}")
        if r.get("gate_passed") != "true" and r.get("gate_reasons"):
            for reason in json.loads(r["gate_reasons"]):
                print(f"{'':9}blocked: {reason}")
        if r.get("guard_reverted"):
            print(f"{'':9}guard reverted: {r['guard_reverted']}")
    attested = {r.get("attested") for r in rows}
    from fairat.evidence.attestation import LOCAL_MODE

    print("verdicts: each version's signed gate decision, verified against its logged files"
          if attested <= {"verified", "unverified"} else f"verdicts from tags; {LOCAL_MODE}")


def run(args: argparse.Namespace) -> int:
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
    name = args.model_name or load_params_files(args.params or [Path("params.yaml")]).track.model_name
    rows = registry.list_versions(name)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_models(rows, name)
    return 0
