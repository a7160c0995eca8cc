"""WAT (Li and Liu, AAAI 2023): Hedge class weights from validation losses, on a base objective.

The game itself (``WATWeights``, ``WATPolicy``) lives in :mod:`fairat.engine.class_weights`."""

from __future__ import annotations

from dataclasses import dataclass

from fairat.engine.methods import MethodSpec
from fairat.knobs import BaseMethod, check_range


@dataclass(frozen=True)
class WATConfig:
    """WAT's knobs (Li and Liu, AAAI 2023): Hedge class weights from validation losses."""

    base: BaseMethod = "trades"  # the authors train TRADES
    eta: float = 0.1  # Hedge learning rate on the cumulative per-class validation loss

    def __post_init__(self) -> None:
        check_range(self, "eta", 0, 10, low_open=True)


def _policy(train, num_classes, names):
    from fairat.engine.class_weights import WATPolicy

    return WATPolicy(num_classes, train.wat.eta, names)


METHOD = MethodSpec(
    name="wat", order=3, section=WATConfig, fields=("wat",),
    objective=lambda train: train.wat.base,
    needs_validation=lambda train: "weights classes by their validation losses",
    policy=_policy,
    phases=lambda train: {"class weighting": 1},  # from the first epoch's validation losses
    describe=lambda train: f"WAT (Li and Liu 2023) on a `{train['wat']['base']}` base: every "
                           "epoch, class weights from a Hedge game on the per-class validation "
                           f"loss (eta {train['wat']['eta']})")
