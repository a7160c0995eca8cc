"""Robust-fairness study: PGD-AT vs TRADES vs FairAT under one budget, cell by cell.

One command runs one (method, seed) cell: prepare the shared data once, train (resumable from the
cell's last checkpoint), evaluate class by class, and write ``<results>/<tag>.json``. Another
aggregates whatever cells exist into a table and charts. Cells evaluated on the validation split
(``--split val``) are for choosing FairAT's knobs; only ``--split test`` cells enter the final table.

    python benchmarks/robust_fairness.py cell --params params.yaml --params studies/cifar10-cpu.yaml --method fairat --seed 0
    python benchmarks/robust_fairness.py reevaluate --params params.yaml --params studies/cifar10-cpu.yaml --method pgd_at --seed 0
    python benchmarks/robust_fairness.py aggregate --results results/cpu --figures docs/figures
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fairat.config import Params, to_dict, with_overrides
from fairat.io import write_json_atomic
from fairat.overlays import load_params_files

METHODS = ("pgd_at", "trades", "fairat", "wat", "frl", "cfa", "dafa", "random_copies")


def cell_tag(method: str, seed: int, split: str, variant: str) -> str:
    base = f"{method}-seed{seed}" if not variant else f"{method}-{variant}-seed{seed}"
    return base if split == "test" else f"val/{base}"


def cell_params(params: Params, method: str, seed: int, variant: str) -> tuple[Params, str]:
    """The params a (method, seed) cell runs with, and its tag: one place for cell and reevaluate."""
    params = with_overrides(params, {"train.method": method, "train.seed": seed,
                                     "evaluate.seed": seed})
    return params, cell_tag(method, seed, params.evaluate.split, variant)


def run_cell(params: Params, method: str, seed: int, work: Path, results: Path,
             variant: str = "") -> dict[str, Any]:
    """Train and evaluate one cell; returns (and writes atomically) its result record."""
    from fairat.fronts.cli import run_stages

    params, tag = cell_params(params, method, seed, variant)
    data_dir = work / "data"
    cell = work / tag
    files = {"data": data_dir, "model": cell / "model.pt", "checkpoints": cell / "checkpoints",
             "metrics": cell / "train.json", "history": cell / "history.csv",
             "report": cell / "eval.json", "plot": cell / "eval.png"}
    def file(stage: Any, key: str) -> Path | None:  # no Markdown, no DVC summary, no MLflow run
        return None if (stage.command, key) == ("evaluate", "metrics") else files.get(key)

    load_start = _one_minute_load()
    t0 = time.perf_counter()
    _ensure_prepared(params, data_dir)
    t1 = time.perf_counter()
    # the pipeline's stages (fairat/stages.py) up to the evaluation; the JSON is the record
    summary, = run_stages(params, ["train"], file, resume=True, track=False)
    t2 = time.perf_counter()
    report, = run_stages(params, ["evaluate"], file)
    t3 = time.perf_counter()
    record = {
        "tag": tag, "method": method, "seed": seed, "variant": variant,
        "split": params.evaluate.split, "params": to_dict(params),
        "train": {"epochs": summary.epochs, "chosen_epoch": summary.chosen_epoch,
                  "chosen_by": summary.chosen_by, "seconds_this_session": summary.seconds,
                  "examples_per_second": summary.examples_per_second,
                  # every session's time and where it ran: what the paired cost ratio uses
                  "seconds_all_sessions": summary.training.get("seconds"),
                  "cpu_seconds_all_sessions": summary.training.get("cpu_seconds"),
                  "sessions": summary.training.get("sessions"),
                  "machine": summary.training.get("machine"),
                  "history": summary.history},
        **_eval_fields(report),
        "wall_seconds": {"prepare": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2},
        # 1-minute load at start and end: above the core count, the cell shared the machine
        "load_average": {"start": load_start, "end": _one_minute_load()},
    }
    write_json_atomic(results / f"{tag}.json", record)
    return record


def _one_minute_load() -> float | None:
    from fairat.provenance import load_average

    return (load_average() or [None])[0]


def train_cost(cell: dict[str, Any]) -> tuple[float | None, str | None]:
    """(training seconds over all sessions, the machine they ran on) of a cell record. Records
    made before cells recorded sessions give the last session's wall time and no machine."""
    train = cell.get("train", {})
    if "seconds_all_sessions" in train:
        return train["seconds_all_sessions"], train.get("machine")
    return cell["wall_seconds"]["train"], None


