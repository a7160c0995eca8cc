"""What a multi-seed study measured for this run's setting, so the card can put one run's lift
beside it.

Why: one run's worst-class lift over its baseline rests on about 36 images per class and moves by
more than the effect from seed to seed (docs/results.md). The card says whether the run's own
difference is within that noise and, where a committed study trained exactly this setting, gives
the study's paired interval. "Exactly this setting" is checked, never assumed from a name: the
study's cell records carry the training config they ran, and every training knob that is not a
seed, a device or another method's section must equal this run's, as must the model and the data
source. A study of another setting is named with the first knobs that differ, not quoted.

Torch-free: it reads JSON written by ``benchmarks/robust_fairness.py aggregate`` and its cells.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fairat.engine.methods import method_fields, registry

# knobs that never make a setting: randomness, where it ran and how it reports
_NOT_THE_SETTING = frozenset({"seed", "progress", "device", "amp", "max_batches"})


def _setting_differences(train: dict[str, Any], model: dict[str, Any], source: str,
                         cell: dict[str, Any]) -> list[str]:
    """Knobs where the study cell's recorded config differs from this run's (empty: the same)."""
    prov = cell.get("provenance") or {}
    config = prov.get("train_config") or {}
    theirs_train, theirs_model = config.get("train") or {}, config.get("model") or {}
    own = set(registry()[train["method"]].fields) if train.get("method") in registry() else set()
    others = set(method_fields()) - own
    out = [f"data source {prov.get('data_source')!r} (this run: {source!r})"
           ] if prov.get("data_source") != source else []
    out += [f"model.{k}" for k in sorted(set(model) | set(theirs_model))
            if model.get(k) != theirs_model.get(k)]
    keys = (set(train) | set(theirs_train)) - _NOT_THE_SETTING - others
    out += [f"train.{k}" for k in sorted(keys) if train.get(k) != theirs_train.get(k)]
    return out


def _cell_record(folder: Path, tag: str, seed: int) -> dict[str, Any] | None:
    path = folder / f"{tag}-seed{seed}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def study_reference(summary_path: str | Path | None, params: dict[str, Any],
                    data_source: str) -> dict[str, Any]:
    """The committed study's paired lift for this run's setting.

    Returns {"found": True, "study", "tag", "baseline", "attack", "n", "worst", "average"
    (each {mean, low, high}), "worst_simultaneous"} when a study method's cells trained exactly
    this setting; else {"found": False, "note": why} (no study configured, unreadable, or no
    method of it trained this setting, naming the closest one's differences).
    """
    if not summary_path:
        return {"found": False, "note": "no study configured (params track.study)"}
    path = Path(summary_path)
    try:
        summary = json.loads(path.read_text())
        paired = summary["paired"]
        methods = paired["methods"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {"found": False, "note": f"study summary {path} not readable here ({exc.__class__.__name__})"}
    train, model = params["train"], params["model"]
    closest: tuple[int, str, list[str]] | None = None
    for tag, entry in methods.items():
        seeds = entry.get("seeds") or []
        cell = _cell_record(path.parent, tag, seeds[0]) if seeds else None
        if cell is None:
            continue
        diffs = _setting_differences(train, model, data_source, cell)
        if not diffs:
            return {"found": True, "study": str(path.parent), "tag": tag,
                    "baseline": paired.get("baseline"), "attack": paired.get("attack"),
                    "n": entry["worst"]["n"], "worst": entry["worst"],
                    "average": entry["average"],
                    "worst_simultaneous": entry.get("worst_simultaneous")}
        if closest is None or len(diffs) < closest[0]:
            closest = (len(diffs), tag, diffs)
    if closest is None:
        return {"found": False, "note": f"study {path.parent} has no readable cell records"}
    return {"found": False, "note": f"no method of the study {path.parent} trained this setting "
            f"(closest, `{closest[1]}`, differs in {', '.join(closest[2][:4])}"
            + (", ..." if len(closest[2]) > 4 else "") + ")"}


def difference_noise(p: float, q: float, n_p: int, n_q: int) -> float:
    """Standard error of the difference of two independent class accuracies (binomial): how far
    one run's worst-class lift moves from image sampling alone, before seed-to-seed spread."""
    if not n_p or not n_q:
        return float("nan")
    return math.sqrt(max(p * (1 - p), 0.0) / n_p + max(q * (1 - q), 0.0) / n_q)
