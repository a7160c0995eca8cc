"""FairAT's hard examples: score every training example, select the hardest, plan their copies.

Why a moving average: the training step already computes each example's adversarial cross-entropy,
so keeping an exponential moving average of it (``score_ema``) identifies hard examples with no
extra forward pass. The scores are *global*: under data parallelism every rank feeds the scores of
its shard through :meth:`HardExampleTracker.update` after an all-gather, so every rank holds the
same scores and selects the same hard examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fairat.config import FairATConfig, ScoreKind


def example_scores(kind: ScoreKind, logits_adv: torch.Tensor, logits_clean: torch.Tensor | None,
                   targets: torch.Tensor) -> torch.Tensor:
    """Per-example hardness from logits the training step already has.

    Args:
        kind: "adv_ce" (cross-entropy at the adversarial input), "clean_ce" (at the clean input;
            needs ``logits_clean``) or "entropy" (predictive entropy at the adversarial input).
        targets: (N,) labels or (N, K) probability targets.
    Returns (N,) float, detached.
    """
    with torch.no_grad():
        if kind == "adv_ce":
            return F.cross_entropy(logits_adv.float(), targets, reduction="none")
        if kind == "clean_ce":
            if logits_clean is None:
                raise ValueError("score 'clean_ce' needs clean logits")
            return F.cross_entropy(logits_clean.float(), targets, reduction="none")
        log_p = F.log_softmax(logits_adv.float(), dim=1)
        return -(log_p.exp() * log_p).sum(1)


class HardExampleTracker:
    """Moving-average scores of all N training examples and the selection rule over them.

    Args:
        labels: (N,) int64 training labels (any device; scores live beside them).
        num_classes: K.
        cfg: ratio, EMA weight and per-class quota switch.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, cfg: FairATConfig) -> None:
        self.labels = labels
        self.num_classes = num_classes
        self.cfg = cfg
        self.scores = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
        self.seen = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)

    def update(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Blend new per-example scores in; an example's first score is taken as is."""
        indices = indices.to(self.scores.device)
        values = values.detach().float().to(self.scores.device)
        old = self.scores[indices]
        beta = self.cfg.score_ema
        blended = torch.where(self.seen[indices], beta * old + (1 - beta) * values, values)
        self.scores[indices] = blended
        self.seen[indices] = True

    def select(self) -> torch.Tensor:
        """Indices (sorted) of the hard examples: the top ``hard_ratio`` by score.

        Globally by default. With ``per_class`` each class gets a quota and contributes its own
        hardest examples: equal fractions of every class (``class_power`` 0), or a budget of
        ``hard_ratio * N`` split in proportion to each class's mean score raised to
        ``class_power``, so the classes the model finds hardest get the most copies (why: a global
        ranking spreads copies evenly and can miss the worst class). Examples never scored are not
        eligible. Ties break by lower index, so the choice is deterministic.
        """
        eligible = self.seen.nonzero().squeeze(1)
        if eligible.numel() == 0:
            return eligible
        if not self.cfg.per_class:
            return self._top(eligible, round(self.cfg.hard_ratio * self.labels.shape[0]))
        quotas = self.class_quotas(eligible)
        chosen = [self._top(eligible[self.labels[eligible] == c], int(quotas[c]))
                  for c in range(self.num_classes)]
        return torch.cat(chosen).sort().values

    def class_quotas(self, eligible: torch.Tensor) -> torch.Tensor:
        """(K,) int64 hard-example quota per class (see :meth:`select`)."""
        sizes = torch.bincount(self.labels, minlength=self.num_classes).double()
        if self.cfg.class_power == 0:
            return torch.round(self.cfg.hard_ratio * sizes).long()
        labels = self.labels[eligible]
        sums = torch.zeros(self.num_classes, dtype=torch.float64, device=sizes.device)
        sums.index_add_(0, labels, self.scores[eligible].double())
        counts = torch.bincount(labels, minlength=self.num_classes).double()
        mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
        weights = mean.clamp_min(1e-12) ** self.cfg.class_power
        budget = self.cfg.hard_ratio * float(sizes.sum())
        quotas = torch.zeros_like(sizes)
        open_ = sizes > 0
        for _ in range(self.num_classes):  # a class capped at its size hands its excess on
            left = budget - float(quotas.sum())
            if left < 1 or not open_.any():
                break
            share = torch.where(open_, weights, torch.zeros_like(weights))
            quotas = torch.minimum(quotas + torch.floor(left * share / share.sum()), sizes)
            open_ = quotas < sizes
        return quotas.long()

    def _top(self, candidates: torch.Tensor, k: int) -> torch.Tensor:
        k = min(max(k, 0), candidates.numel())
        # Stable sort on descending score keeps index order among ties.
        order = torch.sort(self.scores[candidates], descending=True, stable=True).indices[:k]
        return candidates[order].sort().values

    def histogram(self, selected: torch.Tensor) -> list[int]:
        """Hard examples per class (the method's key diagnostic)."""
        counts = torch.bincount(self.labels[selected], minlength=self.num_classes)
        return [int(v) for v in counts.tolist()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["scores"].shape != self.scores.shape:
            raise ValueError(f"hard-example scores in the checkpoint cover {state['scores'].shape[0]} "
                             f"examples, the training set has {self.scores.shape[0]}")
        self.scores = state["scores"].to(self.scores.device).float()
        self.seen = state["seen"].to(self.seen.device).bool()
