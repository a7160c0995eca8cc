"""Rendering of an evaluation report for people: the class-wise chart and the Markdown report.

Why apart from the evaluation: the attacks and the counting decide the numbers; this module only
draws them, so a change of presentation can never change a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fairat.engine.evaluation import ATTACK_ORDER
from fairat.io import atomic_path


def present_attacks(report: dict[str, Any]) -> list[str]:
    attacks = report["attacks"]
    return [a for a in ATTACK_ORDER if a in attacks] + [a for a in attacks if a not in ATTACK_ORDER]


def plot_classwise(report: dict[str, Any], png_path: str | Path) -> None:
    """Grouped bar chart: classes on x, one bar per attack; legend gives average and worst class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, attacks = report["class_names"], present_attacks(report)
    width = 0.8 / len(attacks)
    fig, ax = plt.subplots(figsize=(min(40.0, 2 + len(names) * (0.3 + 0.12 * len(attacks))), 4.5))
    for i, attack in enumerate(attacks):
        entry = report["attacks"][attack]
        s = entry["summary"]
        xs = np.arange(len(names)) + (i - (len(attacks) - 1) / 2) * width
        bars = ax.bar(xs, [100 * entry["per_class"][n] for n in names], width,
                      label=f"{attack}: avg {100 * s['average']:.1f}%, "
                            f"worst {100 * s['worst']:.1f}% ({s['worst_class']})")
        ax.axhline(100 * s["average"], color=bars.patches[0].get_facecolor(), ls="--", lw=0.8)
    tilt = len(names) > 10 or max(map(len, names)) * len(names) > 60  # labels would collide
    ax.set_xticks(np.arange(len(names)), names, rotation=35 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Class-wise accuracy, L-inf eps = {report['eps'] * 255:.3g}/255 "
                 f"(dashed: class average)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_comparison(report: dict[str, Any], baseline: dict[str, Any], attack: str,
                    threshold: float | None, png_path: str | Path) -> None:
    """The approver's chart: per class, this model's bar beside the baseline's on the gate's
    ``attack``, and the gate's ``threshold`` (min worst class) as a line. A run the baseline
    cannot be compared with still gets its own bars, and the title says the baseline's are
    missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["class_names"]
    runs = comparison_series(report, baseline, attack)
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(min(40.0, 3 + len(names) * 0.6), 4.5))
    for i, (label, entry) in enumerate(runs):
        s = entry["summary"]
        xs = np.arange(len(names)) + (i - (len(runs) - 1) / 2) * width
        ax.bar(xs, [100 * v for v in entry["values"]], width,
               label=f"{label}: worst {100 * s['worst']:.1f}% ({s['worst_class']}), "
                     f"avg {100 * s['average']:.1f}%")
    if threshold is not None:
        ax.axhline(100 * threshold, color="crimson", lw=1.2,
                   label=f"gate: weakest class must reach {100 * threshold:.1f}%")
    tilt = len(names) > 10 or max(map(len, names)) * len(names) > 60
    ax.set_xticks(np.arange(len(names)), names, rotation=35 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_ylabel(f"{attack} robust accuracy (%)")
    ax.set_ylim(0, 100)
    missing = "" if len(runs) == 2 else " (no comparable baseline numbers)"
    ax.set_title(f"Class-wise {attack} accuracy against the baseline, L-inf eps = "
                 f"{report['eps'] * 255:.3g}/255{missing}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def comparison_series(report: dict[str, Any], baseline: dict[str, Any], attack: str,
                      ) -> list[tuple[str, dict[str, Any]]]:
    """(legend label, {values per class in the model's class order, summary}) for this model and
    the baseline, each only when its report has ``attack`` for the same classes."""
    names = report["class_names"]
    out = []
    for label, r in ((_method(report, "this model"), report),
                     (_method(baseline, "baseline") + " (baseline)", baseline)):
        entry = r.get("attacks", {}).get(attack)
        if entry is not None and r.get("class_names") == names:
            out.append((label, {"values": [entry["per_class"][n] for n in names],
                                "summary": entry["summary"]}))
    return out


def _method(report: dict[str, Any], default: str) -> str:
    config = (report.get("provenance") or {}).get("train_config") or {}
    return str((config.get("train") or {}).get("method") or default)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def report_markdown(report: dict[str, Any]) -> str:
    """Model-card Markdown: consistency warnings, per-class table, summary rows, provenance."""
    names, attacks = report["class_names"], present_attacks(report)
    lines = ["# Class-wise robustness report", "",
             f"L-inf eps = {report['eps'] * 255:.3g}/255 ({report['eps']:.5f}); "
             f"accuracy in % per class (robust = correct on the clean and the attacked input).", ""]
    lines += ["## Consistency", ""]
    lines += ([f"- **{w['severity'].upper()}**: {_cell(w['message'])}"
               for w in report["consistency"]]
              or ["No consistency warnings: AutoAttack found every adversarial example PGD found."])
    lines += ["", "## Accuracy by class (%)", "",
              "| class | n | " + " | ".join(attacks) + " |",
              "|---|---:|" + "---:|" * len(attacks)]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    for name in names:
        row = [pct(report["attacks"][a]["per_class"][name]) for a in attacks]
        lines.append(f"| {_cell(name)} | {report['examples_per_class'][name]} | " + " | ".join(row)
                     + " |")
    summ = [report["attacks"][a]["summary"] for a in attacks]
    lines.append("| **average** | | " + " | ".join(pct(s["average"]) for s in summ) + " |")
    lines.append("| **worst** | | " + " | ".join(f"{pct(s['worst'])} ({_cell(s['worst_class'])})"
                                                  for s in summ) + " |")
    lines.append("| **gap** | | " + " | ".join(pct(s["gap"]) for s in summ) + " |")
    n_all = sum(report["examples_per_class"].values())
    subset = [a for a in attacks if report["attacks"][a]["n"] != n_all]
    if subset:
        lines += ["", f"Columns {', '.join(subset)} cover a per-class subset of the examples "
                      f"(n = {', '.join(str(report['attacks'][a]['n']) for a in subset)}; "
                      "per-class counts in the JSON report)."]
    lines += ["", "## Attacks", ""]
    for a in attacks:
        entry, secs = report["attacks"][a], report["seconds"].get(a)
        extra = f", {secs:.1f} s" if secs is not None else ""
        lines.append(f"- **{a}**: {entry['n']} examples{extra}; settings `{entry['settings']}`")
    lines += ["", "## Provenance", "", "| key | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(report["provenance"].items())]
    return "\n".join(lines) + "\n"
