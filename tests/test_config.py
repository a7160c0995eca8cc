import pytest

from fairat.config import ConfigError, Params, load_params, to_dict, with_overrides


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
