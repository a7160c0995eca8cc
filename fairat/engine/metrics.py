"""Class-wise accuracy and its summary: pure functions over per-sample correctness flags.

Why counts: a robust-accuracy number is only as mergeable as its parts. Keeping per-class
(correct, total) integer counts lets shards of an evaluation (ranks, resumed runs) be summed
exactly before any division; fractions are derived last, keyed by class name.

Inputs may be numpy arrays, lists or CPU/GPU torch tensors (torch is never imported here).
Shapes: ``correct`` (N,) bool, ``labels`` (N,) int in [0, num_classes).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def _to_numpy(a: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and moved to the CPU first."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def classwise_counts(correct: Any, labels: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class correct counts and totals, both int64 arrays of shape (num_classes,).

    Args:
        correct: (N,) bool (or 0/1) per-sample correctness.
        labels: (N,) integer labels in [0, num_classes).
        num_classes: length of the returned arrays.
    """
    c = _to_numpy(correct).reshape(-1)
    y = _to_numpy(labels).reshape(-1)
    if c.shape != y.shape:
        raise ValueError(f"correct has {c.shape[0]} entries but labels has {y.shape[0]}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{y.min()}, {y.max()}]")
    y = y.astype(np.int64)
    totals = np.bincount(y, minlength=num_classes).astype(np.int64)
    hits = np.bincount(y, weights=c.astype(bool).astype(np.float64), minlength=num_classes)
    return np.rint(hits).astype(np.int64), totals


def accuracy_from_counts(correct_counts: Any, totals: Any,
                         class_names: Sequence[str]) -> dict[str, float]:
    """Per-class accuracy in [0, 1] keyed by class name; a class with no examples: ValueError."""
    hits = _to_numpy(correct_counts).reshape(-1)
    tot = _to_numpy(totals).reshape(-1)
    if not (len(hits) == len(tot) == len(class_names)):
        raise ValueError(f"{len(hits)} correct counts, {len(tot)} totals and "
                         f"{len(class_names)} class names must have the same length")
    empty = [name for name, t in zip(class_names, tot) if t <= 0]
    if empty:
        raise ValueError(f"no examples of class(es) {empty}: their accuracy is undefined")
    if np.any(hits < 0) or np.any(hits > tot):
        raise ValueError("correct counts must lie in [0, total] for every class")
    return {name: float(h) / float(t) for name, h, t in zip(class_names, hits, tot)}


def classwise_accuracy(correct: Any, labels: Any, class_names: Sequence[str]) -> dict[str, float]:
    """Per-class accuracy in [0, 1] keyed by class name (label i is ``class_names[i]``).

    A class with zero examples in ``labels`` raises ValueError naming it.
    """
    hits, totals = classwise_counts(correct, labels, len(class_names))
    return accuracy_from_counts(hits, totals, class_names)


def summarize(per_class: dict[str, float]) -> dict[str, Any]:
    """Summary of per-class accuracies: class mean, worst/best (value, name), gap, population std.

    Ties go to the class listed first. Returns plain Python floats and strings (JSON-ready).
    """
    if not per_class:
        raise ValueError("summarize needs at least one class")
    names = list(per_class)
    values = np.array([float(per_class[n]) for n in names], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"per-class accuracies must be finite, got {per_class}")
    worst, best = int(np.argmin(values)), int(np.argmax(values))
    return {
        "average": float(values.mean()),
        "worst": float(values[worst]),
        "worst_class": names[worst],
        "best": float(values[best]),
        "best_class": names[best],
        "gap": float(values[best] - values[worst]),
        "std": float(values.std(ddof=0)),
    }


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The one flattening of nested records (MLflow params and metrics, Kubeflow Metrics, the
    training CSV's columns): ``{"train": {"attack": {"eps": 0.1}}}`` -> ``{"train.attack.eps": 0.1}`` (lists kept whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def numeric_metrics(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) record, keyed ``a.b`` (per-class dicts become ``key.class``)."""
    return {k: float(v) for k, v in flatten(record, prefix).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
