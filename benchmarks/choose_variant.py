"""Choose each method's setting on the VALIDATION split, with the same budget for every method.

Why a module of its own: a contest is fair only when every method gets the same number of
settings tried on the same seeds, and the choice is made by one rule that never reads the test
split. Here a method's variants are the validation cells ``<method>[-<variant>]-seed<N>.json``
under ``<results>/val/``; only variants that have every seed any of the method's variants has
enter (a half-finished variant cannot win on fewer, luckier seeds; ``--seeds`` restricts the
seeds while a study is still running). The rule: the highest mean
over seeds of the weakest class's robust accuracy under ``attack`` (the gate's worst case by
default), ties broken by the class average. The output says how noisy that choice is: per
variant the standard error of its mean, and the paired difference of the chosen variant to the
runner-up on the same seeds with its 95% interval: an interval that contains zero means the
validation could not separate the two.

    python benchmarks/choose_variant.py --results results/digits-contest
    python benchmarks/choose_variant.py --results results/digits-contest --export fairat \
        --out runs/fairat-chosen.yaml     # the chosen setting as a params overlay, for the test phase
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robust_fairness import mean_ci95  # noqa: E402

from fairat.io import write_json_atomic, write_text_atomic  # noqa: E402


def _cells(folder: Path) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """method -> variant -> seed -> cell record."""
    out: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "summary.json":
            continue
        cell = json.loads(path.read_text())
        out.setdefault(cell["method"], {}).setdefault(cell.get("variant") or "", {})[
            cell["seed"]] = cell
    return out


def _stat(cell: dict[str, Any], attack: str, stat: str) -> float:
    return float(cell["eval"][attack]["summary"][stat])


def choose(results: Path, attack: str = "worst_case",
           only_seeds: set[int] | None = None) -> dict[str, Any]:
    """Per method: every complete variant's mean worst class and average (with the standard
    error over seeds), the chosen variant, and its paired difference to the runner-up."""
    out: dict[str, Any] = {"attack": attack, "split": "val", "methods": {}}
    for method, variants in sorted(_cells(results / "val").items()):
        seeds = set.union(*(set(by_seed) for by_seed in variants.values()))
        if only_seeds is not None:
            seeds &= only_seeds
        rows = {}
        for variant, by_seed in variants.items():
            if not seeds or not set(by_seed) >= seeds:
                continue
            worst = [_stat(by_seed[s], attack, "worst") for s in sorted(seeds)]
            average = [_stat(by_seed[s], attack, "average") for s in sorted(seeds)]
            rows[variant] = {
                "worst": statistics.fmean(worst), "average": statistics.fmean(average),
                "worst_se": statistics.stdev(worst) / math.sqrt(len(worst)) if len(worst) > 1
                else None}
        incomplete = sorted(v for v in variants if v not in rows)
        ranked = sorted(rows, key=lambda v: (rows[v]["worst"], rows[v]["average"]), reverse=True)
        entry: dict[str, Any] = {"seeds": sorted(seeds), "variants": rows,
                                 "incomplete": incomplete, "chosen": ranked[0] if ranked else None}
        if len(ranked) > 1:
            a, b = variants[ranked[0]], variants[ranked[1]]
            entry["runner_up"] = ranked[1]
            entry["lead_over_runner_up"] = mean_ci95(
                [_stat(a[s], attack, "worst") - _stat(b[s], attack, "worst") for s in sorted(seeds)])
        out["methods"][method] = entry
    return out


# What a cell sets for itself: a test-phase cell draws its own seed and split, never the
# validation cell's.
PER_CELL = (("data", "seed"), ("train", "seed"), ("evaluate", "seed"), ("evaluate", "split"),
            ("gate", "split"), ("train", "method"))


def chosen_params(results: Path, method: str) -> dict[str, Any]:
    """The params the chosen variant of ``method`` ran with on validation (read from its first
    seed's record), less what each cell sets for itself: the test phase then runs exactly the
    setting validation chose, with no second copy of its knobs to drift."""
    chosen = json.loads((results / "chosen-on-val.json").read_text())
    entry = chosen["methods"].get(method)
    if entry is None or entry.get("chosen") is None:
        raise SystemExit(f"no chosen variant for {method} in {results / 'chosen-on-val.json'}")
    variant, seed = entry["chosen"], entry["seeds"][0]
    tag = f"{method}{'-' + variant if variant else ''}-seed{seed}"
    return record_params(results / "val" / f"{tag}.json")


def record_params(record: Path) -> dict[str, Any]:
    """The params a cell record ran with, less what each cell sets for itself (seed, split,
    method): a setting copied from its record, e.g. the pilot's chosen CIFAR-10 budget."""
    params = json.loads(record.read_text())["params"]
    for section, key in PER_CELL:
        params.get(section, {}).pop(key, None)
    return params


def choice_table(chosen: dict[str, Any]) -> str:
    """Markdown: one row per (method, variant), the chosen one in bold."""
    rows = [f"| method | variant | seeds | worst class ({chosen['attack']}, mean ± se) | average |",
            "|---|---|---|---|---|"]
    for method, entry in chosen["methods"].items():
        for variant, row in sorted(entry["variants"].items(),
                                   key=lambda kv: -kv[1]["worst"]):
            name = variant or "(default)"
            if variant == entry["chosen"]:
                name = f"**{name}**"
            se = "" if row["worst_se"] is None else f" ± {100 * row['worst_se']:.1f}"
            rows.append(f"| {method} | {name} | {len(entry['seeds'])} | "
                        f"{100 * row['worst']:.1f}{se} | {100 * row['average']:.1f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=None,
                        help="study folder; its val/ holds the validation cells")
    parser.add_argument("--attack", default="worst_case")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="only these seeds (default: every seed present)")
    parser.add_argument("--export", metavar="METHOD", default=None,
                        help="write METHOD's chosen setting (from chosen-on-val.json) to --out")
    parser.add_argument("--from-record", type=Path, default=None,
                        help="write this cell record's setting to --out (e.g. a pilot budget)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.from_record:
        import yaml

        if args.out is None:
            parser.error("--from-record needs --out")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # atomic: runners side by side rewrite the same budget while a cell may be reading it
        write_text_atomic(args.out, yaml.safe_dump(record_params(args.from_record), sort_keys=False))
        return 0
    if args.export:
        import yaml

        if args.out is None or args.results is None:
            parser.error("--export needs --results and --out")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, yaml.safe_dump(chosen_params(args.results, args.export),
                                                   sort_keys=False))
        return 0
    if args.results is None:
        parser.error("--results is needed to choose")
    chosen = choose(args.results, args.attack, set(args.seeds) if args.seeds else None)
    write_json_atomic(args.results / "chosen-on-val.json", chosen)
    print(choice_table(chosen))
    for method, entry in chosen["methods"].items():
        lead = entry.get("lead_over_runner_up")
        if lead and lead["low"] is not None:
            print(f"{method}: {entry['chosen'] or '(default)'} over {entry['runner_up'] or '(default)'}"
                  f" by {100 * lead['mean']:+.1f} [{100 * lead['low']:+.1f}, {100 * lead['high']:+.1f}]"
                  + ("  (not separated: the interval holds zero)" if lead["low"] <= 0 <= lead["high"]
                     else ""))
        if entry["incomplete"]:
            print(f"{method}: left out for missing seeds: {', '.join(entry['incomplete'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
