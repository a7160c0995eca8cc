"""WAT's class weights on hand-made inputs, and a WAT run through the one training loop."""

from __future__ import annotations

import math

import pytest
import torch

from fairat.config import ConfigError, DataConfig, Params
from fairat.engine.class_weights import WATWeights, hedge_weights
from fairat.engine.methods.wat import WATConfig
from fairat.engine.objectives import validation_cost


def test_hedge_starts_uniform_and_sums_to_the_number_of_classes():
    w = WATWeights(num_classes=3, eta=0.1).weights()
    assert w.tolist() == pytest.approx([0.75, 0.75, 0.75, 0.75])  # C / (C + 1)
    assert float(w.sum()) == pytest.approx(3.0)


def test_a_class_that_keeps_losing_gains_weight_exactly_as_hedge_says():
    wat = WATWeights(num_classes=2, eta=0.5)
    wat.update([2.0, 0.0], 1.0)  # class 0 loses on validation
    wat.update([2.0, 0.0], 1.0)
    cumulative = torch.tensor([4.0, 0.0, 2.0])
    expected = [2 * math.exp(0.5 * c) / sum(math.exp(0.5 * d) for d in cumulative.tolist())
                for c in cumulative.tolist()]
    assert wat.weights().tolist() == pytest.approx(expected)
    w = wat.weights()
    assert w[0] > w[2] > w[1] and float(w.sum()) == pytest.approx(2.0)
    example = wat.example_weights(torch.tensor([0, 1, 1]))
    assert example.tolist() == pytest.approx([expected[0] + expected[2], expected[1] + expected[2],
                                              expected[1] + expected[2]], rel=1e-6)


def test_hedge_is_stable_for_large_cumulative_costs():
    w = hedge_weights(torch.tensor([1e4, 0.0, 0.0], dtype=torch.float64), eta=0.1)
    assert torch.isfinite(w).all() and w.tolist() == pytest.approx([2.0, 0.0, 0.0])


def test_state_round_trips_and_bad_costs_are_refused():
    wat = WATWeights(num_classes=2, eta=0.2)
    wat.update([1.0, 3.0], 2.0)
    other = WATWeights(num_classes=2, eta=0.9)
    other.load_state_dict(wat.state_dict())
    assert torch.equal(other.weights(), wat.weights())
    with pytest.raises(ValueError, match="finite"):
        wat.update([1.0, float("nan")], 2.0)
    with pytest.raises(ValueError, match="expected 2"):
        wat.update([1.0], 2.0)


def test_validation_cost_is_the_base_objective():
    clean = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    adv = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1])
    ce_adv = torch.nn.functional.cross_entropy(adv, y, reduction="none")
    assert validation_cost("pgd_at", clean, adv, y, 6.0).tolist() == pytest.approx(ce_adv.tolist())
    same = validation_cost("trades", clean, clean, y, 6.0)  # KL(p || p) = 0: just the clean CE
    ce_clean = torch.nn.functional.cross_entropy(clean, y, reduction="none")
    assert same.tolist() == pytest.approx(ce_clean.tolist(), abs=1e-6)
    assert (validation_cost("trades", clean, adv, y, 6.0) > same).all()


def test_wat_needs_a_validation_split():
    with pytest.raises(ConfigError, match="val_per_class"):
        Params(data=DataConfig(val_per_class=0), train=Params().train.__class__(method="wat"))
    with pytest.raises(ConfigError, match="eta"):
        WATConfig(eta=0.0)


def test_wat_trains_in_the_one_loop_and_logs_its_weights(digits, tmp_path):
    from fairat.config import AttackConfig, ModelConfig, TrainConfig
    from fairat.engine.training import TrainPaths, train

    cfg = TrainConfig(method="wat", epochs=2, batch_size=64, lr=0.05, crop_padding=1, flip=False,
                      attack=AttackConfig(eps=0.1, step_size=0.03, steps=2), val_attack_steps=2,
                      max_batches=3, progress=False, wat=WATConfig(base="pgd_at", eta=0.5))
    summary = train(ModelConfig(name="small_cnn", width=8), cfg, digits,
                    TrainPaths(tmp_path / "m.pt", tmp_path / "ck", tmp_path / "t.json",
                               tmp_path / "h.csv"))
    first, last = summary.history[0], summary.history[-1]
    weights = last["class_weights"]
    assert set(weights) == set(digits.train.class_names)
    assert sum(weights.values()) < 10  # the average expert holds the rest of the mass
    costs = torch.tensor([sum(r["val_cost_per_class"][i] for r in summary.history)
                          for i in range(10)])
    order = sorted(range(10), key=lambda i: costs[i])
    names = digits.train.class_names
    assert weights[names[order[-1]]] >= weights[names[order[0]]]  # the costliest class weighs most
    assert "class_weights" in first


