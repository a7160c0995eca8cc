"""Batched L-inf attacks in [0, 1] pixel space: PGD on cross-entropy or CW margin, TRADES' KL attack.

Why lean: textbook adversarial-training scripts call ``loss.backward()`` inside the attack, which
also computes (and then throws away) every weight gradient. Here each step asks autograd for the
gradient with respect to the perturbation only, so the backward pass skips the weight-gradient
convolutions: the main CPU lever for adversarial training (measured in benchmarks/throughput.py).

The caller owns the model's mode (``model.eval()`` for evaluation and, by default, for crafting
training attacks, so attack steps do not move BatchNorm running statistics).

Shapes: ``x`` (N, C, H, W) float in [0, 1]; ``y`` (N,) int64 labels or (N, K) probability targets.
Radius and step size are a float or, for the fair-AT methods that give each class its own margin
(FRL, CFA, DAFA), an (N,) tensor of per-example values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LossName = Literal["ce", "cw"]


@dataclass
class AttackResult:
    """Adversarial inputs and, per sample, the attack loss at them.

    ``loss`` and ``correct`` are filled only when the attack evaluated its final point
    (``track_best=True``); training attacks skip that forward pass.
    """

    x_adv: torch.Tensor
    loss: torch.Tensor | None = None  # (N,) float
    correct: torch.Tensor | None = None  # (N,) bool: still classified correctly at x_adv


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin: max wrong-class logit minus true-class logit (> 0 means fooled)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return wrong - true


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: LossName = "ce") -> torch.Tensor:
    """Per-sample attack objective; ``y`` may be hard labels or probability targets (CE only)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    hard = y if y.dim() == 1 else y.argmax(1)
    return cw_margin_loss(logits, hard)


def _hard_labels(y: torch.Tensor) -> torch.Tensor:
    return y if y.dim() == 1 else y.argmax(1)


Radius = float | torch.Tensor  # a float, or (N,) per-example values


def per_example(value: Radius, x: torch.Tensor) -> Radius:
    """A float stays a float; an (N,) tensor becomes (N, 1, 1, 1) on ``x``'s device and dtype."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.shape != (x.shape[0],):
        raise ValueError(f"per-example radius/step must have shape ({x.shape[0]},), "
                         f"got {tuple(value.shape)}")
    return value.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))


def _positive(eps: Radius) -> bool:
    return bool((eps > 0).any()) if isinstance(eps, torch.Tensor) else eps > 0


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Radius, step_size: Radius,
               steps: int, loss: LossName = "ce", random_start: bool = True,
               generator: torch.Generator | None = None, track_best: bool = False,
               noise: torch.Tensor | None = None) -> AttackResult:
    """L-inf PGD (Madry et al., 2018) with optional uniform random start.

    Args:
        model: maps [0, 1] inputs to logits; its mode is left as the caller set it.
        x: clean inputs, (N, C, H, W) in [0, 1].
        y: (N,) labels, or (N, K) probability targets (soft labels from CutMix/Mixup).
        eps: L-inf radius in pixel units. step_size: per-step size in pixel units. Either may be
            an (N,) tensor of per-example values (class-wise margins).
        steps: number of gradient-sign steps (0 returns the random start, or x).
        loss: "ce" (cross-entropy) or "cw" (CW margin, for evaluation).
        random_start: start from a uniform point in the eps-ball.
        generator: RNG for the random start (same device as ``x``), for repeatable runs.
        track_best: per sample, return the iterate with the highest loss over all iterates,
            preferring any misclassified one, and report loss/correctness there (evaluation).
            Costs one extra forward pass.
        noise: optional pre-drawn Uniform[0, 1) tensor shaped like ``x`` for the random start
            (lets data-parallel ranks slice one draw made for the global batch).
    """
    x = x.detach()
    eps, step_size = per_example(eps, x), per_example(step_size, x)
    if random_start and _positive(eps):
        if noise is None:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (noise * 2 - 1) * eps
        delta = (x + delta).clamp_(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    hard = _hard_labels(y)
    with torch.enable_grad():  # callers may hold no_grad; the attack needs input gradients
        return _pgd_loop(model, x, y, hard, delta, eps, step_size, steps, loss, track_best)


def _pgd_loop(model, x, y, hard, delta, eps, step_size, steps, loss, track_best) -> AttackResult:
    best_x = best_loss = best_wrong = None
    for step in range(steps + (1 if track_best else 0)):
        delta.requires_grad_(True)
        logits = model(x + delta)
        losses = per_sample_loss(logits, y, loss)
        if track_best:
            best_x, best_loss, best_wrong = _keep_best(x + delta.detach(), losses.detach(),
                                                       logits.detach().argmax(1) != hard,
                                                       best_x, best_loss, best_wrong)
            if step == steps:
                break
        (grad,) = torch.autograd.grad(losses.sum(), delta)
        with torch.no_grad():
            delta = (delta + step_size * grad.sign()).clamp_(-eps, eps)
            delta = (x + delta).clamp_(0, 1) - x
    if track_best:
        return AttackResult(best_x, best_loss, ~best_wrong)
    return AttackResult((x + delta).detach())


def _keep_best(x_now, loss_now, wrong_now, best_x, best_loss, best_wrong):
    """Per sample, keep a misclassified iterate if any, else the highest-loss one."""
    if best_x is None:
        return x_now.clone(), loss_now.clone(), wrong_now.clone()
    better = (wrong_now & ~best_wrong) | ((wrong_now == best_wrong) & (loss_now > best_loss))
    best_x[better] = x_now[better]
    best_loss[better] = loss_now[better]
    best_wrong |= wrong_now
    return best_x, best_loss, best_wrong


def trades_attack(model: nn.Module, x: torch.Tensor, p_clean: torch.Tensor, eps: Radius,
                  step_size: Radius, steps: int,
                  generator: torch.Generator | None = None,
                  noise: torch.Tensor | None = None) -> AttackResult:
    """TRADES' inner maximisation (Zhang et al., 2019): maximise KL(p_clean || p(x_adv)).

    Starts from x plus small Gaussian noise (0.001 std), as the reference implementation does.
    ``p_clean``: (N, K) clean-input probabilities, detached. ``noise``: optional pre-drawn
    standard-normal tensor shaped like ``x``.
    """
    x = x.detach()
    eps, step_size = per_example(eps, x), per_example(step_size, x)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    delta = torch.clamp(0.001 * noise, -eps, eps)
    with torch.enable_grad():
        for _ in range(steps):
            delta = _trades_step(model, x, p_clean, delta, eps, step_size)
    return AttackResult((x + delta).detach())


def _trades_step(model, x, p_clean, delta, eps, step_size) -> torch.Tensor:
    """One signed-gradient ascent step on KL(p_clean || p(x + delta)), projected to the ball."""
    delta.requires_grad_(True)
    log_p_adv = F.log_softmax(model(x + delta), dim=1)
    kl = F.kl_div(log_p_adv, p_clean, reduction="sum")
    (grad,) = torch.autograd.grad(kl, delta)
    with torch.no_grad():
        delta = (delta + step_size * grad.sign()).clamp_(-eps, eps)
        return (x + delta).clamp_(0, 1) - x
