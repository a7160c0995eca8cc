"""Class-wise fair adversarial training: per-class weights and radii from class statistics.

WAT (Li and Liu, AAAI 2023), FRL (Xu et al., ICML 2021), CFA (Wei et al., CVPR 2023) and DAFA
(Lee et al., ICLR 2024) as policies of the one training loop (bottom of this module); each
method's module in :mod:`fairat.engine.methods` builds its policy.

WAT, worst-class adversarial training:

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

from dataclasses import dataclass
from typing import Any

import torch

from fairat.engine.methods import phase_epoch
from fairat.engine.objectives import ClassTerms


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


# --- the class-wise fair-AT methods as policies of the one training loop ----------------------
#
# A policy turns class statistics into per-example radii and loss weights (ClassTerms) for the base
# objective, and updates itself once per epoch from the epoch's training statistics and the
# validation record. Statistics come from the training set or the validation split, never the test
# split. Every policy's state is a dict of tensors and floats, saved in ``last.pt``.


@dataclass
class EpochStats:
    """What an epoch of training saw, per class (originals only, not FairAT copies).

    ``robust_acc`` (C,) is the training attack's accuracy per class (CFA's ``A_c``);
    ``similarity`` (C, C) row i is the mean softmax at the adversarial examples of class i (DAFA;
    None for the other methods, which do not need it).
    """

    robust_acc: torch.Tensor
    similarity: torch.Tensor | None = None


class ClassPolicy:
    """Base: no class-wise terms. Subclasses override :meth:`class_terms` and :meth:`after_epoch`.

    Terms are per class; the Trainer moves them to the device after each update and indexes them
    by label per batch, so no policy computes anything per example.
    """

    needs_similarity = False  # True: the loop must gather EpochStats.similarity (DAFA)

    def class_terms(self) -> ClassTerms:
        """(C,) terms per class, as the policy stands now; None fields = the plain base method."""
        return ClassTerms()

    def terms(self, labels: torch.Tensor) -> ClassTerms:
        """Per-example terms for ``labels`` (N,), on their device."""
        return self.class_terms().to(labels.device).index(labels)

    def after_epoch(self, epochs_done: int, stats: EpochStats,
                    val: dict[str, Any]) -> dict[str, Any]:
        """Update from the epoch just trained; returns fields for the epoch's history record."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _per_class(values: dict[str, float] | list[float]) -> torch.Tensor:
    seq = list(values.values()) if isinstance(values, dict) else list(values)
    return torch.tensor(seq, dtype=torch.float64)


def _named(tensor: torch.Tensor, names: list[str]) -> dict[str, float]:
    return dict(zip(names, (round(v, 6) for v in tensor.tolist())))


class WATPolicy(ClassPolicy):
    """WAT: the whole per-example objective weighed by ``w[y] + w[average]``."""

    def __init__(self, num_classes: int, eta: float, names: list[str]) -> None:
        self.game, self.names = WATWeights(num_classes, eta), names

    def class_terms(self) -> ClassTerms:
        w = self.game.example_weights(torch.arange(len(self.names)))
        return ClassTerms(w_natural=w, w_robust=w)

    def after_epoch(self, epochs_done, stats, val):
        self.game.update(val["val_cost_per_class"], val["val_cost_avg"])
        return {"class_weights": _named(self.game.weights()[:-1], self.names)}

    def state_dict(self):
        return self.game.state_dict()

    def load_state_dict(self, state):
        self.game.load_state_dict(state)


def frl_project(lam: torch.Tensor, limit: float) -> torch.Tensor:
    """Clip multipliers at 0 and scale them back to ``sum <= limit`` (FRL's normalisation)."""
    lam = lam.clamp(min=0)
    total = float(lam.sum())
    return lam * (limit / total) if total > limit else lam


def frl_class_weights(lam: torch.Tensor) -> torch.Tensor:
    """(C,) example weights ``1 + C * lam_c - sum(lam)``: mean 1 over classes, equal when lam is.

    The authors' cost-sensitive weights are ``1/C + lam_c - mean(lam)`` and their loss divides by
    the batch's weight sum; scaling by C instead keeps FRL at exactly TRADES' loss scale while the
    multipliers are 0, so both train under the same learning rate.
    """
    c = lam.numel()
    return 1 + c * lam - lam.sum()


def frl_margins(lam_margin: torch.Tensor) -> torch.Tensor:
    """(C,) radius multipliers ``clip(exp(2 * lam), 0.98, 2.5)`` (the authors' remargin map)."""
    return torch.exp(2 * lam_margin).clamp(0.98, 2.5)


