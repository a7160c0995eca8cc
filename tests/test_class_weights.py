"""WAT's class weights on hand-made inputs, and a WAT run through the one training loop."""

from __future__ import annotations

import math

import pytest
import torch

from fairat.config import ConfigError, DataConfig, Params, WATConfig
from fairat.engine.class_weights import WATWeights, hedge_weights
from fairat.engine.methods import validation_cost


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
