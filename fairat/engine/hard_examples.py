"""FairAT's hard examples: score every training example, select the hardest, augment their copies.

The copy machinery (:class:`AugmentedCopiesHook`) is shared with the ``random_copies`` control,
which copies as many examples drawn at random instead of the hardest ones.

Why a moving average: the training step already computes each example's adversarial cross-entropy,
so keeping an exponential moving average of it (``score_ema``) identifies hard examples with no
extra forward pass. The scores are *global*: under data parallelism every rank feeds the scores of
its shard through :meth:`HardExampleTracker.update` after an all-gather, so every rank holds the
same scores and selects the same hard examples.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from fairat.engine.attacks import pgd_attack
from fairat.engine.augment import augment_hard
from fairat.engine.distributed import all_gather_cat, block_shard
from fairat.engine.methods.fairat import FairATConfig, ScoreKind
from fairat.engine.objectives import BatchHook, StepOutput
from fairat.engine.seeds import generator


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
            return self._top(eligible, copy_count(self.cfg.hard_ratio, self.labels.shape[0]))
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


class AugmentedCopiesHook(BatchHook):
    """Extra augmented copies in the training loop: from epoch ``start`` on, the examples that
    :meth:`choose` returns get ``cfg.copies`` copies each in the epoch plan, augmented with
    ``cfg.augment`` at ``cfg.strength``. The selection strategy is the subclass's: FairAT's hard
    examples (:class:`HardExampleHook`) or the control's uniform draw (:class:`RandomCopiesHook`),
    so both train the same copies the same way and differ only in which examples are copied.

    Targets are one-hot for every batch (mixing augmentations make probability targets), so a
    run computes the same loss whether or not a batch holds copies.
    """

    def __init__(self, cfg: Any, train: Any, num_classes: int, start: int) -> None:
        self.cfg, self.attack, self.seed = cfg, train.attack, train.seed
        self.num_classes, self.start = num_classes, start
        self.copies = cfg.copies

    def select(self, trainer: Any, epoch: int) -> torch.Tensor:
        if epoch < self.start:
            return torch.zeros(0, dtype=torch.long)
        return self.choose(trainer, epoch).cpu()

    def choose(self, trainer: Any, epoch: int) -> torch.Tensor:  # pragma: no cover - abstract
        """(M,) int64 sorted indices of the examples to copy in ``epoch`` (>= start)."""
        raise NotImplementedError

    def augment(self, x: torch.Tensor, labels: torch.Tensor, is_copy: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        targets = F.one_hot(labels, self.num_classes).float()
        rows = is_copy.nonzero().squeeze(1)
        if rows.numel():
            xa, ya = augment_hard(x[rows], targets[rows], self.cfg.augment, gen, self.cfg.strength)
            x, targets = x.index_copy(0, rows, xa), targets.index_copy(0, rows, ya)
        return x, targets


def copy_count(hard_ratio: float, n: int) -> int:
    """Examples copied per epoch at ``hard_ratio`` of ``n``: FairAT's global selection takes
    exactly this many (its per-class quotas split the same budget, less up to one per class to
    rounding down), and the random control draws exactly this many."""
    return round(hard_ratio * n)


def random_choice(n: int, count: int, seed: int, epoch: int) -> torch.Tensor:
    """(count,) sorted indices drawn uniformly without replacement from ``range(n)``, from a
    stream of ``seed`` and ``epoch`` alone: every rank draws the same, a resumed run redraws
    the same, and no model output enters the choice."""
    gen = generator(seed, "random-copies", epoch)
    return torch.randperm(n, generator=gen)[:min(max(count, 0), n)].sort().values


class RandomCopiesHook(AugmentedCopiesHook):
    """The control for FairAT: as many copies per epoch as FairAT's selection would make
    (:func:`copy_count`), drawn uniformly at random from the training set each epoch, with the
    same augmentations, copies per example and warm-up. Stateless: the draw depends on the seed
    and epoch only, so a resumed run continues exactly."""

    def __init__(self, train: Any, labels: torch.Tensor, num_classes: int, start: int) -> None:
        super().__init__(train.random_copies, train, num_classes, start)
        self.n = int(labels.shape[0])
        self.count = copy_count(train.random_copies.hard_ratio, self.n)

    def choose(self, trainer: Any, epoch: int) -> torch.Tensor:
        return random_choice(self.n, self.count, self.seed, epoch)


class HardExampleHook(AugmentedCopiesHook):
    """FairAT in the training loop: from epoch ``start`` on, the hard examples of every epoch get
    ``copies`` augmented copies in the plan; every step's logits update the scores."""

    def __init__(self, train: Any, labels: torch.Tensor, num_classes: int, start: int) -> None:
        super().__init__(train.fairat, train, num_classes, start)
        self.tracker = HardExampleTracker(labels, num_classes, train.fairat)
        self.need_clean = train.fairat.score == "clean_ce"

    def choose(self, trainer: Any, epoch: int) -> torch.Tensor:
        every = self.cfg.rescore_every
        if every and (epoch - self.start) % every == 0:
            self.rescore(trainer, epoch)
        return self.tracker.select()

    def observe(self, trainer: Any, idx: torch.Tensor, out: StepOutput, targets: torch.Tensor,
                original: torch.Tensor) -> None:
        scores = example_scores(self.cfg.score, out.logits_adv, out.logits_clean, targets)
        self.tracker.update(all_gather_cat(idx[original], trainer.ctx),
                            all_gather_cat(scores[original], trainer.ctx))

    def rescore(self, trainer: Any, epoch: int) -> None:
        """Optional full pass: replace every score by a fresh one from the current model.

        Costs a forward pass per example (plus the attack for ``adv_ce``); off by default, since the
        moving average of training losses already tracks hardness for free.
        """
        model, ctx, n = trainer.model, trainer.ctx, trainer.images.shape[0]
        model.eval()
        blocks = block_shard(n, 512, ctx)
        rounds = math.ceil(n / (512 * ctx.world_size))  # same collectives on every rank
        for i in range(rounds):
            block, idx = blocks[i] if i < len(blocks) else (-1, torch.zeros(0, dtype=torch.long))
            idx = idx.to(trainer.device)
            x, y = trainer.images[idx].float().div_(255), trainer.labels[idx]
            with trainer.autocast():
                x_adv = x
                if self.cfg.score != "clean_ce" and idx.numel():
                    a = self.attack
                    gen = generator(self.seed, "rescore", epoch, block, device=trainer.device)
                    x_adv = pgd_attack(model, x, y, a.eps, a.step_size, a.steps,
                                       generator=gen).x_adv
                with torch.no_grad():
                    logits_adv = model(x_adv)
            scores = example_scores(self.cfg.score, logits_adv, logits_adv, y)
            gathered = all_gather_cat(idx, ctx)
            self.tracker.scores[gathered] = all_gather_cat(scores, ctx)
            self.tracker.seen[gathered] = True

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