def pair_cost(mine: dict[str, Any], theirs: dict[str, Any]) -> tuple[float | None, str]:
    """(train-time ratio of two cells, what was timed). CPU seconds of the training process when
    both cells recorded them: with one thread a cell's CPU time barely moves when other work
    shares the cores, while its wall time grows with the load (a cell beside the test suite is
    not a costlier method). Otherwise (a GPU's cells, whose host CPU time is not their cost, or
    records from before CPU time was kept) wall seconds. None when the machines differ or a time
    is missing: two CPUs' speeds are no method's cost."""
    (wall_m, where_m), (wall_t, where_t) = train_cost(mine), train_cost(theirs)
    if where_m != where_t:
        return None, "other machines"
    cpu_m = mine.get("train", {}).get("cpu_seconds_all_sessions")
    cpu_t = theirs.get("train", {}).get("cpu_seconds_all_sessions")
    if cpu_m and cpu_t and str(where_m).startswith("cpu"):
        return cpu_m / cpu_t, "cpu"
    return (wall_m / wall_t if wall_m is not None and wall_t else None), "wall"


def _ensure_prepared(params: Params, data_dir: Path) -> None:
    """Prepare the study's data into ``data_dir`` once (every cell of the study shares it), and
    refuse a folder prepared with other data params."""
    from fairat.engine.data import MANIFEST_NAME
    from fairat.fronts.cli import run_stages

    if not (data_dir / MANIFEST_NAME).exists():
        run_stages(params, ["prepare"],
                   lambda stage, key: data_dir if key == "data" else None)
    _check_prepared(params, data_dir)


def _check_prepared(params: Params, data_dir: Path) -> None:
    from fairat.engine.data import MANIFEST_NAME

    manifest = json.loads((data_dir / MANIFEST_NAME).read_text())
    if manifest["config"] != to_dict(params.data):
        raise ValueError(f"{data_dir} was prepared with other data params; use another --work")


def _eval_fields(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "eval": {name: {"per_class": a["per_class"], "summary": a["summary"], "n": a["n"],
                        "settings": a["settings"]} for name, a in report["attacks"].items()},
        "consistency": report["consistency"], "eval_seconds": report["seconds"],
        "provenance": report["provenance"],
    }


def reevaluate_cell(params: Params, method: str, seed: int, work: Path, results: Path,
                    variant: str = "", into: Path | None = None) -> dict[str, Any]:
    """Evaluate a finished cell's model again under changed ``evaluate`` params, training untouched.

    Why: when the study's evaluation protocol changes (e.g. a smaller stratified subset so that
    every cell fits its time budget), cells already trained must be measured the same way as new
    ones without paying for training again. Refuses unless the model file is byte-identical to the
    one the record was made from, and keeps the previous evaluation's settings and summaries in
    ``reevaluated`` so the change stays visible. With ``into``, the new record goes to
    ``into/<tag>.json`` and the cell's own record is left alone (e.g. standard AutoAttack on a
    subset, kept out of the main table).
    """
    from fairat.steps import evaluate
    from fairat.io import sha256_file

    params, tag = cell_params(params, method, seed, variant)
    result_file, cell = results / f"{tag}.json", work / tag
    out_file = result_file if into is None else into / f"{tag}.json"
    if not result_file.exists():
        raise FileNotFoundError(f"{result_file} does not exist: run the cell first")
    old = json.loads(result_file.read_text())
    model = cell / "model.pt"
    recorded = old["provenance"].get("model_sha256")
    if not model.exists() or sha256_file(model) != recorded:
        raise ValueError(f"{model} is missing or not the model {result_file} was made from "
                         f"(sha256 {recorded}); re-run the cell instead")
    if old["params"]["evaluate"] == to_dict(params.evaluate):
        raise ValueError(f"{result_file} was already evaluated with these evaluate params")
    # a later session's work folder starts empty (the study runner copies a kept model in)
    _ensure_prepared(params, work / "data")
    t0 = time.perf_counter()
    extra = "" if into is None else f"-{into.name}"
    report = evaluate.evaluate_step(params, work / "data", model, cell / f"eval{extra}.json",
                                 cell / f"eval{extra}.png")
    record = {**old, **_eval_fields(report)}
    record["params"] = {**old["params"], "evaluate": to_dict(params.evaluate)}
    record["wall_seconds"] = {**old["wall_seconds"], "evaluate": time.perf_counter() - t0}
    record["reevaluated"] = {
        "previous_evaluate": old["params"]["evaluate"],
        "previous_eval_wall_seconds": old["wall_seconds"]["evaluate"],
        "previous_summaries": {name: a["summary"] for name, a in old["eval"].items()},
        "previous_git_commit": old["provenance"].get("git_commit"),
    }
    write_json_atomic(out_file, record)
    return record


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1
            else 0.0, "n": len(values)}


