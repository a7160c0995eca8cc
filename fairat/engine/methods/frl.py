"""FRL (Xu et al., ICML 2021), reweight + remargin, on TRADES.

Its multiplier updates (``FRLPolicy``) live in :mod:`fairat.engine.class_weights`."""

from __future__ import annotations

from dataclasses import dataclass

from fairat.engine.methods import MethodSpec, phase_epoch
from fairat.knobs import check_range


@dataclass(frozen=True)
class FRLConfig:
    """FRL's knobs (Xu et al., ICML 2021, reweight + remargin), authors' defaults.

    FRL is TRADES split into its natural and boundary parts; each class's weight on either part,
    and its attack radius, follow Lagrange multipliers of the fairness constraints "class error
    <= average error + bound", updated every epoch from validation errors.
    """

    start: float = 0.5  # fraction of the epochs trained as plain TRADES first (the authors
    #                     fine-tune a pre-trained model)
    bound_clean: float = 0.1  # tolerated excess of a class's clean error over the average
    bound_boundary: float = 0.1  # tolerated excess of a class's boundary error over the average
    rate_weight: float = 0.05  # multiplier step for the reweighting (halved at each third)
    rate_margin: float = 0.1  # multiplier step for the remargining (per-class radius)
    limit: float = 0.5  # the reweighting multipliers are scaled back to sum <= limit
    remargin: bool = True  # False: FRL-reweight only

    def __post_init__(self) -> None:
        check_range(self, "start", 0, 1, high_open=True)
        for key in ("bound_clean", "bound_boundary"):
            check_range(self, key, 0, 1)
        for key in ("rate_weight", "rate_margin"):
            check_range(self, key, 0, 10)
        check_range(self, "limit", 0, 1, low_open=True, high_open=True)


def _policy(train, num_classes, names):
    from fairat.engine.class_weights import FRLPolicy

    return FRLPolicy(train.frl, num_classes, train.epochs, names)


def _describe(train) -> str:
    frl = train["frl"]
    return (f"FRL (Xu et al. 2021), {'reweight + remargin' if frl['remargin'] else 'reweight'}, "
            f"on TRADES (beta {train['trades_beta']}): after {frl['start']:.0%} of the epochs, "
            "class weights" + (" and radii" if frl["remargin"] else "")
            + " from Lagrange multipliers of per-class validation error bounds "
              f"({frl['bound_clean']} clean, {frl['bound_boundary']} boundary)")


METHOD = MethodSpec(
    name="frl", order=4, section=FRLConfig, fields=("frl", "trades_beta"),
    objective=lambda train: "trades",  # FRL weighs TRADES' natural and boundary terms apart
    needs_validation=lambda train: "reweights classes by their validation errors",
    policy=_policy,
    # the multipliers move after an epoch and act from the next one
    phases=lambda train: {"reweighting": phase_epoch(train.frl.start, train.epochs, minimum=1)},
    describe=_describe)
