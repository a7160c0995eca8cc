import torch

from fairat.engine.methods.fairat import FairATConfig
from fairat.engine.hard_examples import HardExampleTracker, example_scores


def test_selection_picks_the_highest_scores_globally():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    tracker = HardExampleTracker(labels, 3, FairATConfig(hard_ratio=0.3, per_class=False))
    scores = torch.tensor([0.1, 5.0, 0.2, 4.0, 0.3, 0.4, 3.0, 0.5, 0.6, 0.7])
    tracker.update(torch.arange(10), scores)
    assert tracker.select().tolist() == [1, 3, 6]
    assert tracker.histogram(tracker.select()) == [1, 1, 1]


def test_per_class_quota_takes_the_top_of_every_class():
    labels = torch.tensor([0] * 10 + [1] * 10)
    tracker = HardExampleTracker(labels, 2, FairATConfig(hard_ratio=0.2, per_class=True,
                                                         class_power=0.0))
    scores = torch.cat([torch.arange(10.0) + 100, torch.arange(10.0)])  # class 0 always harder
    tracker.update(torch.arange(20), scores)
    assert tracker.select().tolist() == [8, 9, 18, 19]
    global_tracker = HardExampleTracker(labels, 2, FairATConfig(hard_ratio=0.2, per_class=False))
    global_tracker.update(torch.arange(20), scores)
    assert global_tracker.histogram(global_tracker.select()) == [4, 0]


def test_scores_are_an_exponential_moving_average_and_unseen_are_not_eligible():
    labels = torch.zeros(4, dtype=torch.long)
    tracker = HardExampleTracker(labels, 1, FairATConfig(hard_ratio=1.0, score_ema=0.9, per_class=False))
    tracker.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
    tracker.update(torch.tensor([0]), torch.tensor([11.0]))
    assert torch.allclose(tracker.scores[:2], torch.tensor([2.0, 2.0]))
    assert tracker.select().tolist() == [0, 1]  # 2 and 3 never scored


def test_state_round_trip():
    labels = torch.tensor([0, 1, 0, 1])
    a = HardExampleTracker(labels, 2, FairATConfig(hard_ratio=0.5, per_class=False))
    a.update(torch.arange(4), torch.tensor([1.0, 3.0, 2.0, 0.0]))
    b = HardExampleTracker(labels, 2, FairATConfig(hard_ratio=0.5, per_class=False))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.select(), b.select())


def test_example_scores_kinds():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0])
    ce = example_scores("adv_ce", logits, None, y)
    assert ce[1] > ce[0]
    ent = example_scores("entropy", logits, None, y)
    assert torch.isclose(ent[1], torch.log(torch.tensor(2.0)))
    assert torch.equal(example_scores("clean_ce", logits, logits * 0, y), torch.full((2,), ce[1].item()))


def test_class_power_gives_the_hardest_class_the_largest_quota():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    scores = torch.cat([torch.full((10,), 1.0), torch.full((10,), 2.0), torch.full((10,), 4.0)])
    scores = scores + torch.arange(30) * 1e-3  # distinct, so the top within a class is defined
    equal = HardExampleTracker(labels, 3, FairATConfig(hard_ratio=0.3, per_class=True,
                                                       class_power=0.0))
    weighted = HardExampleTracker(labels, 3, FairATConfig(hard_ratio=0.3, per_class=True,
                                                          class_power=1.0))
    for tracker in (equal, weighted):
        tracker.update(torch.arange(30), scores)
    assert equal.histogram(equal.select()) == [3, 3, 3]
    # budget 9 split 1:2:4 -> floor(9/7), floor(18/7), floor(36/7) = 1, 2, 5
    assert weighted.histogram(weighted.select()) == [1, 2, 5]
    picked = weighted.select()
    assert set(picked[labels[picked] == 2].tolist()) == set(range(25, 30))  # the class's hardest


def test_class_power_quota_is_capped_at_the_class_size():
    labels = torch.tensor([0] * 2 + [1] * 18)
    tracker = HardExampleTracker(labels, 2, FairATConfig(hard_ratio=0.5, per_class=True,
                                                         class_power=8.0))
    tracker.update(torch.arange(20), torch.cat([torch.full((2,), 10.0), torch.full((18,), 1.0)]))
    assert tracker.class_quotas(torch.arange(20)).tolist() == [2, 8]  # the excess moves on


def test_the_random_control_draws_fairats_count_uniformly_not_by_score():
    from fairat.engine.hard_examples import copy_count, random_choice

    # FairAT's global selection and the control copy the same number per epoch
    labels = torch.arange(50) % 5
    tracker = HardExampleTracker(labels, 5, FairATConfig(hard_ratio=0.2, per_class=False))
    tracker.update(torch.arange(50), torch.arange(50.0))  # the hardest are 40..49
    assert copy_count(0.2, 50) == tracker.select().numel() == 10
    draws = [random_choice(50, 10, seed=3, epoch=e) for e in range(400)]
    for d in draws:
        assert d.numel() == 10 and d.unique().numel() == 10 and (d.diff() > 0).all()
    # uniform: every index is drawn about 400 * 10 / 50 = 80 times (binomial sd ~8); the
    # top-scored 10 are drawn no more often than the rest (by score it would be 400 times each)
    counts = torch.bincount(torch.cat(draws), minlength=50).float()
    assert counts.min() >= 40 and counts.max() <= 120, counts
    assert abs(counts[40:].mean() - counts[:40].mean()) < 20
    # the draw depends on seed and epoch only: repeatable, different per epoch and per seed
    assert torch.equal(random_choice(50, 10, 3, 7), draws[7])
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(random_choice(50, 10, 4, 0), draws[0])
