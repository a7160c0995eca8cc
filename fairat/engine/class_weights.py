"""Class weights from validation statistics: WAT (Li and Liu, AAAI 2023, worst-class adversarial
training).

WAT treats each class, plus the average over all classes, as an "expert" of a no-regret (Hedge,
exponentiated-gradient) game: after every epoch the per-class validation loss is added to a
cumulative cost, and the class weights for the next epoch are ``C * softmax(eta * cumulative)``
over the C + 1 experts. An example of class y is trained with weight ``w[y] + w[average]``, so the
classes that keep losing on validation gain weight, and the weights always sum to C.

Choices where the authors' code and the paper leave room (documented, not hidden):
- the weights start from the Hedge prior ``C / (C + 1)`` for every expert (the code starts from
  1, which doubles the first epoch's loss);
- the softmax is computed stably (the code exponentiates directly, which overflows on long runs);
- the validation cost is the base objective at the validation attack (PGD on the CE loss):
  adversarial CE for a PGD-AT base, clean CE + beta * KL(clean || adversarial) for TRADES (the
  authors attack with the TRADES KL attack).
Class statistics come from the validation split, never the test split.
"""

from __future__ import annotations

from typing import Any

import torch


def hedge_weights(cumulative: torch.Tensor, eta: float) -> torch.Tensor:
    """``C * softmax(eta * cumulative)`` over the C + 1 experts (classes, then the average)."""
    c = cumulative.numel() - 1
    return c * torch.softmax(eta * cumulative.double(), dim=0)


class WATWeights:
    """The state of WAT's game for one run: cumulative validation costs of C + 1 experts."""

    def __init__(self, num_classes: int, eta: float) -> None:
        self.eta = eta
        self.cumulative = torch.zeros(num_classes + 1, dtype=torch.float64)

    def weights(self) -> torch.Tensor:
        """(C + 1,) float64: one weight per class, then the average expert's."""
        return hedge_weights(self.cumulative, self.eta)

    def example_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """(N,) weights ``w[y] + w[average]`` on ``labels``' device, float32."""
        w = self.weights().to(labels.device, torch.float32)
        return w[labels] + w[-1]

    def update(self, cost_per_class: list[float], cost_average: float) -> None:
        """Add one epoch's validation costs (per-class mean loss, and the mean over all)."""
        cost = torch.tensor([*cost_per_class, cost_average], dtype=torch.float64)
        if cost.numel() != self.cumulative.numel() or not torch.isfinite(cost).all():
            raise ValueError(f"WAT: expected {self.cumulative.numel() - 1} finite class costs "
                             f"and an average, got {cost.tolist()}")
        self.cumulative += cost

    def state_dict(self) -> dict[str, Any]:
        return {"eta": self.eta, "cumulative": self.cumulative.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eta = float(state["eta"])
        self.cumulative = state["cumulative"].double().clone()
