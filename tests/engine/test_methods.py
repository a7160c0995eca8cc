"""The method registry: one file adds a method, and config, the training loop's policy, the
comparison and the model card all read it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fairat.config import Params, TrainConfig, to_dict, with_overrides
from fairat.knobs import ConfigError
from fairat.engine.methods import method, method_fields, registry
from fairat.evidence.comparison import METHOD_FIELDS
from fairat.evidence.model_card import method_line

ROOT = Path(__file__).resolve().parents[2]

TOY = '''
"""A toy method: PGD-AT whose class 0 adversarial loss is scaled by ``scale``."""

from __future__ import annotations

from dataclasses import dataclass

from fairat.engine.methods import MethodSpec
from fairat.knobs import check_range


@dataclass(frozen=True)
class ToyConfig:
    scale: float = 0.5

    def __post_init__(self) -> None:
        check_range(self, "scale", 0, 2, low_open=True)


def _policy(train, num_classes, names):
    import torch

    from fairat.engine.class_weights import ClassPolicy
    from fairat.engine.objectives import ClassTerms

    class ToyPolicy(ClassPolicy):
        def class_terms(self):
            w = torch.ones(num_classes)
            w[0] = train.toy.scale
            return ClassTerms(w_robust=w)

        def after_epoch(self, epochs_done, stats, val):
            return {"toy_class0_weight": train.toy.scale}

    return ToyPolicy()


METHOD = MethodSpec(
    name="toy", section=ToyConfig, fields=("toy",), policy=_policy,
    objective=lambda train: "pgd_at",
    needs_validation=lambda train: "reads the toy validation statistics",
    describe=lambda train: f"a toy: class 0's adversarial loss times {train['toy']['scale']}")
'''

SCRIPT = '''
import json, sys
from pathlib import Path
import fairat.engine.methods as methods
methods.__path__.append(sys.argv[1])  # the one file: a folder beside the package's own

from fairat.config import ConfigError, DataConfig, ModelConfig, Params, load_params, to_dict
from fairat.engine.data import prepare
from fairat.engine.training import TrainPaths, train
from fairat.evidence.comparison import METHOD_FIELDS
from fairat.evidence.model_card import method_line

out = {"names": list(methods.registry())}
tiny = {"train.epochs": 2, "train.batch_size": 64, "train.max_batches": 2,
        "train.attack.steps": 1, "train.val_attack_steps": 1, "train.checkpoint": "last",
        "train.progress": False, "train.device": "cpu", "model.width": 8}
params = load_params(sys.argv[2], {**tiny, "train.method": "toy", "train.toy.scale": 0.25})
out["section"] = to_dict(params)["train"]["toy"]
for bad in ({"train.toy.scale": 3.0}, {"data.val_per_class": 0}):
    try:
        load_params(sys.argv[2], {"train.method": "toy", **bad})
    except ConfigError as err:
        out.setdefault("errors", []).append(str(err))
out["fields"] = "toy" in METHOD_FIELDS
out["card"] = method_line(to_dict(params.train))
data = prepare(DataConfig(source="digits", val_per_class=5, seed=0))
root = sys.argv[3]
losses = {}
for name, p in (("toy", params),
                ("pgd_at", load_params(sys.argv[2], {**tiny, "train.method": "pgd_at"}))):
    paths = TrainPaths(*(Path(root, name, f) for f in ("m.pt", "ck", "t.json", "h.csv")))
    summary = train(p.model, p.train, data, paths)
    losses[name] = [r["train_loss"] for r in summary.history]
    if name == "toy":
        out["logged"] = summary.history[-1].get("toy_class0_weight")
out["losses"] = losses
print("RESULT " + json.dumps(out))
'''


def test_a_method_in_one_file_drives_config_policy_comparison_and_card(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toy.py").write_text(textwrap.dedent(TOY))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(plugins), str(ROOT / "params.yaml"),
                           str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert "toy" in out["names"] and out["names"][:8] == list(registry())  # built-ins first
    assert out["section"] == {"scale": 0.25}  # config: train.toy parsed from the method's class
    assert out["errors"][0] == "train.toy.scale: 3.0 must lie in (0, 2]"
    assert "reads the toy validation statistics" in out["errors"][1]
    assert out["fields"] is True  # comparison: train.toy may differ from the baseline
    assert out["card"] == "a toy: class 0's adversarial loss times 0.25"
    assert out["logged"] == 0.25  # the loop ran the toy's policy ...
    toy, base = out["losses"]["toy"], out["losses"]["pgd_at"]
    assert len(toy) == len(base) == 2 and toy[0] < base[0]  # ... and its weight changed the loss


def test_the_registry_holds_the_eight_methods_and_each_describes_itself():
    assert list(registry()) == ["pgd_at", "trades", "fairat", "wat", "frl", "cfa", "dafa",
                                "random_copies"]
    assert set(TrainConfig.__annotations__) >= {"fairat", "wat", "frl", "cfa", "dafa",
                                                "random_copies"}
    assert set(method_fields()) == {"trades_beta", "fairat", "wat", "frl", "cfa", "dafa",
                                    "random_copies"}
    assert set(METHOD_FIELDS) == {"method", "progress", *method_fields()}
    for name, spec in registry().items():
        train = with_overrides(Params(), {"train.method": name}).train
        assert spec.objective_of(train) in ("pgd_at", "trades")
        assert method_line(to_dict(train)).startswith(spec.describe(to_dict(train))[:10])
    assert method("frl").objective_of(Params().train) == "trades"
    with pytest.raises(KeyError, match="unknown training method 'madry'"):
        method("madry")


def test_fairats_card_line_says_which_selection_ran_and_whose_it_is():
    paper = method_line(to_dict(Params().train))  # the default is the paper's selection
    assert "top 20% of the whole training set by adversarial cross-entropy" in paper
    assert "the paper's global selection" in paper and "extension" not in paper
    assert "after 17% of the epochs" in paper and "autoaugment, cutout, cutmix" in paper
    ours = method_line(to_dict(with_overrides(Params(), {"train.fairat.per_class": True,
                                                         "train.fairat.class_power": 4}).train))
    assert "per-class quotas" in ours and "power 4" in ours
    assert "this project's extension" in ours and "the paper ranks the whole" in ours
    equal = method_line(to_dict(with_overrides(Params(), {"train.fairat.per_class": True}).train))
    assert "top 20% of every class" in equal and "equal quota" in equal


def test_the_random_copies_control_mirrors_fairats_copies_and_says_it_is_a_control():
    params = with_overrides(Params(), {"train.method": "random_copies"})
    control, fairat = params.train.random_copies, params.train.fairat
    # like for like: the defaults are FairAT's copy knobs
    for knob in ("base", "hard_ratio", "warmup", "copies", "augment", "strength"):
        assert getattr(control, knob) == getattr(fairat, knob), knob
    assert method("random_copies").objective_of(params.train) == "pgd_at"
    assert method("random_copies").phases(params.train)["random copies"] == \
        method("fairat").phases(Params().train)["hard-example selection"] == 5
    line = method_line(to_dict(params.train))
    assert "a control, not a fairness method" in line and "uniformly at random" in line
    assert "autoaugment, cutout, cutmix" in line and "20% of the training set" in line
    assert "random_copies" in METHOD_FIELDS  # comparison: its knobs may differ from PGD-AT's
    with pytest.raises(ConfigError, match=r"train.random_copies.hard_ratio"):
        with_overrides(Params(), {"train.random_copies.hard_ratio": 0.0})


def test_the_peers_card_lines_give_their_rescaled_constants_and_read_older_records():
    cfa = to_dict(with_overrides(Params(), {"train.method": "cfa"}).train)
    line = method_line(cfa)
    assert "decay 0.426 per epoch: 0.88 per epoch of 200 rescaled to 30" in line
    assert "85% of the best worst class so far" in line
    frl = method_line(to_dict(with_overrides(Params(), {"train.method": "frl"}).train))
    assert "(0.07 clean, 0.07 boundary)" in frl and "the authors' 40 updates" in frl
    # a run recorded before the rescaling: its decay per epoch of its run, an absolute threshold
    for key in ("fawa_decay_epochs", "fawa_threshold_kind"):
        cfa["cfa"].pop(key)
    cfa["cfa"]["fawa_threshold"] = 0.24
    old = method_line(cfa)
    assert "decay 0.88 per epoch;" in old and "reaches 24%)" in old
    frl_old = to_dict(with_overrides(Params(), {"train.method": "frl", "train.frl.bound_clean": 0.1,
                                                "train.frl.bound_boundary": 0.1}).train)
    frl_old["frl"].pop("reference_updates")
    assert "(0.1 clean, 0.1 boundary)" in method_line(frl_old)
    assert "40 updates" not in method_line(frl_old)
