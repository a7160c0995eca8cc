"""Hand-made evaluation-report pieces shared by the gate, comparison and model-card tests."""

from __future__ import annotations

from fairat.engine.metrics import summarize


def attack_entry(correct: dict[str, int], total: dict[str, int] | int = 10) -> dict:
    """One attack's entry as evaluate writes it: per-class accuracy, its summary and the integer
    counts it comes from (``total`` examples per class, one number or one per class)."""
    total = {c: total for c in correct} if isinstance(total, int) else dict(total)
    per_class = {c: correct[c] / total[c] for c in correct}
    return {"per_class": per_class, "summary": summarize(per_class),
            "counts": {"correct": dict(correct), "total": total},
            "n": sum(total.values()), "settings": {}}
