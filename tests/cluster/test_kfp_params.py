"""Kubeflow: params.yaml knobs as typed pipeline parameters and back (fairat.cluster.params)."""

from __future__ import annotations

import json

import pytest
import yaml

from fairat.config import ConfigError, Params, to_dict, with_overrides
from fairat.cluster.params import (NULL, NULL_MEANS, knob_lines, knobs, key_of, params_from_lines,
                                   yaml_comments)
from kfp_fixtures import PARAMS


# ---------------------------------------------------------------- knobs <-> pipeline parameters

def _as_backend_text(knob, value):
    """What a KFP backend substitutes into a string: numbers as doubles, bools lower-case."""
    if knob.kind == "bool":
        return "true" if value else "false"
    if knob.kind in ("int", "float"):
        return repr(float(value))
    return value


def test_every_knob_round_trips_through_pipeline_text():
    table = knobs(PARAMS)
    assert {k.key for k in table} >= {"train.attack.eps", "train.fairat.augment", "gate.max_gap"}
    assert all(key_of(k.name) == k.key and "." not in k.name for k in table)
    text = knob_lines({k.key: _as_backend_text(k, k.default) for k in table})
    assert params_from_lines(text) == PARAMS


def test_knobs_are_typed_with_a_sentinel_for_null_and_lists_as_json_text():
    kinds = {k.key: (k.kind, k.default) for k in knobs(PARAMS)}
    assert kinds["train.milestones"] == ("json", "[0.5, 0.75]")
    assert kinds["data.train_per_class"] == ("int", -1)
    assert kinds["model.width"] == ("int", 16)
    assert kinds["gate.min_average"] == ("float", -1.0)
    assert kinds["track.register"] == ("str", "")  # a nullable boolean: "", true or false
    assert kinds["train.epochs"] == ("int", 30) and kinds["train.flip"] == ("bool", False)
    assert kinds["train.method"] == ("str", "fairat")
    assert {k for k, (kind, _) in kinds.items() if kind == "json"} == {
        "train.milestones", "train.fairat.augment", "train.random_copies.augment",
        "evaluate.autoattack_attacks"}


def test_null_sentinels_decode_to_none_and_are_never_valid_values():
    nullable = [k for k in knobs(PARAMS) if k.nullable]
    assert {k.key for k in nullable} == set(NULL_MEANS)  # each says what null means
    for knob in nullable:
        sentinel = NULL[knob.base]
        assert knob.null == sentinel
        # the sentinel as a backend substitutes it ("-1.0" for an int too) decodes to None ...
        decoded = to_dict(params_from_lines(f"{knob.key}={_as_backend_text(knob, sentinel)}"))
        node = decoded
        for part in knob.key.split("."):
            node = node[part]
        assert node is None, knob.key
        # ... and is no value the CLI accepts, so no valid value is lost to it
        with pytest.raises(ConfigError, match=knob.key.rsplit(".", 1)[-1]):
            with_overrides(Params(), {knob.key: sentinel})
    cfg = params_from_lines("data.train_per_class=20.0\ngate.max_gap=0.25\ntrack.register=true")
    assert (cfg.data.train_per_class, cfg.gate.max_gap, cfg.track.register) == (20, 0.25, True)
    assert params_from_lines("track.register=false").track.register is False


@pytest.mark.parametrize("key,text,value", [
    ("data.train_per_class", "-2", -2), ("model.width", "0", 0), ("gate.min_average", "1.5", 1.5),
    ("gate.max_gap", "-0.5", -0.5), ("track.register", "yes", "yes"), ("train.epochs", "0", 0),
    ("train.attack.eps", "2.0", 2.0), ("train.method", "sgd", "sgd")])
def test_pipeline_values_fail_validation_with_the_cli_message(key, text, value):
    with pytest.raises(ConfigError) as cli:
        with_overrides(PARAMS, {key: value})
    with pytest.raises(ConfigError) as pipeline:
        params_from_lines(f"{key}={text}")
    assert str(pipeline.value) == str(cli.value)


def test_decoded_values_are_validated_like_the_cli():
    with pytest.raises(ConfigError, match="train.attack.eps"):
        params_from_lines("train.attack.eps=-0.5")
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        params_from_lines("train.epochs=2.5")
    with pytest.raises(ConfigError, match="known key"):
        params_from_lines("train.epochz=3")
    assert params_from_lines("train.fairat.augment=[cutout]").train.fairat.augment == ("cutout",)


def test_knob_descriptions_come_from_the_params_yaml_comments():
    text = ("data:\n  root: \"a # b\"   # the folder\n  seed: 0\n"
            "train:   # section\n  attack:\n    eps: 0.1  # radius: L-inf\n")
    assert yaml_comments(text) == {"data.root": "the folder", "train": "section",
                                   "train.attack.eps": "radius: L-inf"}
    described = {k.key: k.description for k in knobs(PARAMS, yaml_comments(text))}
    assert described["train.attack.eps"] == "radius: L-inf"
    assert described["data.seed"] == "params.yaml key data.seed"
    assert described["train.attack.loss"] == "params.yaml key train.attack.loss. One of: ce | cw"
    assert described["gate.max_gap"] == "params.yaml key gate.max_gap. -1.0 = null (no threshold)"


def test_the_gpu_count_is_decoded_from_text_and_checked():
    from fairat.cluster.params import accelerator_count

    assert [accelerator_count(v) for v in ("0", "1", " 8 ", 4)] == [0, 1, 8, 4]
    for bad in ("-1", "1.5", "1e2", "two", "", None, True, -2):
        with pytest.raises(ConfigError, match="gpus_per_node: expected a non-negative integer"):
            accelerator_count(bad)