# --- FRL, CFA, DAFA: class statistics and weights on hand-made inputs --------------------------

from fairat.engine.methods.cfa import CFAConfig  # noqa: E402
from fairat.engine.methods.dafa import DAFAConfig  # noqa: E402
from fairat.engine.methods.frl import FRLConfig  # noqa: E402
from fairat.engine.class_weights import (CFAPolicy, DAFAPolicy, EpochStats, FRLPolicy,  # noqa: E402
                                         cfa_terms, dafa_class_weights, frl_class_weights,
                                         frl_margins, frl_project)


def _val(clean, robust):
    names = [str(i) for i in range(len(clean))]
    return {"val_clean_per_class": dict(zip(names, clean)),
            "val_robust_per_class": dict(zip(names, robust))}


def test_frl_projection_and_weights():
    lam = frl_project(torch.tensor([-0.2, 0.3, 0.5], dtype=torch.float64), limit=0.4)
    assert lam.tolist() == pytest.approx([0.0, 0.15, 0.25])  # clipped at 0, scaled to sum 0.4
    assert frl_project(torch.tensor([0.1, 0.1]), 0.5).tolist() == pytest.approx([0.1, 0.1])
    w = frl_class_weights(lam)
    assert w.tolist() == pytest.approx([1 - 0.4, 1 + 0.45 - 0.4, 1 + 0.75 - 0.4])
    assert float(w.mean()) == pytest.approx(1.0)  # weights only move between classes
    assert frl_class_weights(torch.zeros(4)).tolist() == [1, 1, 1, 1]  # plain TRADES at start
    assert frl_margins(torch.tensor([-1.0, 0.0, 0.2, 5.0])).tolist() == pytest.approx(
        [0.98, 1.0, math.exp(0.4), 2.5])


def test_frl_moves_weight_and_margin_to_the_class_that_violates_its_bounds():
    cfg = FRLConfig(start=0.5, bound_clean=0.05, bound_boundary=0.05, rate_weight=0.1,
                    rate_margin=0.1, limit=0.5, reference_updates=None)  # steps as given
    frl = FRLPolicy(cfg, num_classes=3, epochs=10, names=["a", "b", "c"])
    val = _val(clean=[1.0, 1.0, 0.7], robust=[0.9, 0.9, 0.2])  # class c: high clean + boundary error
    assert frl.after_epoch(4, None, val) == {}  # before start: plain TRADES
    assert frl.terms(torch.tensor([0, 2])).w_natural.tolist() == [1.0, 1.0]
    log = frl.after_epoch(5, None, val)
    # clean errors 0, 0, 0.3 (mean 0.1): gamma = -0.15, -0.15, 0.15 -> lam = 0, 0, 0.015
    assert frl.lam[0].tolist() == pytest.approx([0, 0, 0.015])
    # boundary errors 0.1, 0.1, 0.5 (mean 0.2333): gamma_c = 0.2167 -> 2 * rate * gamma
    assert frl.lam[1].tolist() == pytest.approx([0, 0, 2 * 0.1 * (0.5 - 0.7 / 3 - 0.05)])
    assert frl.lam[2][2] > 0 > frl.lam[2][0]
    assert log["class_weights"]["c"] > log["class_weights"]["a"]
    assert log["class_eps_scale"]["c"] > 1 and log["class_eps_scale"]["a"] == pytest.approx(0.98)
    terms = frl.terms(torch.tensor([0, 2, 2]))
    assert terms.w_robust[1] > terms.w_robust[0] and terms.eps_scale.shape == (3,)
    state = frl.state_dict()
    again = FRLPolicy(cfg, 3, 10, ["a", "b", "c"])
    again.load_state_dict(state)
    assert torch.equal(again.lam, frl.lam)


