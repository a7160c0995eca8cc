"""The control for FairAT: PGD-AT plus as many augmented copies as FairAT adds, drawn at random.

Not a fairness method. FairAT gives its hard examples extra augmented copies; a lift it shows over
PGD-AT could come from *aiming* the copies at hard examples (the claim) or from training on *more
augmented data* at all (a confound no peer shares: FairAT trains about 20% more examples per epoch
and is the only method with AutoAugment, Cutout and CutMix). This method keeps everything but the
aim: each epoch after the same warm-up, ``round(hard_ratio * N)`` examples (FairAT's global count,
and the budget its per-class quotas split) are drawn uniformly at random from the training set
(every epoch anew, from the seed and epoch alone) and trained again as the same number of copies
with the same augmentations, on the same base objective. FairAT minus this control is the effect
of the aim (issue 32, item 3).

The defaults equal FairAT's (``train.fairat``) so the comparison is like for like; a study that
runs FairAT at other settings should set the same values here. The copy machinery is FairAT's
(:class:`fairat.engine.hard_examples.AugmentedCopiesHook`); only the selection differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fairat.engine.methods import MethodSpec, phase_epoch
from fairat.engine.methods.fairat import AugmentName
from fairat.knobs import BaseMethod, check, check_range


@dataclass(frozen=True)
class RandomCopiesConfig:
    """The control's knobs: FairAT's copy knobs without its selection (defaults = FairAT's)."""

    base: BaseMethod = "pgd_at"  # the adversarial objective, as FairAT's base
    hard_ratio: float = 0.2  # fraction of the training set copied each epoch (FairAT's count)
    warmup: float = 0.17  # fraction of the epochs trained plain before copies start (5 of 30)
    copies: int = 1  # extra augmented views per drawn example per epoch
    augment: tuple[AugmentName, ...] = ("autoaugment", "cutout", "cutmix")
    strength: float = 1.0  # scales augmentation magnitudes (0 = identity, 1 = default, up to 2)

    def __post_init__(self) -> None:
        check_range(self, "hard_ratio", 0, 1, low_open=True)
        check_range(self, "warmup", 0, 1, high_open=True)
        check(self.copies >= 1, "copies", self.copies, "must be >= 1")
        check(len(self.augment) > 0, "augment", self.augment, "needs at least one name")
        check_range(self, "strength", 0, 2)


def warmup_epochs(train) -> int:
    """Epochs trained on the base objective alone before copies start (FairAT's rounding)."""
    return phase_epoch(train.random_copies.warmup, train.epochs)


def _hook(train, labels, num_classes):
    from fairat.engine.hard_examples import RandomCopiesHook

    # FairAT's first copies come at max(1, warm-up): an example needs a score first. The control
    # starts at the same epoch, so both add the same number of copies over the run.
    return RandomCopiesHook(train, labels, num_classes, max(1, warmup_epochs(train)))


def _describe(train) -> str:
    r = train["random_copies"]
    copies = f"{r['copies']} augmented cop{'y' if r['copies'] == 1 else 'ies'}"
    return (f"Random-copies control on a `{r['base']}` base (a control, not a fairness method): "
            f"after {r['warmup']:.0%} of the epochs, {r['hard_ratio']:.0%} of the training set "
            f"drawn uniformly at random each epoch is trained again as {copies} "
            f"({', '.join(r['augment'])}, strength {r['strength']:g}): FairAT's extra data "
            "without its aim at hard examples")


METHOD = MethodSpec(
    name="random_copies", order=7, section=RandomCopiesConfig,
    fields=("random_copies", "trades_beta"),
    objective=lambda train: train.random_copies.base,
    batch_hook=_hook,
    phases=lambda train: {"random copies": max(1, warmup_epochs(train))},
    describe=_describe)
