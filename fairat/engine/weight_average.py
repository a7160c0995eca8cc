"""CFA's fairness-aware weight average (FAWA, Wei et al., CVPR 2023).

An exponential moving average of the model's weights that admits an epoch only when the live
model's worst validation class reaches a robust-accuracy threshold: averaging smooths the
epoch-to-epoch swings in which class is weakest, and the threshold keeps epochs that sacrificed
one class out of the average. Until an epoch is admitted the average is the live model itself.

The threshold is absolute (a robust accuracy, the authors' rule) or ``relative``: a fraction of the
best worst validation class this run has reached so far (this epoch included), so that it means
the same on a dataset whose worst class sits far above or below the authors' CIFAR-10 level.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FairWeightAverage:
    """The averaged state of one run: float entries averaged, integer buffers copied."""

    def __init__(self, decay: float, threshold: float, relative: bool = False) -> None:
        self.decay, self.threshold, self.relative = decay, threshold, relative
        self.average: dict[str, torch.Tensor] | None = None
        self.admitted = 0  # epochs averaged so far
        self.best = 0.0  # the best worst validation class seen so far (relative threshold)

    def bar(self) -> float:
        """The worst-class robust accuracy an epoch must reach now."""
        return self.threshold * self.best if self.relative else self.threshold

    def update(self, model: nn.Module, worst_val_robust: float) -> bool:
        """Fold ``model`` in if its worst validation class reaches the threshold; True if it did."""
        self.best = max(self.best, float(worst_val_robust))
        if worst_val_robust < self.bar():
            return False
        live = model.state_dict()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in live.items()}
        else:
            for key, value in live.items():
                avg = self.average[key]
                if avg.is_floating_point():
                    avg.mul_(self.decay).add_(value.detach(), alpha=1 - self.decay)
                else:
                    avg.copy_(value)
        self.admitted += 1
        return True

    def state_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights to validate and ship: the average, or the live model before any epoch."""
        return self.average if self.average is not None else model.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "threshold": self.threshold, "average": self.average,
                "admitted": self.admitted, "relative": self.relative, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.threshold = float(state["decay"]), float(state["threshold"])
        self.average, self.admitted = state["average"], int(state["admitted"])
        # a checkpoint from before the relative threshold was absolute, with no best kept
        self.relative = bool(state.get("relative", False))
        self.best = float(state.get("best", 0.0))