def _is_cell(path: Path) -> bool:
    """A cell record is ``<tag>-seed<N>.json``; the folder also holds the summary and the
    validation choice (``chosen-on-val.json``), which are not cells."""
    return re.fullmatch(r".+-seed\d+", path.stem) is not None


def aggregate(results: Path, split: str = "test") -> dict[str, Any]:
    """Mean and spread over seeds, per method and attack, from every cell file present."""
    folder = results if split == "test" else results / "val"
    cells = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
             if _is_cell(p)]
    table: dict[str, Any] = {}
    for cell in cells:
        key = cell["method"] if not cell.get("variant") else f"{cell['method']}-{cell['variant']}"
        table.setdefault(key, []).append(cell)
    out: dict[str, Any] = {"split": split, "cells": [c["tag"] for c in cells], "methods": {}}
    for key, group in table.items():
        entry: dict[str, Any] = {"seeds": sorted(c["seed"] for c in group)}
        for attack in group[0]["eval"]:
            summaries = [c["eval"][attack]["summary"] for c in group if attack in c["eval"]]
            per_class = [c["eval"][attack]["per_class"] for c in group if attack in c["eval"]]
            entry[attack] = {
                "average": _mean_sd([s["average"] for s in summaries]),
                "worst": _mean_sd([s["worst"] for s in summaries]),
                "gap": _mean_sd([s["gap"] for s in summaries]),
                "per_class_mean": {k: statistics.fmean(pc[k] for pc in per_class)
                                   for k in per_class[0]},
            }
        entry["train_wall_seconds"] = _mean_sd([c["wall_seconds"]["train"] for c in group])
        entry["eval_wall_seconds"] = _mean_sd([c["wall_seconds"]["evaluate"] for c in group])
        entry["train_examples_per_second"] = _mean_sd([c["train"]["examples_per_second"]
                                                       for c in group])
        out["methods"][key] = entry
    side = folder / "autoattack-standard"
    out["autoattack_standard"] = {
        c["tag"]: {name: {**c["eval"][name]["summary"], "n": c["eval"][name]["n"]}
                   for name in ("clean", "pgd", "cw", "autoattack") if name in c["eval"]}
        for c in (json.loads(p.read_text()) for p in sorted(side.glob("*.json")))}
    return out


# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom (beyond: the normal 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci95(values: list[float]) -> dict[str, float]:
    """Mean, sd and the 95% t-interval of the mean (the interval is None below two values)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "sd": 0.0, "n": n, "low": None, "high": None}
    sd = statistics.stdev(values)
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half}


def paired_differences(results: Path, baseline: str = "pgd_at", attack: str = "autoattack",
                       split: str = "test") -> dict[str, Any]:
    """Per method, the difference to ``baseline`` on the same seed (same data split, same
    initial draw), for the worst class and the class average under ``attack``; mean, sd and
    95% interval over the seeds both have. Pairing removes the seed-to-seed spread that both
    methods share, which on 15 validation images per class is most of the spread. The cost is
    the ratio of training times on the same seed; its median resists a cell that shared the
    machine with other work. A seed counts towards the cost only when both cells record one and
    the same machine (records from before machines were recorded: when neither does), so a
    ratio of two CPUs is never reported as a method's cost."""
    folder = results if split == "test" else results / "val"
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json")):
        if not _is_cell(path):
            continue
        cell = json.loads(path.read_text())
        key = cell["method"] if not cell.get("variant") else f"{cell['method']}-{cell['variant']}"
        if attack in cell["eval"]:
            cells.setdefault(key, {})[cell["seed"]] = cell
    base = cells.get(baseline, {})
    out: dict[str, Any] = {"baseline": baseline, "attack": attack, "methods": {}}
    for key, by_seed in cells.items():
        seeds = sorted(set(by_seed) & set(base))
        if key == baseline or not seeds:
            continue
        def diff(stat: str) -> list[float]:
            return [by_seed[s]["eval"][attack]["summary"][stat]
                    - base[s]["eval"][attack]["summary"][stat] for s in seeds]
        costs = [pair_cost(by_seed[s], base[s]) for s in seeds]
        cost = [ratio for ratio, _ in costs if ratio is not None]
        timed = sorted({what for ratio, what in costs if ratio is not None})
        out["methods"][key] = {"seeds": seeds, "worst": mean_ci95(diff("worst")),
                               "average": mean_ci95(diff("average")),
                               "worst_values": diff("worst"), "average_values": diff("average"),
                               "train_time_ratio": ({**mean_ci95(cost),
                                                     "median": statistics.median(cost),
                                                     "timed": "+".join(timed)}
                                                    if cost else {"n": 0, "median": None})}
    comparisons = len(out["methods"])
    out["simultaneous_over"] = comparisons
    for entry in out["methods"].values():  # the per-seed values stay: the lift figure's dots
        for stat in ("worst", "average"):
            entry[f"{stat}_simultaneous"] = simultaneous_ci95(entry[f"{stat}_values"],
                                                              comparisons)
    return out


def simultaneous_ci95(values: list[float], comparisons: int) -> dict[str, float | None]:
    """The 95% interval of the mean widened for ``comparisons`` methods compared with the same
    baseline (Bonferroni: each at 1 - 0.05 / comparisons), so that all of them hold together:
    with eight methods, one plain 95% interval in eight excludes zero by chance more often than
    one in twenty."""
    from scipy.stats import t

    n = len(values)
    if n < 2 or comparisons < 1:
        return {"low": None, "high": None}
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t.ppf(1 - 0.025 / comparisons, n - 1) * sd / math.sqrt(n)
    return {"low": mean - half, "high": mean + half}


def paired_table(paired: dict[str, Any], summary: dict[str, Any]) -> str:
    """Markdown: each method's paired difference to the baseline (points, 95% interval)."""
    def fmt(m: dict[str, float]) -> str:
        ci = "" if m["low"] is None else f" [{100 * m['low']:+.1f}, {100 * m['high']:+.1f}]"
        return f"{100 * m['mean']:+.1f}{ci}"
    def cost(entry: dict[str, Any]) -> str:
        ratio, n = entry["train_time_ratio"], len(entry["seeds"])
        if ratio["median"] is None:
            return "n/a (other machines)"
        timed = {"cpu": " (CPU s)", "cpu+wall": " (CPU s, some wall s)"}.get(ratio.get("timed"), "")
        return (f"{ratio['median']:.2f}{timed}"
                + ("" if ratio["n"] == n else f" ({ratio['n']} of {n})"))

    def together(m: dict[str, float | None]) -> str:
        return "" if m["low"] is None else f"[{100 * m['low']:+.1f}, {100 * m['high']:+.1f}]"

    rows = [f"| method | seeds | worst class vs {paired['baseline']} (95% CI) | "
            f"average vs {paired['baseline']} (95% CI) | worst class, simultaneous 95% over "
            f"{paired.get('simultaneous_over', 1)} methods | train time x (median, same machine) |",
            "|---|---|---|---|---|---|"]
    for method in ordered_methods(summary):
        entry = paired["methods"].get(method)
        if entry is None:
            continue
        rows.append(f"| {method} | {len(entry['seeds'])} | {fmt(entry['worst'])} | "
                    f"{fmt(entry['average'])} | {together(entry['worst_simultaneous'])} | "
                    f"{cost(entry)} |")
    return "\n".join(rows) + "\n"


