"""FRL (Xu et al., ICML 2021), reweight + remargin (or reweight only), on TRADES.

Its multiplier updates (``FRLPolicy``) live in :mod:`fairat.engine.class_weights`.

The authors' scripts (hannxu123/fair_robust ``frlrmrw.py``: reweight + remargin, ``frlrw.py``:
reweight only) fine-tune a pre-trained TRADES model for 40 epochs at a constant learning rate of
0.001, with one multiplier update per epoch. How much the multipliers can move is the sum of their
steps over those 40 updates; here it is expressed so that the sums match (issue 32):

- update totals: the authors take 40 steps of ``rate1`` = 0.05 (the 40th halved: ``% 40``), a
  reweighting total of 1.975 (twice that on the boundary term), and 40 steps of ``rate2`` = 0.2,
  a remargining total of 8.0. Ours: ``rate_weight`` and ``rate_margin`` are the authors' per-update
  steps and every update here is scaled by ``reference_updates / updates`` (40 / 15 on 30
  epochs with ``start`` 0.5), totals 2.0 and 8.0. The authors' one halving (the last of 40
  updates, 1.3% of the total) is not modelled: ``halve_every`` 1.0 = no halving in the phase.
  Before: 15 steps of 0.05 halved at each third (total 0.4375, 4.5x less) and 16 of 0.1 for the
  margins (1.5 that acted, 5.3x less).
- the variant's own settings: ``frlrmrw.py`` bounds both errors at 0.07 and steps the margins at
  0.2; ``frlrw.py`` bounds them at 0.1 (its ``rate2`` is unused). ``bound_clean`` and
  ``bound_boundary`` left null take the running variant's value. Before: 0.1 for both variants.

Unchanged, listed in docs/results.md: the FRL phase starts at half of a run trained from scratch
(the authors start from a converged TRADES model), at our piecewise learning rate (theirs: 0.001
constant), beta 6 (theirs: 1.5).
"""

from __future__ import annotations

from dataclasses import dataclass

from fairat.engine.methods import MethodSpec, phase_epoch
from fairat.knobs import check, check_range

# the authors' per-variant bounds on the class errors (frlrmrw.py, frlrw.py)
AUTHORS_BOUND = {True: 0.07, False: 0.1}  # remargin -> bound


@dataclass(frozen=True)
class FRLConfig:
    """FRL's knobs (Xu et al., ICML 2021), the authors' per-variant defaults (module docstring).

    FRL is TRADES split into its natural and boundary parts; each class's weight on either part,
    and its attack radius, follow Lagrange multipliers of the fairness constraints "class error
    <= average error + bound", updated every epoch from validation errors.
    """

    start: float = 0.5  # fraction of the epochs trained as plain TRADES first (the authors
    #                     fine-tune a pre-trained model)
    bound_clean: float | None = None  # tolerated excess of a class's clean error over the
    #                                   average; None = the variant's (0.07 remargin, 0.1 not)
    bound_boundary: float | None = None  # the same for the boundary error
    rate_weight: float = 0.05  # the authors' reweighting step per update (rate1)
    rate_margin: float = 0.2  # the authors' remargining step per update (frlrmrw.py's rate2)
    reference_updates: int | None = 40  # updates in the authors' script: each step here is
    #                     scaled by reference_updates / updates so the totals match; None = as is
    halve_every: float = 1.0  # fraction of the FRL phase between halvings of the reweighting
    #                           step (at most two); 1.0 = none within the phase
    limit: float = 0.5  # the reweighting multipliers are scaled back to sum <= limit
    remargin: bool = True  # False: FRL-reweight only

    def __post_init__(self) -> None:
        check_range(self, "start", 0, 1, high_open=True)
        for key in ("bound_clean", "bound_boundary"):
            if getattr(self, key) is not None:
                check_range(self, key, 0, 1)
        for key in ("rate_weight", "rate_margin"):
            check_range(self, key, 0, 10)
        check(self.reference_updates is None or self.reference_updates >= 1,
              "reference_updates", self.reference_updates, "must be >= 1 or null")
        check_range(self, "halve_every", 0, 1, low_open=True)
        check_range(self, "limit", 0, 1, low_open=True, high_open=True)

    def bounds(self) -> tuple[float, float]:
        """(clean, boundary) bounds: the knobs, or the running variant's own where null."""
        own = AUTHORS_BOUND[self.remargin]
        return (own if self.bound_clean is None else self.bound_clean,
                own if self.bound_boundary is None else self.bound_boundary)


def updates(train) -> int:
    """Multiplier updates that act on training: one after each epoch from ``start`` to the
    second-to-last (the update after the last epoch trains nothing)."""
    return max(train.epochs - phase_epoch(train.frl.start, train.epochs), 1)


def _policy(train, num_classes, names):
    from fairat.engine.class_weights import FRLPolicy

    return FRLPolicy(train.frl, num_classes, train.epochs, names)


def _describe(train) -> str:
    frl = {"reference_updates": None} | train["frl"]  # None: a run recorded before the scaling
    own = AUTHORS_BOUND[bool(frl["remargin"])]
    clean = own if frl["bound_clean"] is None else frl["bound_clean"]
    bndy = own if frl["bound_boundary"] is None else frl["bound_boundary"]
    return (f"FRL (Xu et al. 2021), {'reweight + remargin' if frl['remargin'] else 'reweight'}, "
            f"on TRADES (beta {train['trades_beta']}): after {frl['start']:.0%} of the epochs, "
            "class weights" + (" and radii" if frl["remargin"] else "")
            + " from Lagrange multipliers of per-class validation error bounds "
              f"({clean:g} clean, {bndy:g} boundary)"
            + (f", update totals as the authors' {frl['reference_updates']} updates"
               if frl["reference_updates"] else ""))


METHOD = MethodSpec(
    name="frl", order=4, section=FRLConfig, fields=("frl", "trades_beta"),
    objective=lambda train: "trades",  # FRL weighs TRADES' natural and boundary terms apart
    needs_validation=lambda train: "reweights classes by their validation errors",
    policy=_policy,
    # the multipliers move after an epoch and act from the next one
    phases=lambda train: {"reweighting": phase_epoch(train.frl.start, train.epochs, minimum=1)},
    describe=_describe)
