"""DAFA (Lee et al., ICLR 2024): once, after warm-up, class weights (and radii) from how similar
each class is to the others under attack.

The weights (``dafa_class_weights``, as the authors compute them) and the policy live in
:mod:`fairat.engine.class_weights`.

When the weights start: the authors train 110 epochs with the learning rate high until epoch 100
and compute the weights after epoch 70, so DAFA acts for 30 epochs at the high rate (70% of the
way through it) before the decay. Here the high-rate phase ends at the first piecewise milestone
(0.5 of the run by default), so the default ``warmup`` is 0.35 (0.7 x 0.5): the weights start while
the learning rate is still high, as the authors'. A ``warmup`` at or after the first milestone
gets a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from fairat.engine.methods import MethodSpec, phase_epoch
from fairat.knobs import BaseMethod, check_range


@dataclass(frozen=True)
class DAFAConfig:
    """DAFA's knobs (Lee et al., ICLR 2024): once, after warm-up, class weights (and radii) from
    how similar each class is to the others under attack."""

    base: BaseMethod = "trades"  # the authors' main results use TRADES
    warmup: float = 0.35  # fraction of the epochs before the weights are computed: 0.7 of the
    #                       high-learning-rate phase, as the authors' 70 of 100 high-rate epochs
    lam: float = 1.0  # the authors' lambda: how far weights move from 1

    def __post_init__(self) -> None:
        check_range(self, "warmup", 0, 1, low_open=True, high_open=True)
        check_range(self, "lam", 0, 5)


def warmup_epochs(train) -> int:
    """Epochs trained before the weights are computed (at least one: they need its statistics)."""
    return phase_epoch(train.dafa.warmup, train.epochs, minimum=1)


def _policy(train, num_classes, names):
    from fairat.engine.class_weights import DAFAPolicy

    return DAFAPolicy(train.dafa, train.epochs, train.dafa.base == "trades", names)


def _warnings(train) -> list[str]:
    if train.schedule != "piecewise" or not train.milestones:
        return []
    start, first = warmup_epochs(train), min(train.milestones)
    if start / train.epochs < first:
        return []
    return [f"train.dafa.warmup {train.dafa.warmup}: DAFA's weights start after epoch {start} "
            f"of {train.epochs}, at or after the first learning-rate decay ({first:.0%} of the "
            "run); the authors start them while the learning rate is still high (epoch 70, "
            "decay at 100): lower train.dafa.warmup below the first milestone"]


METHOD = MethodSpec(
    name="dafa", order=6, section=DAFAConfig, fields=("dafa", "trades_beta"),
    objective=lambda train: train.dafa.base,
    policy=_policy,
    phases=lambda train: {"class weighting": warmup_epochs(train)},
    warnings=_warnings,
    describe=lambda train: f"DAFA (Lee et al. 2024) on a `{train['dafa']['base']}` base: after "
                           f"{train['dafa']['warmup']:.0%} of the epochs, once, class weights "
                           "and radii from the class similarity under attack (lambda "
                           f"{train['dafa']['lam']})")
