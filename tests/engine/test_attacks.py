import torch

from fairat.engine.attacks import cw_margin_loss, per_sample_loss, pgd_attack, trades_attack


def _batch(digits, n=64):
    x = digits.train.images[:n].float() / 255
    return x, digits.train.labels[:n]


def test_pgd_stays_in_eps_ball_and_pixel_range(digits, trained_model):
    x, y = _batch(digits)
    eps = 0.1
    adv = pgd_attack(trained_model, x, y, eps, 0.03, steps=5).x_adv
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_raises_the_loss(digits, trained_model):
    x, y = _batch(digits)
    with torch.no_grad():
        clean = per_sample_loss(trained_model(x), y).mean()
        adv = pgd_attack(trained_model, x, y, 0.1, 0.03, steps=10).x_adv
        attacked = per_sample_loss(trained_model(adv), y).mean()
    assert attacked > clean + 0.05


def test_pgd_leaves_weight_gradients_untouched(digits, trained_model):
    x, y = _batch(digits)
    pgd_attack(trained_model, x, y, 0.1, 0.03, steps=3)
    assert all(p.grad is None for p in trained_model.parameters())


def test_track_best_reports_correctness_at_returned_point(digits, trained_model):
    x, y = _batch(digits)
    res = pgd_attack(trained_model, x, y, 0.1, 0.03, steps=5, track_best=True)
    with torch.no_grad():
        logits = trained_model(res.x_adv)
    assert torch.equal(res.correct, logits.argmax(1) == y)
    assert torch.allclose(res.loss, per_sample_loss(logits, y), atol=1e-5)
    # Zero steps with no random start is the clean point.
    clean = pgd_attack(trained_model, x, y, 0.1, 0.03, steps=0, random_start=False, track_best=True)
    assert torch.equal(clean.x_adv, x)


def test_pgd_is_repeatable_with_a_seeded_generator(digits, trained_model):
    x, y = _batch(digits)
    a = pgd_attack(trained_model, x, y, 0.1, 0.03, 3, generator=torch.Generator().manual_seed(1))
    b = pgd_attack(trained_model, x, y, 0.1, 0.03, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x_adv, b.x_adv)


def test_cw_margin_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(cw_margin_loss(logits, y), torch.tensor([-2.0, 3.0]))


def test_cw_attack_raises_margin_and_soft_targets_work(digits, trained_model):
    x, y = _batch(digits)
    with torch.no_grad():
        before = cw_margin_loss(trained_model(x), y).mean()
        adv = pgd_attack(trained_model, x, y, 0.1, 0.03, 10, loss="cw").x_adv
        assert cw_margin_loss(trained_model(adv), y).mean() > before
    soft = torch.nn.functional.one_hot(y, 10).float()
    adv_soft = pgd_attack(trained_model, x, soft, 0.1, 0.03, 2).x_adv
    assert (adv_soft - x).abs().max() <= 0.1 + 1e-6


def test_trades_attack_increases_kl_within_eps(digits, trained_model):
    x, _ = _batch(digits)
    with torch.no_grad():
        p = torch.softmax(trained_model(x), 1)
    start = trades_attack(trained_model, x, p, 0.1, 0.03, 0, generator=torch.Generator().manual_seed(0))
    adv = trades_attack(trained_model, x, p, 0.1, 0.03, 5, generator=torch.Generator().manual_seed(0))
    assert (adv.x_adv - x).abs().max() <= 0.1 + 1e-6

    def kl(point):
        with torch.no_grad():
            return torch.nn.functional.kl_div(torch.log_softmax(trained_model(point), 1), p,
                                              reduction="sum")

    assert kl(adv.x_adv) > 10 * kl(start.x_adv)
