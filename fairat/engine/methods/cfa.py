"""CFA (Wei et al., CVPR 2023): class-wise calibrated margins (CCM) and regularisation (CCR) from
the previous epoch's per-class training robust accuracy, and the fairness-aware weight average
(FAWA) as the shipped model.

The terms (``CFAPolicy``) live in :mod:`fairat.engine.class_weights`, the average
(``FairWeightAverage``) in :mod:`fairat.engine.weight_average`."""

from __future__ import annotations

from dataclasses import dataclass

from fairat.engine.methods import MethodSpec, phase_epoch
from fairat.knobs import BaseMethod, check_range


@dataclass(frozen=True)
class CFAConfig:
    """CFA's knobs (Wei et al., CVPR 2023), authors' defaults.

    Per class: a radius ``(lambda_margin + A_c) * eps`` (CCM) and, on a TRADES base, a trade-off
    ``(lambda_beta + A_c) * beta`` (CCR), where ``A_c`` is the class's robust accuracy on the
    previous training epoch; the shipped model is the fairness-aware weight average (FAWA).
    """

    base: BaseMethod = "trades"  # the authors' main results use TRADES
    begin: float = 0.05  # fraction of the epochs before the calibration starts (10 of 200)
    lambda_margin: float = 0.5  # CCM
    lambda_beta: float = 0.5  # CCR (TRADES base only)
    fawa: bool = True  # ship the fairness-aware weight average instead of the live weights
    fawa_decay: float = 0.88  # weight of the old average per epoch
    fawa_threshold: float = 0.24  # an epoch enters the average only if its worst validation
    #                               class reaches this robust accuracy

    def __post_init__(self) -> None:
        check_range(self, "begin", 0, 1, high_open=True)
        for key in ("lambda_margin", "lambda_beta"):
            check_range(self, key, 0, 2, low_open=True)
        check_range(self, "fawa_decay", 0, 1, high_open=True)
        check_range(self, "fawa_threshold", 0, 1)


def _policy(train, num_classes, names):
    from fairat.engine.class_weights import CFAPolicy

    return CFAPolicy(train.cfa, num_classes, train.epochs, train.trades_beta,
                     train.cfa.base == "trades", names)


def _average(train):
    if not train.cfa.fawa:
        return None
    from fairat.engine.weight_average import FairWeightAverage

    return FairWeightAverage(train.cfa.fawa_decay, train.cfa.fawa_threshold)


def _describe(train) -> str:
    cfa = train["cfa"]
    return (f"CFA (Wei et al. 2023) on a `{cfa['base']}` base: after {cfa['begin']:.0%} of the "
            f"epochs, class radii (lambda {cfa['lambda_margin']})"
            + (f" and TRADES trade-offs (lambda {cfa['lambda_beta']})"
               if cfa["base"] == "trades" else "")
            + " from each class's training robust accuracy"
            + (f"; ships the fairness-aware weight average (decay {cfa['fawa_decay']}, epochs "
               f"whose worst validation class reaches {cfa['fawa_threshold']:.0%})"
               if cfa["fawa"] else ""))


METHOD = MethodSpec(
    name="cfa", order=5, section=CFAConfig, fields=("cfa", "trades_beta"),
    objective=lambda train: train.cfa.base,
    # CCM and CCR read training statistics only; FAWA admits epochs by the validation worst class
    needs_validation=lambda train: ("admits an epoch to its weight average by its validation "
                                    "worst class" if train.cfa.fawa else None),
    policy=_policy, weight_average=_average,
    # A_c is measured on an epoch and acts from the next one
    phases=lambda train: {"calibration": phase_epoch(train.cfa.begin, train.epochs, minimum=1)},
    describe=_describe)