def per_class_table(summary: dict[str, Any], attack: str = "autoattack") -> str:
    """Markdown: per-class accuracy under ``attack``, mean over seeds, one row per method."""
    methods = [m for m in ordered_methods(summary) if attack in summary["methods"][m]]
    if not methods:
        return ""
    classes = list(summary["methods"][methods[0]][attack]["per_class_mean"])
    rows = ["| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for m in methods:
        pc = summary["methods"][m][attack]["per_class_mean"]
        rows.append(f"| {m} | " + " | ".join(f"{100 * pc[c]:.1f}" for c in classes) + " |")
    return "\n".join(rows) + "\n"


def ordered_methods(summary: dict[str, Any]) -> list[str]:
    """Baselines first, then FairAT variants: the order every table and chart uses."""
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(summary["methods"], key=lambda k: (rank.get(k.split("-")[0], len(rank)), k))


def markdown_table(summary: dict[str, Any], attacks: tuple[str, ...]) -> str:
    """Rows: methods; columns: average / worst per attack as mean +- sd over seeds (percent)."""
    head = "| method | seeds | " + " | ".join(f"{a} avg | {a} worst" for a in attacks) + " |"
    rule = "|" + "---|" * (2 + 2 * len(attacks))
    rows = [head, rule]
    for method in ordered_methods(summary):
        entry = summary["methods"][method]
        cells = []
        for a in attacks:
            if a not in entry:
                cells += ["-", "-"]
                continue
            for stat in ("average", "worst"):
                m = entry[a][stat]
                spread = f" ± {100 * m['sd']:.1f}" if m["n"] > 1 else ""
                cells.append(f"{100 * m['mean']:.1f}{spread}")
        rows.append(f"| {method} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _save_png(fig: Any, png: Path) -> None:
    """Write a chart atomically (a reader never sees half a PNG) and free the figure."""
    import matplotlib.pyplot as plt

    from fairat.io import atomic_path

    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_per_class(summary: dict[str, Any], attack: str, png: Path) -> None:
    """Grouped bars: per-class robust accuracy (mean over seeds) of every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ordered_methods(summary) if attack in summary["methods"][m]]
    if not methods:
        return
    classes = list(summary["methods"][methods[0]][attack]["per_class_mean"])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [100 * summary["methods"][method][attack]["per_class_mean"][c] for c in classes]
        seeds = len(summary["methods"][method]["seeds"])
        ax.bar([k + i * width for k in range(len(classes))], values, width,
               label=f"{method} ({seeds} seed{'s' if seeds > 1 else ''})")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(classes))], classes)
    ax.set_ylabel(f"{attack} accuracy (%)")
    ax.set_title(f"Per-class {attack} accuracy, mean over seeds ({summary['split']} split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, png)


def plot_lifts(paired: dict[str, Any], summary: dict[str, Any], png: Path) -> None:
    """The study at a glance: per method, the paired worst-class and average lift over the
    baseline (points), one dot per seed, the mean with its 95% interval (thick) and the interval
    corrected for the methods compared (thin). A dot is one seed's pair of models, so the reader
    sees the spread the interval summarises, and zero is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ordered_methods(summary) if m in paired["methods"]]
    if not methods:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(methods) + 1.6), sharey=True)
    for ax, stat, title in zip(axes, ("worst", "average"), ("weakest class", "class average")):
        for row, method in enumerate(methods):
            entry = paired["methods"][method]
            values = [100 * v for v in entry.get(f"{stat}_values", [])]
            jitter = [row + 0.18 * ((k % 5) - 2) / 2 for k in range(len(values))]
            ax.scatter(values, jitter, s=12, color="0.55", zorder=2)
            m, simul = entry[stat], entry.get(f"{stat}_simultaneous") or {}
            if simul.get("low") is not None:
                ax.hlines(row, 100 * simul["low"], 100 * simul["high"], color="tab:blue", lw=1)
            if m.get("low") is not None:
                ax.hlines(row, 100 * m["low"], 100 * m["high"], color="tab:blue", lw=4)
            ax.plot(100 * m["mean"], row, "o", color="black", zorder=3)
        ax.axvline(0, color="tab:red", lw=1)
        ax.set_xlabel(f"{title}: points over {paired['baseline']} ({paired['attack']})")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(methods)),
                       [f"{m} ({len(paired['methods'][m]['seeds'])} seeds)" for m in methods])
    axes[0].invert_yaxis()
    fig.suptitle(f"Paired lift over {paired['baseline']} ({summary['split']} split): dots = seeds, "
                 "thick = 95% interval, thin = corrected for the methods compared", fontsize=9)
    fig.tight_layout()
    _save_png(fig, png)


