import re
from pathlib import Path

import pytest

from fairat.config import ConfigError, Params, leaves, load_params, to_dict, with_overrides

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_file_loads_and_round_trips():
    params = load_params("params.yaml")
    assert params.data.source == "digits" and params.train.method == "fairat"
    assert with_overrides(params, {}) == params
    assert isinstance(to_dict(params)["train"]["fairat"]["augment"], list)


@pytest.mark.parametrize("text, match", [
    ("train:\n  epoch: 3\n", r"train: unknown key\(s\) \['epoch'\]"),
    ("train:\n  attack:\n    eps: -0.1\n", r"train.attack.eps: -0.1 must lie in \[0, 1\]"),
    ("train:\n  method: madry\n", r"train.method: 'madry' is not one of"),
    ("data:\n  source: mnist\n", r"data.source: 'mnist' is not one of"),
    ("train:\n  epochs: three\n", r"train.epochs: expected an integer"),
    ("train:\n  fairat:\n    hard_ratio: 1.5\n", r"fairat.hard_ratio: 1.5 must lie in \(0, 1\]"),
    ("data:\n  source: imagefolder\n", r"data.root: required"),
    ("train: [1, 2]\n", r"train: expected a mapping"),
    ("train:\n  lr: [0.1\n", r"not valid YAML"),
])
def test_bad_params_fail_early_naming_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_params(_write(tmp_path, text))


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_are_validated():
    params = Params()
    assert with_overrides(params, {"train.attack.steps": 3}).train.attack.steps == 3
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        with_overrides(params, {"train.attack.stepz": 3})
    with pytest.raises(ConfigError, match="train.attack.eps"):
        with_overrides(params, {"train.attack.eps": -1})


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in
                                        [*ROOT.glob("params/*.yaml"), *ROOT.glob("studies/*.yaml")]))
def test_every_shipped_params_file_is_valid(path):
    params = load_params(ROOT / path)
    assert params.evaluate.split in ("test", "val")


def test_paper_scale_params_build_the_published_architectures():
    """PreAct ResNet-18 (~11.2M weights) and WRN-28-10 (~36.5M): the sizes the literature uses."""
    from fairat.engine.models import ModelSpec, build_model

    spec = ModelSpec(3, 10, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    paper = load_params(ROOT / "params/cifar10-paper.yaml")
    assert (paper.train.epochs, paper.train.attack.steps, paper.evaluate.autoattack) == \
        (100, 10, "standard")
    wrn = with_overrides(paper, {"model.name": "wrn", "model.width": 10, "model.depth": 28})
    for p, low, high in ((paper, 11.0e6, 11.3e6), (wrn, 36.3e6, 36.6e6)):
        model = build_model(p.model.name, spec, p.model.width, p.model.depth)
        assert low < sum(w.numel() for w in model.parameters()) < high


def _base(hint):
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


FLOAT_KNOBS = [k for k, h in leaves(Params) if _base(h) is float]
CLOSED_KNOBS = [(k, h) for k, h in leaves(Params)
                if __import__("typing").get_origin(_base(h)) is __import__("typing").Literal]


@pytest.mark.parametrize("key", FLOAT_KNOBS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_knob_refuses_non_finite_values(key, value):
    with pytest.raises(ConfigError, match=rf"{key.split('.')[-1]}: .* is not a finite number"):
        with_overrides(Params(), {key: value})


@pytest.mark.parametrize("key, hint", CLOSED_KNOBS, ids=[k for k, _ in CLOSED_KNOBS])
def test_every_closed_set_knob_refuses_an_unknown_value_up_front(key, hint):
    import typing

    allowed = typing.get_args(_base(hint))
    typo = f"{allowed[0]}x"  # one letter off: the nearest allowed value is suggested
    with pytest.raises(ConfigError, match=rf"{key}: '{typo}' is not one of .*did you mean"):
        with_overrides(Params(), {key: typo})


def test_float_knobs_and_closed_sets_are_found():
    assert "train.attack.eps" in FLOAT_KNOBS and "gate.min_average" in FLOAT_KNOBS
    assert {"model.name", "train.method", "data.source"} <= {k for k, _ in CLOSED_KNOBS}


def test_overrides_are_merged_before_validation(tmp_path):
    path = _write(tmp_path, "data:\n  source: imagefolder\n  root: ''\n")
    with pytest.raises(ConfigError, match="data.root: required"):
        load_params(path)
    assert load_params(path, ["data.root=x.tar.gz"]).data.root == "x.tar.gz"
    assert load_params(path, {"data.root": "x.tar.gz"}).data.source == "imagefolder"
    with pytest.raises(ConfigError, match=r"unknown key 'epochz' in train \(did you mean 'epochs'\?\)"):
        load_params(path, ["data.root=x", "train.epochz=3"])


def test_gate_threat_model_must_equal_the_training_radius_unless_asked():
    with pytest.raises(ConfigError, match="evaluate.eps: 0.05 differs from train.attack.eps 0.1"):
        with_overrides(Params(), {"evaluate.eps": 0.05})
    params = with_overrides(Params(), {"evaluate.eps": 0.05, "evaluate.require_train_eps": False})
    assert params.evaluate.eps == 0.05


FLOAT_TRAIN_KNOBS = sorted(key for key, hint in leaves(Params)
                           if key.startswith("train.") and hint is float)


def test_every_float_train_knob_is_range_checked_with_a_named_error():
    # a negative gamma used to give a negative learning rate after the first milestone
    with pytest.raises(ConfigError, match=r"train.gamma: -0.1 must lie in \(0, 1\]"):
        with_overrides(Params(), {"train.gamma": -0.1})
    assert {"train.gamma", "train.lr", "train.trades_beta", "train.fairat.class_power",
            "train.dafa.lam", "train.attack.step_size"} <= set(FLOAT_TRAIN_KNOBS)
    for key in FLOAT_TRAIN_KNOBS:
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: -0.5 must"):
            with_overrides(Params(), {key: -0.5})
        if key != "train.lr":  # unbounded above: a rate too large is the divergence guard's
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: 1000000.0 must"):
                with_overrides(Params(), {key: 1e6})


def test_phases_are_fractions_so_a_short_run_still_runs_the_method():
    from fairat.engine.methods import method_warnings

    # FairAT's warm-up is a fraction of the run: 5 epochs keep it acting from epoch 2
    short = with_overrides(Params(), {"train.epochs": 5})
    assert method_warnings(short.train) == []
    assert method_warnings(Params().train) == []
    for method, knob in (("fairat", "fairat.warmup"), ("frl", "frl.start"), ("cfa", "cfa.begin"),
                         ("dafa", "dafa.warmup")):
        late = with_overrides(Params(), {"train.method": method, "train.epochs": 4,
                                         f"train.{knob}": 0.9})
        assert any(f"train.method '{method}'" in w and "never acts" in w
                   for w in method_warnings(late.train)), method
    one = with_overrides(Params(), {"train.epochs": 1})  # no scores before the first epoch
    assert "trains plain pgd_at" in method_warnings(one.train)[0]
    # DAFA's weights must start before the first learning-rate decay, as the authors'
    late_dafa = with_overrides(Params(), {"train.method": "dafa", "train.dafa.warmup": 0.64})
    assert "first learning-rate decay" in method_warnings(late_dafa.train)[0]
    assert method_warnings(with_overrides(Params(), {"train.method": "dafa"}).train) == []
