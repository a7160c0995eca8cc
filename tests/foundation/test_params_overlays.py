"""Params overlays: several files merged in order, and the shipped variants (params/*.yaml,
studies/*.yaml), rewritten as overlays, give the config their full copies gave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairat.config import ConfigError, load_params, to_dict
from fairat.fronts.cli import build_parser, load_cli_params
from fairat.overlays import load_params_files, merge

ROOT = Path(__file__).resolve().parents[2]
BEFORE = json.loads((ROOT / "tests/data/params_before_overlays.json").read_text())["configs"]
# each variant and the files it is merged on, as the study scripts and the README pass them
CHAINS = {
    "params/cifar10-cpu.yaml": ["params.yaml"],
    "params/cifar10-paper.yaml": ["params.yaml"],
    "params/cifar10-smoke.yaml": ["params.yaml"],
    "params/cifar10-eps4.yaml": ["params.yaml"],
    "studies/digits.yaml": ["params.yaml"],
    "studies/cifar10-cpu.yaml": ["params.yaml"],
    "studies/cifar10-cpu-knobs.yaml": ["params.yaml", "studies/cifar10-cpu.yaml"],
    # written as overlays from the start (no full copy in the snapshot)
    "studies/cifar10-pilot.yaml": ["params.yaml", "studies/cifar10-cpu.yaml"],
    "studies/digits-contest.yaml": ["params.yaml"],
    "studies/cifar10-full.yaml": ["params.yaml", "studies/cifar10-cpu.yaml",
                                  "studies/cifar10-pilot.yaml"],
}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_every_shipped_variant_is_an_overlay_in_a_chain():
    shipped = {p.relative_to(ROOT).as_posix() for p in
               [*ROOT.glob("params/*.yaml"), *ROOT.glob("studies/*.yaml")]}
    assert shipped == set(CHAINS)


@pytest.mark.parametrize("variant", sorted(v for v in CHAINS if v in BEFORE))
def test_overlay_reproduces_the_full_copy_it_replaced(variant):
    """Every key the base has not changed since the snapshot (tests/data, computed from the full
    copies before they became overlays) has the old full copy's value; keys the base changed
    since (another change to params.yaml) follow the base unless the overlay sets them."""
    merged = _flat(to_dict(load_params_files([ROOT / f for f in (*CHAINS[variant], variant)])))
    base_then, base_now = _flat(BEFORE["params.yaml"]), _flat(to_dict(load_params(
        ROOT / "params.yaml")))
    old = _flat(BEFORE[variant])
    checked = [k for k in old if k in base_now and base_now[k] == base_then.get(k)]
    assert len(checked) > 0.8 * len(old)  # the snapshot still speaks for most keys
    assert {k: merged[k] for k in checked} == {k: old[k] for k in checked}


def test_overlays_hold_only_what_differs():
    """No overlay repeats a value of what it is merged on (a copy would go stale again)."""
    import yaml

    for variant, chain in CHAINS.items():
        below = _flat(to_dict(load_params_files([ROOT / f for f in chain])))
        own = _flat(yaml.safe_load((ROOT / variant).read_text()))
        repeated = {k: v for k, v in own.items() if below.get(k) == v}
        assert not repeated, (variant, repeated)


def test_the_cifar10_budget_overlay_trains_what_the_pilot_chose():
    """params/cifar10-eps4.yaml is the one-command form of the CIFAR-10 study's budget: every
    data, model and training knob, and the evaluation radius, equal the pilot cell it names
    (the study itself exports the budget from that record)."""
    record = json.loads((ROOT / "results/cifar10-pilot/val/"
                         "pgd_at-fgsm-eps4-preact16-e10-seed0.json").read_text())["params"]
    merged = _flat(to_dict(load_params_files([ROOT / "params.yaml",
                                              ROOT / "params/cifar10-eps4.yaml"])))
    ran = _flat(record)
    per_cell = {"data.seed", "train.seed", "train.method", "train.progress"}
    knobs = [k for k in ran if k.split(".")[0] in ("data", "model", "train") and k not in per_cell]
    assert len(knobs) > 50
    assert {k: merged[k] for k in knobs} == {k: ran[k] for k in knobs}
    assert merged["evaluate.eps"] == ran["evaluate.eps"] == merged["train.attack.eps"]
    assert merged["evaluate.pgd_step_size"] == ran["evaluate.pgd_step_size"] == \
        merged["train.attack.eps"] / 4


def test_merge_is_by_key_in_sections_and_later_files_win(tmp_path):
    assert merge({"a": {"x": 1, "y": [1, 2]}, "b": 1}, {"a": {"y": [3]}, "c": 2}) == \
        {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    (tmp_path / "one.yaml").write_text("train:\n  epochs: 3\n  fairat:\n    hard_ratio: 0.3\n")
    (tmp_path / "two.yaml").write_text("train:\n  fairat:\n    hard_ratio: 0.4\n")
    args = build_parser().parse_args(["train", "--params", str(tmp_path / "one.yaml"),
                                      "--params", str(tmp_path / "two.yaml"),
                                      "-S", "train.lr=0.2"])
    params = load_cli_params(args)
    assert (params.train.epochs, params.train.fairat.hard_ratio, params.train.lr) == (3, 0.4, 0.2)
    default = load_params(ROOT / "params.yaml")
    assert params.train.fairat.per_class == default.train.fairat.per_class  # untouched keys


def test_a_bad_overlay_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_params_files([ROOT / "params.yaml", tmp_path / "bad.yaml"])
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_params_files([ROOT / "params.yaml", tmp_path / "missing.yaml"])