def frl_step_scale(reference_updates: int | None, updates: int) -> float:
    """Factor on FRL's per-update steps so that ``updates`` steps here move the multipliers as
    far in total as the authors' ``reference_updates`` (1.0 when None: steps as given)."""
    return 1.0 if reference_updates is None else reference_updates / updates


def frl_halvings(k: int, updates: int, halve_every: float) -> int:
    """Halvings of the reweighting step at update ``k`` (0-based) of ``updates``: one per
    ``halve_every`` of the phase, at most two (``1/3``: the authors' every 40 of 120 epochs)."""
    return min(2, int(k // (halve_every * updates)))


class FRLPolicy(ClassPolicy):
    """FRL (Xu et al., ICML 2021), reweight + remargin, on TRADES.

    After every epoch from ``start``: with per-class validation clean error ``e_c`` and boundary
    error ``b_c`` (clean-correct but attacked-wrong), and their class means ``e``, ``b``, the
    multipliers move by the constraint violations ``e_c - e - bound_clean`` and
    ``b_c - b - bound_boundary``: the clean and boundary reweighting multipliers by
    ``rate_weight`` and ``2 * rate_weight`` (then projected), the margin multiplier by
    ``rate_margin``, each times :func:`frl_step_scale` so that the totals over the phase are the
    authors' (:mod:`fairat.engine.methods.frl`); ``rate_weight`` halves per :func:`frl_halvings`.
    """

    def __init__(self, cfg: Any, num_classes: int, epochs: int, names: list[str]) -> None:
        self.cfg, self.names = cfg, names
        self.start = phase_epoch(cfg.start, epochs)
        self.phase = max(epochs - self.start, 1)  # updates that act on training
        self.scale = frl_step_scale(cfg.reference_updates, self.phase)
        self.bound_clean, self.bound_boundary = cfg.bounds()
        self.lam = torch.zeros(3, num_classes, dtype=torch.float64)  # clean, boundary, margin

    def class_terms(self):
        return ClassTerms(eps_scale=frl_margins(self.lam[2]) if self.cfg.remargin else None,
                          w_natural=frl_class_weights(self.lam[0]),
                          w_robust=frl_class_weights(self.lam[1]))

    def after_epoch(self, epochs_done, stats, val):
        if epochs_done < self.start:
            return {}
        clean = _per_class(val["val_clean_per_class"])
        robust = _per_class(val["val_robust_per_class"])
        clean_err, bndy_err = 1 - clean, clean - robust
        gamma_clean = clean_err - clean_err.mean() - self.bound_clean
        gamma_bndy = bndy_err - bndy_err.mean() - self.bound_boundary
        halvings = frl_halvings(epochs_done - self.start, self.phase, self.cfg.halve_every)
        rate = self.cfg.rate_weight * self.scale * 0.5 ** halvings
        self.lam[0] = frl_project(self.lam[0] + rate * gamma_clean, self.cfg.limit)
        self.lam[1] = frl_project(self.lam[1] + 2 * rate * gamma_bndy, self.cfg.limit)
        if self.cfg.remargin:
            self.lam[2] = self.lam[2] + self.cfg.rate_margin * self.scale * gamma_bndy
        out = {"class_weights": _named(frl_class_weights(self.lam[0]), self.names),
               "class_weights_boundary": _named(frl_class_weights(self.lam[1]), self.names)}
        if self.cfg.remargin:
            out["class_eps_scale"] = _named(frl_margins(self.lam[2]), self.names)
        return out

    def state_dict(self):
        return {"lam": self.lam.clone()}

    def load_state_dict(self, state):
        self.lam = state["lam"].double().clone()


def cfa_terms(robust_acc: torch.Tensor, cfg: Any, beta: float, trades: bool,
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """CFA's class-wise radius multipliers and, on TRADES, natural / robust weights.

    CCM: radius ``(lambda_margin + A_c) * eps``. CCR: the authors train
    ``(1 - beta_c) * CE + beta_c * KL`` with ``beta_c = b_c / (1 + b_c)``, ``b_c = (lambda_beta +
    A_c) * beta``; multiplied by ``1 + beta`` it is exactly TRADES' ``CE + beta * KL`` when
    ``b_c = beta``, so we return weights on that scale.
    """
    eps_scale = cfg.lambda_margin + robust_acc
    if not trades:
        return eps_scale, None, None
    b = (cfg.lambda_beta + robust_acc) * beta
    beta_c = b / (1 + b)
    return eps_scale, (1 + beta) * (1 - beta_c), (1 + beta) * beta_c / beta


class CFAPolicy(ClassPolicy):
    """CFA (Wei et al., CVPR 2023): class-wise calibrated margins (CCM) and, on a TRADES base,
    regularisation (CCR), from the previous epoch's per-class training robust accuracy. FAWA (the
    weight average) lives in the Trainer, since it averages the model, not the loss."""

    def __init__(self, cfg: Any, num_classes: int, epochs: int, beta: float, trades: bool,
                 names: list[str]) -> None:
        self.cfg, self.beta, self.trades, self.names = cfg, beta, trades, names
        self.begin = phase_epoch(cfg.begin, epochs)
        self.acc: torch.Tensor | None = None  # A_c, once calibration has begun

    def class_terms(self):
        if self.acc is None:
            return ClassTerms()
        eps_scale, w_nat, w_rob = cfa_terms(self.acc, self.cfg, self.beta, self.trades)
        return ClassTerms(eps_scale=eps_scale, w_natural=w_nat, w_robust=w_rob)

    def after_epoch(self, epochs_done, stats, val):
        if epochs_done < self.begin:
            return {}
        self.acc = stats.robust_acc.double().cpu().clone()
        eps_scale, _, _ = cfa_terms(self.acc, self.cfg, self.beta, self.trades)
        return {"class_eps_scale": _named(eps_scale, self.names)}

    def state_dict(self):
        return {"acc": None if self.acc is None else self.acc.clone()}

    def load_state_dict(self, state):
        self.acc = None if state["acc"] is None else state["acc"].double().clone()


def dafa_class_weights(similarity: torch.Tensor, lam: float) -> torch.Tensor:
    """DAFA's class weights from the class-similarity matrix ``S`` (row i: mean adversarial
    softmax over examples of class i, so ``S[i, i]`` is how well class i holds up).

    As the authors compute them (rucy74/DAFA ``utils.calculate_class_weights``, commit 74657cd,
    Sep 2024; earlier commits had the easier branch transposed): for every pair of a harder class
    ``h`` (``S[h, h] < S[e, e]``) and an easier class ``e``, ``h`` gains ``lam * S[h, e] * S[e, e]``
    (how much of ``h`` is mistaken for ``e``, times how sure ``e`` is) and ``e`` gives up exactly
    that amount, so the weights sum to the number of classes. A tie counts both as easier, as in
    the authors' loop. Clipped at 0 (the authors do not clip; reachable only when many classes
    are confused into one easy class at large ``lam``), since the weights also scale the attack
    radius.
    """
    s = similarity.double()
    diag = s.diagonal()
    harder = diag[:, None] < diag[None, :]  # [i, j]: class i is harder than class j
    gain = s * diag[None, :]  # [i, j]: what i gains from j when i is the harder one
    contrib = torch.where(harder, gain, -gain.T)  # easier i gives up what j gains from it
    contrib.fill_diagonal_(0)
    return (1 + lam * contrib.sum(1)).clamp(min=0)


class DAFAPolicy(ClassPolicy):
    """DAFA (Lee et al., ICLR 2024): after warm-up, once, class weights from class similarity on
    the training set; each class's weight then scales its loss term (TRADES: the clean CE, as the
    authors do; PGD-AT: the adversarial CE) and its attack radius and step size."""

    def __init__(self, cfg: Any, epochs: int, trades: bool, names: list[str]) -> None:
        self.cfg, self.trades, self.names = cfg, trades, names
        self.warmup = phase_epoch(cfg.warmup, epochs, minimum=1)
        self.weights: torch.Tensor | None = None

    needs_similarity = True

    def class_terms(self):
        if self.weights is None:
            return ClassTerms()
        w = self.weights
        if self.trades:
            return ClassTerms(eps_scale=w, step_scale=w, w_natural=w)
        return ClassTerms(eps_scale=w, step_scale=w, w_robust=w)

    def after_epoch(self, epochs_done, stats, val):
        if epochs_done != self.warmup or self.weights is not None:
            return {}
        self.weights = dafa_class_weights(stats.similarity.cpu(), self.cfg.lam)
        return {"class_weights": _named(self.weights, self.names)}

    def state_dict(self):
        return {"weights": None if self.weights is None else self.weights.clone()}

    def load_state_dict(self, state):
        self.weights = None if state["weights"] is None else state["weights"].double().clone()
