"""Adversarial-training objectives that plug into the one training loop: PGD-AT and TRADES, and
the two ways a method changes them: per-class terms and a batch hook.

A training method (:mod:`fairat.engine.methods`) names its base objective. FairAT is not a
separate objective: its :class:`BatchHook` adds augmented copies of hard examples to the batch
(:mod:`fairat.engine.hard_examples`). The class-wise fair-AT methods (WAT, FRL, CFA, DAFA) hand
the base objective per-example radii and loss weights (:class:`ClassTerms`, from a policy of
:mod:`fairat.engine.class_weights`).

Each step function crafts the attack with the model in eval mode (attack steps must not move
BatchNorm statistics), then runs the training forward in train mode through ``train_model`` (the
DDP wrapper when data-parallel) and returns per-sample losses; the loop reduces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from fairat.config import TrainConfig
from fairat.engine.attacks import pgd_attack, trades_attack


@dataclass
class ClassTerms:
    """Per-example knobs a class-wise method sets for one shard; None = the plain base method.

    ``eps_scale`` and ``step_scale`` multiply the training attack's radius and step size;
    ``w_natural`` weighs TRADES' clean cross-entropy, ``w_robust`` the adversarial term (PGD-AT's
    adversarial cross-entropy, TRADES' KL term).
    """

    eps_scale: torch.Tensor | None = None
    step_scale: torch.Tensor | None = None
    w_natural: torch.Tensor | None = None
    w_robust: torch.Tensor | None = None

    def radius(self, eps: float, step_size: float) -> tuple[float | torch.Tensor, ...]:
        e = eps if self.eps_scale is None else eps * self.eps_scale
        s = step_size if self.step_scale is None else step_size * self.step_scale
        return e, s

    def _map(self, fn) -> "ClassTerms":
        return ClassTerms(*(None if t is None else fn(t) for t in
                            (self.eps_scale, self.step_scale, self.w_natural, self.w_robust)))

    def slice(self, part: slice) -> "ClassTerms":
        return self._map(lambda t: t[part])

    def to(self, device: torch.device) -> "ClassTerms":
        """float32 on ``device`` (the per-class terms, once per update, not once per batch)."""
        return self._map(lambda t: t.to(device, torch.float32))

    def index(self, labels: torch.Tensor) -> "ClassTerms":
        """Per-class terms (C,) -> per-example terms (N,) for examples of class ``labels``."""
        return self._map(lambda t: t[labels])


def _weighted(loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return loss if weight is None else loss * weight


@dataclass
class Batch:
    """One shard of a training batch, already augmented, in [0, 1] pixels.

    ``targets`` is (N,) labels or (N, K) probability targets (mixing augmentations); ``labels`` is
    always the (N,) hard label of the original example. ``noise`` is the attack's pre-drawn start.
    """

    x: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    noise: torch.Tensor
    terms: ClassTerms = field(default_factory=ClassTerms)


@dataclass
class StepOutput:
    per_sample_loss: torch.Tensor  # (N,) training objective per example, with grad
    logits_adv: torch.Tensor  # (N, K), detached
    logits_clean: torch.Tensor | None  # (N, K) detached, when the method or score computed them


StepFn = Callable[[nn.Module, nn.Module, Batch, TrainConfig, bool], StepOutput]


def _set_mode(model: nn.Module, train: bool) -> None:
    model.train(train)


def pgd_at_step(attack_model: nn.Module, train_model: nn.Module, batch: Batch, cfg: TrainConfig,
                need_clean: bool) -> StepOutput:
    """Madry et al. (2018): minimise cross-entropy at the PGD adversarial example."""
    a = cfg.attack
    eps, step = batch.terms.radius(a.eps, a.step_size)
    _set_mode(attack_model, False)
    x_adv = pgd_attack(attack_model, batch.x, batch.targets, eps, step, a.steps,
                       loss=a.loss, random_start=a.random_start, noise=batch.noise).x_adv
    logits_clean = None
    if need_clean:  # only for the clean_ce hardness score: one extra no-grad forward
        with torch.no_grad():
            logits_clean = attack_model(batch.x)
    _set_mode(train_model, True)
    logits_adv = train_model(x_adv)
    loss = F.cross_entropy(logits_adv.float(), batch.targets, reduction="none")
    return StepOutput(_weighted(loss, batch.terms.w_robust), logits_adv.detach(), logits_clean)


def trades_step(attack_model: nn.Module, train_model: nn.Module, batch: Batch, cfg: TrainConfig,
                need_clean: bool) -> StepOutput:
    """Zhang et al. (2019): CE(clean) + beta * KL(p(clean) || p(adv)), attack maximises the KL."""
    a = cfg.attack
    eps, step = batch.terms.radius(a.eps, a.step_size)
    _set_mode(attack_model, False)
    with torch.no_grad():
        p_clean = F.softmax(attack_model(batch.x).float(), dim=1)
    x_adv = trades_attack(attack_model, batch.x, p_clean, eps, step, a.steps,
                          noise=batch.noise).x_adv
    _set_mode(train_model, True)
    # Two forwards, as in the reference implementation: each half normalised by its own batch
    # statistics.
    logits_clean = train_model(batch.x).float()
    logits_adv = train_model(x_adv).float()
    natural = F.cross_entropy(logits_clean, batch.targets, reduction="none")
    robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1),
                      reduction="none").sum(1)
    loss = (_weighted(natural, batch.terms.w_natural)
            + cfg.trades_beta * _weighted(robust, batch.terms.w_robust))
    return StepOutput(loss, logits_adv.detach(), logits_clean.detach())


OBJECTIVES: dict[str, StepFn] = {"pgd_at": pgd_at_step, "trades": trades_step}


def validation_cost(objective: str, logits_clean: torch.Tensor, logits_adv: torch.Tensor,
                    labels: torch.Tensor, trades_beta: float) -> torch.Tensor:
    """(N,) the base objective's loss per validation example (no grad): adversarial CE for
    PGD-AT, clean CE + beta * KL(clean || adversarial) for TRADES."""
    if objective == "trades":
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1),
                      reduction="none").sum(1)
        return F.cross_entropy(logits_clean, labels, reduction="none") + trades_beta * kl
    return F.cross_entropy(logits_adv, labels, reduction="none")


def start_noise(objective: str, shape: torch.Size, gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """The attack's random start for a whole (global) batch: uniform for PGD, normal for TRADES."""
    if objective == "trades":
        return torch.randn(shape, generator=gen, device=device)
    return torch.rand(shape, generator=gen, device=device)


class BatchHook:
    """What a method may do to every batch beyond per-class terms; the base does nothing.

    FairAT's hook (:class:`fairat.engine.hard_examples.HardExampleHook`) selects hard examples per
    epoch, augments their copies in the batch and scores every example from the step's logits.
    Under data parallelism every rank calls the hook alike (it may all-gather).
    """

    copies = 0  # extra copies of each selected example in the epoch plan
    need_clean = False  # the step must also return clean logits (for observe)

    def select(self, trainer: Any, epoch: int) -> torch.Tensor:
        """(M,) int64 CPU indices of the training examples to copy this epoch."""
        return torch.zeros(0, dtype=torch.long)

    def augment(self, x: torch.Tensor, labels: torch.Tensor, is_copy: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the global batch; targets may be (N, K) probabilities."""
        return x, labels

    def observe(self, trainer: Any, idx: torch.Tensor, out: StepOutput, targets: torch.Tensor,
                original: torch.Tensor) -> None:
        """After the step: this rank's shard ``idx`` and its output; ``original`` marks the
        examples that are not copies."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
