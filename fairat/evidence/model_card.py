"""The model card an approver reads: the sections of Mitchell et al., *Model Cards for Model
Reporting* (FAT* 2019), filled from the run's own files.

Why written after the gate: the card states the verdict, its thresholds and every reason, so the
person who approves a version reads the same decision the registry acts on. Everything here is a
pure function of dicts (params, report, gate decision, data manifest, training summary, an optional
baseline and registration), so the CLI, DVC and Kubeflow all write the same card.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from fairat.engine.methods import registry
from fairat.evidence.report import present_attacks
from fairat.evidence.study import difference_noise

CARD_SECTIONS = ("Model details", "Intended use", "Out-of-scope use", "Training data",
                 "Evaluation data", "Metrics", "Fairness gate", "Comparison with a baseline",
                 "Limitations", "Provenance")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _counts_row(counts: dict[str, int]) -> str:
    return ", ".join(f"{c} {n}" for c, n in counts.items())


def verdict_line(decision: dict[str, Any]) -> str:
    """``PASSED`` / ``BLOCKED`` / ``INFORMATIONAL`` with the measured worst class and average."""
    m = decision.get("measured") or {}
    word = ("INFORMATIONAL (never a candidate)" if decision.get("informational")
            else "PASSED" if decision.get("passed") else "BLOCKED")
    if not m:
        return f"{word}: no measured numbers"
    return (f"{word}: worst class {m.get('worst_class')} {_pct(m.get('worst'))}, average "
            f"{_pct(m.get('average'))} ({decision.get('attack')} robust accuracy)")


def summary_text(decision: dict[str, Any], card_uri: str | None) -> str:
    """The model-version description: what the MLflow version page shows an approver first."""
    lines = [f"Fairness gate {verdict_line(decision)}."]
    reasons = decision.get("reasons") or []
    if reasons:
        lines.append("Blocked because: " + "; ".join(reasons[:3])
                     + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "") + ".")
    if card_uri:
        lines.append(f"Model card: {card_uri}")
    return "\n".join(lines)


def _standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def _beside_lines(c: dict[str, Any], method: str) -> list[str]:
    """The baseline trained beside this model: same data, split, seed, epochs and attack."""
    run = f" (MLflow run `{c['baseline_run_id']}`)" if c.get("baseline_run_id") else ""
    if not c["comparable"]:
        return [f"A `{c.get('baseline_method')}` baseline was trained beside this model{run}, "
                "but the two cannot be compared:", ""] + [f"- {_cell(r)}" for r in c["reasons"]]
    cost = (f"{c['seconds']:.0f} s ({c['time_ratio']:.2f}x)" if c.get("time_ratio") is not None
            else "-")
    return ["A `pgd_at` baseline was trained beside this model on the same data, seed, epochs "
            f"and training attack{run}, and evaluated the same way.", "",
            f"| model | method | worst class | average | {_cell(c['baseline_worst_class'])} "
            "(baseline's weakest) | training time |", "|---|---|---:|---:|---:|---:|",
            f"| this model | {method} | {_pct(c['worst'])} ({_cell(c['worst_class'])}) | "
            f"{_pct(c['average'])} | {_pct(c['baseline_weakest_now'])} | {cost} |",
            f"| baseline | {c['baseline_method']} | {_pct(c['baseline_worst'])} "
            f"({_cell(c['baseline_worst_class'])}) | {_pct(c['baseline_average'])} | "
            f"{_pct(c['baseline_worst'])} | "
            + (f"{c['baseline_seconds']:.0f} s |" if c.get("baseline_seconds") else "- |"), "",
            f"Difference ({c['attack']}): worst class {100 * c['worst_lift']:+.1f} points, "
            f"average {100 * c['average_lift']:+.1f} points. One run each: seed-to-seed spread "
            "is not included (docs/results.md measures it over many seeds). Training time is "
            "each run's wall clock over all its sessions; on a shared machine it varies by "
            "about 10%"
            + ("." if c.get("seconds_checked", True) else
               "; these times come from the training summaries, which are not hash-checked "
               "(model files written before the model file recorded its training time).")
            + (f" Both trained on {_cell(c['train_machine'])}." if c.get("time_ratio") is not None
               else f" No time ratio: {_cell(c['cost_note'])}." if c.get("cost_note") else "")]


def _class_count(report: dict[str, Any] | None, attack: str, name: Any) -> int:
    totals = (((report or {}).get("attacks") or {}).get(attack) or {}).get("counts", {}).get("total")
    return int((totals or {}).get(str(name), 0))


def _noise_lines(c: dict[str, Any], report: dict[str, Any] | None,
                 study: dict[str, Any] | None) -> list[str]:
    """One run's worst-class lift beside its noise, and beside the study of this setting.

    Why: a lift of a few points from one seed on ~36 images per class is usually noise; an
    approver needs that said next to the number, with the interval many seeds gave."""
    if not c.get("comparable"):
        return []
    se = difference_noise(c["worst"], c["baseline_worst"],
                          _class_count(report, c["attack"], c["worst_class"]),
                          _class_count(report, c["attack"], c["baseline_worst_class"]))
    lift = 100 * c["worst_lift"]
    out = [""]
    if math.isfinite(se) and se > 0:
        within = abs(lift) < 200 * se
        out.append(f"Is the worst-class difference more than noise? Image sampling alone moves a "
                   f"difference of two worst classes by a standard error of about {100 * se:.1f} "
                   f"points here (seed-to-seed spread adds to it), so {lift:+.1f} points is "
                   + ("within one run's noise (under two standard errors): one run cannot show "
                      "a lift or a loss." if within else
                      "more than two standard errors: larger than image sampling alone explains, "
                      "though still one seed."))
    if study:
        out.append("")
    if study and study.get("found"):
        w, a = study["worst"], study["average"]
        simul = study.get("worst_simultaneous")
        out.append(f"The study of exactly this setting (`{_cell(study['study'])}`, method "
                   f"`{_cell(study['tag'])}`, {study['n']} seeds, each paired with a "
                   f"`{_cell(study['baseline'])}` model on the same seed, {study['attack']}): worst "
                   f"class {100 * w['mean']:+.1f} points, 95% interval [{100 * w['low']:+.1f}, "
                   f"{100 * w['high']:+.1f}]"
                   + (f" ([{100 * simul['low']:+.1f}, {100 * simul['high']:+.1f}] corrected for "
                      "the methods compared)" if simul else "")
                   + f"; average {100 * a['mean']:+.1f} [{100 * a['low']:+.1f}, "
                   f"{100 * a['high']:+.1f}]. That interval, not this one run, is the evidence "
                   "for the method.")
    elif study:
        out.append(f"No multi-seed study to quote: {_cell(study.get('note', ''))}.")
    return out


def render_card(params: dict[str, Any], report: dict[str, Any] | None, decision: dict[str, Any],
                manifest: dict[str, Any], train_summary: dict[str, Any] | None = None,
                baseline: dict[str, Any] | None = None,
                registration: dict[str, Any] | None = None,
                n_parameters: int | None = None, now: datetime | None = None,
                comparison: dict[str, Any] | None = None,
                study: dict[str, Any] | None = None) -> str:
    """The Markdown card. ``comparison``: :func:`fairat.evidence.comparison.compare` against the
    baseline trained beside this model (preferred); else ``baseline``: {"label", "worst",
    "worst_class", "average", "method"} of another version, or None; ``registration``: the
    version; ``study``: :func:`fairat.evidence.study.study_reference` for this setting."""
    train, model, track, gate = params["train"], params["model"], params["track"], params["gate"]
    when = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    name = track["model_name"]
    version = (registration or {}).get("version")
    title = f"# Model card: {name}" + (f" version {version}" if version else "")
    eps = (report or {}).get("eps", params["evaluate"]["eps"])
    lines = [title, "", f"**Fairness gate: {verdict_line(decision)}.**", ""]

    lines += ["## Model details", "",
              f"- Architecture: `{model['name']}` (width {model['width']}"
              + (f", depth {model['depth']}" if model.get("depth") else "") + ")"
              + (f", {n_parameters:,} parameters" if n_parameters else "")
              + "; takes [0, 1] pixels and owns its normalisation.",
              f"- Training method: `{train['method']}`: {method_line(train)}.",
              f"- Training attack: L-inf PGD-{train['attack']['steps']}, eps {train['attack']['eps']:.4g} "
              f"({train['attack']['eps'] * 255:.3g}/255), step {train['attack']['step_size']:.4g}; "
              f"{train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']} "
              f"({train['schedule']}), seed {train['seed']}.",
              f"- Checkpoint: {_chosen(train_summary, train)}.",
              f"- Owner: {track.get('owner') or 'not set (params track.owner)'}; date: {when}; "
              f"licence: {track.get('license') or 'not set (params track.license)'}.", ""]

    lines += ["## Intended use", "",
              f"Image classification of the `{manifest.get('source')}` classes "
              f"({', '.join(manifest.get('class_names', []))}) where inputs may be perturbed "
              f"adversarially within an L-inf ball of radius {eps:.4g} ({eps * 255:.3g}/255) in "
              "[0, 1] pixel units, and where the weakest class's robustness matters as much as "
              "the average (the fairness gate below judges exactly that).", "",
              "## Out-of-scope use", "",
              "- Inputs from another distribution than the training data (other cameras, sizes, "
              "classes): nothing here measures them.",
              "- Threat models other than L-inf at this radius (L2, patches, larger eps, "
              "physical-world attacks) and adaptive attacks beyond the ones listed.",
              "- Decisions about people: the classes are objects or digits, not demographic groups, "
              "and class-wise fairness here says nothing about fairness to people.", ""]

    lines += ["## Training data", "",
              f"Source `{manifest.get('source')}`; content hash `{manifest.get('content_hash')}`.", ""]
    for split in ("train", "val"):
        s = manifest.get("splits", {}).get(split)
        if s:
            lines.append(f"- {split}: {s['n']} images ({_counts_row(s['counts'])})"
                         + ("; checkpoint and knob choice happen here, never on test"
                            if split == "val" else ""))
    lines.append("")

    lines += ["## Evaluation data", ""]
    if report:
        prov = report.get("provenance", {})
        lines.append(f"The `{prov.get('split')}` split, {sum(report['examples_per_class'].values())} "
                     f"images ({_counts_row(report['examples_per_class'])}); data hash "
                     f"`{prov.get('data_content_hash')}`.")
    else:
        lines.append("No evaluation report was available.")
    lines.append("")

    lines += ["## Metrics", ""]
    if report:
        attacks = present_attacks(report)
        lines += [f"Accuracy per class (%), L-inf eps {eps:.4g}; robust = correct on the clean and "
                  "the attacked input; worst_case = the per-example worst over every attack that "
                  "ran.", "",
                  "| class | n | " + " | ".join(attacks) + " |",
                  "|---|---:|" + "---:|" * len(attacks)]
        for c in report["class_names"]:
            lines.append(f"| {_cell(c)} | {report['examples_per_class'][c]} | " + " | ".join(
                f"{100 * report['attacks'][a]['per_class'][c]:.1f}" for a in attacks) + " |")
        for key in ("average", "worst", "gap"):
            lines.append(f"| **{key}** | | " + " | ".join(
                f"{100 * report['attacks'][a]['summary'][key]:.1f}" for a in attacks) + " |")
        lines += ["", "Attacks: " + "; ".join(
            f"{a} on {report['attacks'][a]['n']} images" + (
                f" ({_settings(report['attacks'][a]['settings'])})"
                if report['attacks'][a].get('settings') else "")
            for a in attacks if a != "clean") + "."]
        for w in report.get("consistency", []):
            lines.append(f"- {w.get('severity', '').upper()}: {_cell(w.get('message'))}")
    else:
        lines.append("No evaluation report was available.")
    lines.append("")

    lines += ["## Fairness gate", "",
              f"Verdict: **{verdict_line(decision)}**.", "",
              f"- Judged: `{gate['attack']}` robust accuracy on the `{gate['split']}` split.",
              f"- Thresholds: min_worst_class {gate['min_worst_class']}, min_average "
              f"{gate['min_average']}, max_gap {gate['max_gap']}, clean floor "
              f"{gate['min_clean_class'] if gate['min_clean_class'] is not None else 'above chance'}"
              f"{', informational' if gate.get('informational') else ''}."]
    reasons = decision.get("reasons") or []
    lines += (["- Reasons it blocked:"] + [f"  - {_cell(r)}" for r in reasons]) if reasons \
        else ["- Every check passed."]
    lines.append("")

    lines += ["## Comparison with a baseline", ""]
    measured = decision.get("measured") or {}
    if comparison is not None:
        lines += _beside_lines(comparison, train["method"]) + _noise_lines(comparison, report,
                                                                            study)
    elif baseline and measured:
        dw = measured["worst"] - baseline["worst"]
        da = measured["average"] - baseline["average"]
        lines += ["| model | method | worst class | average |", "|---|---|---:|---:|",
                  f"| this model | {train['method']} | {_pct(measured['worst'])} "
                  f"({_cell(measured['worst_class'])}) | {_pct(measured['average'])} |",
                  f"| {_cell(baseline['label'])} | {baseline.get('method', '?')} | "
                  f"{_pct(baseline['worst'])} ({_cell(baseline.get('worst_class', '?'))}) | "
                  f"{_pct(baseline['average'])} |", "",
                  f"Difference: worst class {100 * dw:+.1f} points, average {100 * da:+.1f} points "
                  f"({gate['attack']}). One run each: seed-to-seed spread is not included."]
    else:
        lines.append("No baseline found (a `pgd_at` version of this registered model, or a "
                     "`pgd_at` run beside this one); register one with "
                     "`fairat run -S train.method=pgd_at` to compare.")
    lines.append("")

    lines += ["## Limitations", ""]
    if report:
        worst = report["attacks"].get(gate["attack"], {})
        n_min = min(worst.get("counts", {}).get("total", {"": 0}).values() or [0])
        p = (worst.get("summary") or {}).get("worst")
        if p is not None and n_min:
            lines.append(f"- Per-class numbers rest on as few as {n_min} images: the worst class's "
                         f"{_pct(p)} has a standard error of about {100 * _standard_error(p, n_min):.1f} "
                         "points.")
        aa = report["attacks"].get("autoattack")
        if aa and aa["n"] < sum(report["examples_per_class"].values()):
            lines.append(f"- AutoAttack (and so the worst case) ran on {aa['n']} of the "
                         f"{sum(report['examples_per_class'].values())} evaluation images.")
        if "autoattack" not in report["attacks"]:
            lines.append("- AutoAttack did not run: the robust numbers are PGD/CW only and may "
                         "overstate robustness.")
    lines += ["- Only the L-inf threat model at the radius above is measured; no certified bound, "
              "no distribution shift, no calibration.",
              "- Numbers differ slightly between CPU and GPU models (float kernels differ); compare "
              "runs made on the same kind of machine.", ""]

    lines += ["## Provenance", "", "| key | value |", "|---|---|"]
    prov = dict((report or {}).get("provenance", {}))
    rows = {"model sha256": decision.get("model_sha256"), "report sha256": decision.get("report_sha256"),
            "data content hash": manifest.get("content_hash"), "git commit": prov.get("git_commit"),
            "torch": prov.get("torch"), "pyautoattack": prov.get("pyautoattack"),
            "fairat": prov.get("fairat"), "device": prov.get("device"),
            "trained on": prov.get("train_machine") or (
                f"{prov['train_sessions']} sessions, not all on one recorded machine"
                if isinstance(prov.get("train_sessions"), int) and prov["train_sessions"] > 1
                else None),
            "evaluated on": prov.get("machine")}
    if registration:
        rows.update({"registered model": registration.get("model_name"),
                     "version": registration.get("version"), "MLflow run": registration.get("run_id")})
    lines += [f"| {k} | `{_cell(v)}` |" for k, v in rows.items() if v is not None]
    return "\n".join(lines) + "\n"


def method_line(train: dict[str, Any]) -> str:
    """What the run trained, in one line: the registry's description of its method (FairAT's
    names the selection it used and which part is the paper's, which this project's)."""
    spec = registry().get(train.get("method", ""))
    if spec is None:
        return "not a method this fairat knows"
    try:
        return spec.describe(train)
    except (KeyError, TypeError):  # params of another fairat version: say so, do not guess
        return "described by params this fairat version does not read"


def _chosen(train_summary: dict[str, Any] | None, train: dict[str, Any]) -> str:
    if not train_summary:
        return f"`{train['checkpoint']}` (training summary not available)"
    return (f"epoch {train_summary.get('chosen_epoch')} of {train_summary.get('epochs')}, chosen by "
            f"{train_summary.get('chosen_by')} (never on the test split)")


def _settings(settings: dict[str, Any]) -> str:
    keep = ("version", "attacks", "steps", "step_size", "loss", "restarts")
    return ", ".join(f"{k} {settings[k]}" for k in keep if k in settings)