def plot_hard_examples(results: Path, png: Path, variant: str = "") -> None:
    """FairAT's hard examples per class over the epochs (first seed present of that variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted(results.glob(f"fairat-{variant + '-' if variant else ''}seed*.json"))
    if not cells:
        return
    cell = json.loads(cells[0].read_text())
    history = (cell.get("train") or {}).get("history") or []
    if not history or "hard_per_class" not in history[0]:
        print(f"no hard-example history in {cells[0].name}: no chart", file=sys.stderr)
        return
    classes = list(history[0]["hard_per_class"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for c in classes:
        ax.plot([r["epoch"] for r in history], [r["hard_per_class"][c] for r in history], label=c)
    ax.set_xlabel("epoch")
    ax.set_ylabel("hard examples")
    ax.set_title(f"FairAT hard examples per class ({cell['tag']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save_png(fig, png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("cell", "train + evaluate one (method, seed) cell"),
                       ("reevaluate", "evaluate a finished cell again under changed evaluate "
                        "params (training untouched)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--params", type=Path, action="append", required=True,
                       help="params file; repeat to merge overlays in order (fairat.overlays)")
        c.add_argument("--method", choices=METHODS, required=True)
        c.add_argument("--seed", type=int, required=True)
        c.add_argument("--variant", default="", help="name for a knob setting tried on validation")
        c.add_argument("--work", type=Path, default=Path("runs/study-cpu"),
                       help="data, checkpoints and per-cell outputs (not committed)")
        c.add_argument("--results", type=Path, default=Path("results/cpu"),
                       help="one JSON per finished cell (committed)")
        c.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    c.add_argument("--into", type=Path, default=None,
                   help="write the new record to INTO/<tag>.json, leaving the cell's record alone")
    a = sub.add_parser("aggregate", help="table over the cells present")
    a.add_argument("--results", type=Path, default=Path("results/cpu"))
    a.add_argument("--split", choices=("test", "val"), default="test")
    a.add_argument("--baseline", default="pgd_at",
                   help="the method (tag) every other is paired with, e.g. random_copies for "
                        "\"aimed copies or just more copies\"; other than pgd_at, the summary "
                        "goes to summary-vs-<baseline>.json")
    a.add_argument("--figures", type=Path, default=None,
                   help="folder for the lift, per-class and hard-example charts (e.g. "
                        "docs/figures)")
    args = parser.parse_args(argv)
    if args.command in ("cell", "reevaluate"):
        params = load_params_files(args.params, args.overrides)
        if args.command == "cell":
            record = run_cell(params, args.method, args.seed, args.work, args.results,
                              args.variant)
        else:
            record = reevaluate_cell(params, args.method, args.seed, args.work, args.results,
                                     args.variant, args.into)
        print(json.dumps(record["wall_seconds"]), flush=True)
        return 0
    summary = aggregate(args.results, args.split)
    summary["paired"] = paired_differences(args.results, baseline=args.baseline,
                                           split=args.split)
    folder = args.results if args.split == "test" else args.results / "val"
    name = "summary.json" if args.baseline == "pgd_at" else f"summary-vs-{args.baseline}.json"
    write_json_atomic(folder / name, summary)
    print(markdown_table(summary, ("clean", "pgd", "cw", "autoattack")))
    if summary["paired"]["methods"]:
        print(paired_table(summary["paired"], summary))
    print(per_class_table(summary))
    for tag, attacks in summary["autoattack_standard"].items():
        print(f"standard AutoAttack, {tag}: " + ", ".join(
            f"{name} {100 * a['average']:.1f} / {100 * a['worst']:.1f} ({a['worst_class']}, n={a['n']})"
            for name, a in attacks.items()))
    if args.figures:
        for attack in ("autoattack", "pgd"):
            plot_per_class(summary, attack, args.figures / f"per_class_{attack}_{args.split}.png")
        plot_lifts(summary["paired"], summary,
                   args.figures / f"lifts_vs_{args.baseline}_{args.split}.png")
        for key in summary["methods"]:
            if key.startswith("fairat"):
                plot_hard_examples(folder, args.figures / f"{key}_hard_examples.png",
                                   key.removeprefix("fairat").removeprefix("-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