def test_frl_update_totals_match_the_authors_script():
    from fairat.engine.class_weights import frl_halvings, frl_step_scale
    from fairat.engine.methods.frl import updates

    # the authors (frlrmrw.py): 40 updates of rate1 = 0.05, the 40th halved -> 1.975; rate2 0.2
    authors_weight = 39 * 0.05 + 0.025
    authors_margin = 40 * 0.2
    assert authors_weight == pytest.approx(1.975) and authors_margin == pytest.approx(8.0)
    train = Params().train  # 30 epochs, FRL from half-way: 15 updates that act
    assert updates(train) == 15
    frl = FRLPolicy(train.frl, 10, train.epochs, [str(i) for i in range(10)])
    assert frl.scale == pytest.approx(40 / 15)
    steps = [0.05 * frl.scale * 0.5 ** frl_halvings(k, 15, 1.0) for k in range(15)]
    assert sum(steps) == pytest.approx(2.0)  # authors' 1.975 but for their last halving
    assert 15 * 0.2 * frl.scale == pytest.approx(authors_margin)
    # the previous schedule (steps as given, halved at each third): 4.5x less
    old = [0.05 * frl_step_scale(None, 15) * 0.5 ** frl_halvings(k, 15, 1 / 3) for k in range(15)]
    assert sum(old) == pytest.approx(0.4375)
    # halve_every 0.333333 (the digits study's pin) reproduces the old rule exactly
    for n in range(1, 201):
        for k in range(n + 1):
            assert frl_halvings(k, n, 0.333333) == min(2, 3 * k // n), (k, n)


def test_frl_bounds_are_the_running_variants_own():
    assert FRLConfig().bounds() == (0.07, 0.07)  # frlrmrw.py: reweight + remargin
    assert FRLConfig(remargin=False).bounds() == (0.1, 0.1)  # frlrw.py: reweight only
    assert FRLConfig(remargin=False, bound_clean=0.2).bounds() == (0.2, 0.1)
    frl = FRLPolicy(FRLConfig(), 3, 10, ["a", "b", "c"])
    frl.after_epoch(5, None, _val(clean=[1.0, 1.0, 0.7], robust=[0.9, 0.9, 0.2]))
    # clean gamma of c: 0.3 - 0.1 - 0.07 = 0.13, step 0.05 * 40 / 5 = 0.4 -> 0.052
    assert frl.lam[0].tolist() == pytest.approx([0, 0, 0.4 * 0.13])
    # margin of a: boundary gamma 0.1 - 0.7 / 3 - 0.07, step 0.2 * 8
    assert float(frl.lam[2][0]) == pytest.approx(1.6 * (0.1 - 0.7 / 3 - 0.07))
    with pytest.raises(ConfigError, match="reference_updates"):
        FRLConfig(reference_updates=0)


def test_cfa_fawa_decay_covers_the_authors_fraction_of_the_run():
    from fairat.engine.methods.cfa import fawa_decay_per_epoch

    authors = CFAConfig()  # 0.88 per epoch of 200
    assert fawa_decay_per_epoch(authors, 200) == 0.88
    assert fawa_decay_per_epoch(authors, 30) == pytest.approx(0.88 ** (200 / 30))
    assert fawa_decay_per_epoch(authors, 30) == pytest.approx(0.4265, abs=1e-4)
    # the half-life is the same fraction of the run: ln 0.5 / ln 0.88 / 200 = 2.71%
    half_life = math.log(0.5) / math.log(fawa_decay_per_epoch(authors, 30)) / 30
    assert half_life == pytest.approx(math.log(0.5) / math.log(0.88) / 200)
    assert half_life == pytest.approx(0.0271, abs=1e-4)
    # the digits study's pin: 0.88 per epoch of 30, exactly
    assert fawa_decay_per_epoch(CFAConfig(fawa_decay_epochs=30), 30) == 0.88


def test_cfa_fawa_threshold_relative_to_the_runs_best_worst_class(tiny_model):
    from fairat.engine.weight_average import FairWeightAverage

    avg = FairWeightAverage(decay=0.5, threshold=0.85, relative=True)
    assert avg.update(tiny_model, 0.4)  # the best so far is itself
    assert avg.update(tiny_model, 0.8) and avg.bar() == pytest.approx(0.68)
    assert not avg.update(tiny_model, 0.67)  # below 0.85 x 0.8
    assert avg.update(tiny_model, 0.68)
    assert avg.admitted == 3 and avg.best == 0.8
    again = FairWeightAverage(0.5, 0.0)
    again.load_state_dict(avg.state_dict())
    assert again.relative and again.best == 0.8 and again.bar() == pytest.approx(0.68)
    # the authors' absolute rule: 0.24 admits every digits epoch above it
    absolute = FairWeightAverage(decay=0.5, threshold=0.24)
    assert absolute.update(tiny_model, 0.8) and absolute.update(tiny_model, 0.3)
    assert absolute.bar() == 0.24


def test_cfa_margins_and_regularisation_from_training_robust_accuracy():
    acc = torch.tensor([0.2, 0.5], dtype=torch.float64)
    cfg = CFAConfig(lambda_margin=0.5, lambda_beta=0.5)
    eps_scale, w_nat, w_rob = cfa_terms(acc, cfg, beta=6.0, trades=True)
    assert eps_scale.tolist() == pytest.approx([0.7, 1.0])  # the weaker class gets a smaller radius
    b = torch.tensor([0.7 * 6, 1.0 * 6], dtype=torch.float64)
    beta_c = b / (1 + b)
    assert w_nat.tolist() == pytest.approx((7 * (1 - beta_c)).tolist())
    assert (w_rob * 6).tolist() == pytest.approx((7 * beta_c).tolist())
    # at b_c = beta the weights are plain TRADES: CE + beta * KL
    _, n1, r1 = cfa_terms(torch.tensor([0.5], dtype=torch.float64), cfg, 6.0, True)
    assert (float(n1), float(r1)) == pytest.approx((1.0, 1.0))
    assert cfa_terms(acc, cfg, 6.0, trades=False)[1:] == (None, None)

    policy = CFAPolicy(CFAConfig(begin=0.2), 2, epochs=10, beta=6.0, trades=True, names=["a", "b"])
    stats = EpochStats(acc, torch.eye(2))
    assert policy.after_epoch(1, stats, {}) == {} and policy.terms(torch.tensor([0])).eps_scale is None
    assert policy.after_epoch(2, stats, {})["class_eps_scale"] == {"a": 0.7, "b": 1.0}
    assert policy.terms(torch.tensor([1, 0])).eps_scale.tolist() == pytest.approx([1.0, 0.7])


def test_dafa_weights_flow_from_easy_to_similar_hard_classes():
    # class 0 is hard (0.5 kept) and confused with class 1 (easy, 0.9); class 2 stands apart
    s = torch.tensor([[0.5, 0.4, 0.1],
                      [0.05, 0.9, 0.05],
                      [0.0, 0.0, 1.0]], dtype=torch.float64)
    w = dafa_class_weights(s, lam=1.0)
    # by hand, from the authors' loop (rucy74/DAFA utils.calculate_class_weights): a harder class
    # h gains S[h, e] * S[e, e] from each easier class e, and e gives up exactly that
    assert w[0] == pytest.approx(1 + 0.4 * 0.9 + 0.1 * 1.0)  # 1.46: harder than both others
    assert w[1] == pytest.approx(1 - 0.4 * 0.9 + 0.05 * 1.0)  # 0.69: gives 0 what 0 gains
    assert w[2] == pytest.approx(1 - 0.1 * 1.0 - 0.05 * 1.0)  # 0.85: easiest, gives to both
    assert w.tolist() == pytest.approx([1.46, 0.69, 0.85])
    assert float(w.sum()) == pytest.approx(3.0)
    assert dafa_class_weights(s, lam=0.0).tolist() == [1, 1, 1]
    assert (dafa_class_weights(s, lam=5.0) >= 0).all()

    policy = DAFAPolicy(DAFAConfig(warmup=0.5, base="trades"), epochs=4, trades=True,
                        names=["a", "b", "c"])
    stats = EpochStats(torch.zeros(3), s)
    assert policy.after_epoch(1, stats, {}) == {}
    log = policy.after_epoch(2, stats, {})
    assert log["class_weights"]["a"] == pytest.approx(float(w[0]), abs=1e-6)
    terms = policy.terms(torch.tensor([0, 2]))
    assert terms.w_robust is None and terms.w_natural.tolist() == pytest.approx([float(w[0]),
                                                                                float(w[2])])
    assert torch.equal(terms.eps_scale, terms.step_scale)
    assert policy.after_epoch(3, EpochStats(torch.zeros(3), torch.eye(3)), {}) == {}  # once only


def test_dafa_weights_sum_to_the_number_of_classes():
    # any similarity matrix with distinct diagonal entries: what one class gains, another gives up
    gen = torch.Generator().manual_seed(0)
    for k in (2, 5, 10):
        s = torch.softmax(3 * torch.randn(k, k, generator=gen, dtype=torch.float64), 1)
        for lam in (0.5, 1.0):
            w = dafa_class_weights(s, lam)
            assert (w > 0).all()  # no clipping, so the sum is exact
            assert float(w.sum()) == pytest.approx(k, abs=1e-9)
    # a tie counts both classes as the easier one, as the authors' loop does: both give up
    tie = torch.tensor([[0.6, 0.4], [0.3, 0.6]], dtype=torch.float64)
    assert dafa_class_weights(tie, 1.0).tolist() == pytest.approx([1 - 0.3 * 0.6, 1 - 0.4 * 0.6])


def test_per_example_radius_bounds_each_example(tiny_model):
    from fairat.engine.attacks import pgd_attack, trades_attack

    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    eps = torch.tensor([0.0, 0.05, 0.1, 0.2])
    x_adv = pgd_attack(tiny_model, x, y, eps, eps / 4, steps=5).x_adv
    dist = (x_adv - x).abs().flatten(1).amax(1)
    assert (dist <= eps + 1e-6).all() and dist[0] == 0 and dist[3] > 0.1
    p = torch.softmax(tiny_model(x), 1).detach()
    dist = (trades_attack(tiny_model, x, p, eps, 0.05, 3).x_adv - x).abs().flatten(1).amax(1)
    assert (dist <= eps + 1e-6).all()
    with pytest.raises(ValueError, match="shape"):
        pgd_attack(tiny_model, x, y, eps[:2], 0.01, 1)


def test_fawa_admits_only_qualifying_epochs_and_averages(tiny_model):
    from fairat.engine.weight_average import FairWeightAverage

    avg = FairWeightAverage(decay=0.5, threshold=0.3)
    assert not avg.update(tiny_model, 0.2) and avg.average is None
    assert avg.state_for(tiny_model) is not None  # before any epoch: the live model
    first = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    assert avg.update(tiny_model, 0.3)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(1.0)
    avg.update(tiny_model, 0.9)
    key = next(k for k, v in first.items() if v.is_floating_point() and "weight" in k)
    assert torch.allclose(avg.average[key], first[key] + 0.5)  # halfway: decay 0.5
    assert avg.admitted == 2


@pytest.mark.parametrize("method", ["frl", "cfa", "dafa"])
def test_peer_trains_in_the_one_loop_and_logs_its_class_terms(method, digits, tmp_path):
    from fairat.config import AttackConfig, ModelConfig, TrainConfig
    from fairat.engine.training import TrainPaths, train

    cfg = TrainConfig(method=method, epochs=3, batch_size=64, crop_padding=1, flip=False,
                      attack=AttackConfig(eps=0.1, step_size=0.03, steps=2), val_attack_steps=2,
                      max_batches=3, progress=False, frl=FRLConfig(start=0.67),
                      cfa=CFAConfig(begin=0.67, fawa_threshold=0.0),
                      dafa=DAFAConfig(warmup=0.67))
    paths = TrainPaths(tmp_path / "m.pt", tmp_path / "ck", tmp_path / "t.json", tmp_path / "h.csv")
    summary = train(ModelConfig(name="small_cnn", width=8), cfg, digits, paths)
    first, last = summary.history[0], summary.history[-1]
    assert set(first["train_robust_per_class"]) == set(digits.train.class_names)
    # the record of the epoch that ends the warm-up logs the terms the next epochs train with
    logged = {"frl": "class_eps_scale", "cfa": "class_eps_scale", "dafa": "class_weights"}[method]
    assert logged not in first and logged in summary.history[1]
    if method == "cfa":
        assert last["fawa_admitted"] and last["fawa_epochs"] == 3 and "val_live_robust_avg" in last
    state = torch.load(paths.checkpoints / "last.pt", weights_only=True)
    assert state["weighting"] is not None


def test_the_digits_study_overlay_keeps_the_committed_cells_cfa_and_frl_constants():
    from pathlib import Path

    from fairat.engine.class_weights import frl_halvings
    from fairat.engine.methods.cfa import fawa_decay_per_epoch
    from fairat.overlays import load_params_files

    root = Path(__file__).resolve().parents[2]
    train = load_params_files([root / "params.yaml", root / "studies/digits.yaml"]).train
    assert fawa_decay_per_epoch(train.cfa, train.epochs) == 0.88  # as the cells ran, exactly
    assert (train.cfa.fawa_threshold, train.cfa.fawa_threshold_kind) == (0.24, "absolute")
    frl = FRLPolicy(train.frl, 10, train.epochs, [str(i) for i in range(10)])
    assert frl.scale == 1.0 and (frl.bound_clean, frl.bound_boundary) == (0.1, 0.1)
    assert train.frl.rate_margin == 0.1 and train.frl.rate_weight == 0.05
    # the old schedule: 0.05 halved at each third of the 15-epoch phase (at most twice)
    assert [frl_halvings(k, frl.phase, train.frl.halve_every) for k in range(16)] == \
        [min(2, 3 * k // 15) for k in range(16)]
