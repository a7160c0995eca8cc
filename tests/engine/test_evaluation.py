"""Class-wise evaluation on a tiny CNN that memorised 60 random 8x8 images (CPU, seconds)."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from fairat.engine import evaluation as ev
from fairat.evidence import report as report_view
from fairat.config import EvalConfig
from fairat.engine.models import ModelSpec, build_model

NAMES = [f"class_{i}" for i in range(10)]
EPS = 12 / 255  # the memorised model is robust on some examples and not on others at this radius


def _cfg(**kw) -> EvalConfig:
    base = dict(eps=EPS, examples_per_class=4, pgd_steps=10, pgd_step_size=3 / 255, cw=True,
                autoattack="custom", autoattack_attacks=("apgd-ce",), autoattack_per_class=2,
                batch_size=16, seed=0)
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: a tiny CNN gains nothing from more, and on a loaded 2-core machine
    OpenMP threads competing with other processes slowed these tests about 50-fold."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(60) % 10
    return images, labels


@pytest.fixture(scope="module")
def model(data):
    images, labels = data
    torch.manual_seed(0)
    net = build_model("small_cnn", ModelSpec(1, 10, 8, (0.5,), (0.25,)), width=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(net(images.float() / 255), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def report(model, data):
    images, labels = data
    model.train()  # evaluate must switch to eval mode and restore this afterwards
    out = ev.evaluate(model, images, labels, NAMES, _cfg(), "cpu", {"model_sha256": "abc"})
    assert model.training
    model.eval()
    return out


def test_first_per_class_takes_the_first_k_in_index_order():
    labels = torch.tensor([2, 0, 1, 0, 2, 0, 1, 2, 2])
    assert ev.first_per_class(labels, 2, 3).tolist() == [0, 1, 2, 3, 4, 6]
    assert ev.first_per_class(labels, None, 3).tolist() == list(range(9))
    # a class with fewer examples contributes what it has
    assert ev.first_per_class(labels, 3, 3).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_report_structure(report):
    assert set(report) == {"attacks", "class_names", "examples_per_class", "eps", "provenance",
                           "consistency", "seconds"}
    assert list(report["attacks"]) == ["clean", "pgd", "cw", "autoattack", "worst_case"]
    assert report["class_names"] == NAMES
    assert report["examples_per_class"] == dict.fromkeys(NAMES, 4)
    assert report["eps"] == EPS
    for name, entry in report["attacks"].items():
        assert list(entry["per_class"]) == NAMES, name
        assert all(0.0 <= v <= 1.0 for v in entry["per_class"].values())
        assert set(entry["summary"]) == {"average", "worst", "worst_class", "best", "best_class",
                                         "gap", "std"}
        assert entry["n"] == sum(entry["counts"]["total"].values())
    assert report["attacks"]["pgd"]["n"] == 40
    assert report["attacks"]["autoattack"]["n"] == 20  # 2 per class
    assert report["attacks"]["worst_case"]["n"] == 20  # on the AutoAttack subset
    aa = report["attacks"]["autoattack"]["settings"]
    assert aa["attacks"] == ["apgd-ce"] and aa["apgd_restarts"] == 1
    assert report["attacks"]["pgd"]["settings"]["steps"] == 10
    assert report["attacks"]["cw"]["settings"]["loss"] == "cw"
    assert set(report["seconds"]) == {"clean", "pgd", "cw", "autoattack"}
    json.dumps(report, allow_nan=False)  # JSON-safe: no NaN, no tensors


def test_provenance(report):
    prov = report["provenance"]
    assert prov["model_sha256"] == "abc"
    assert prov["torch"] == torch.__version__ and prov["pyautoattack"]
    assert prov["seed"] == 0 and prov["device"] == "cpu"
    assert "git_commit" in prov and "python" in prov and "fairat" in prov
    assert prov["eval_config"]["autoattack_attacks"] == ["apgd-ce"]


def test_attack_ordering_on_same_examples(model, data, report):
    images, labels = data
    rep = ev.evaluate(model, images, labels, NAMES, _cfg(autoattack="none"), "cpu", {})
    a = rep["attacks"]
    assert "autoattack" not in a and a["worst_case"]["n"] == 40
    # same examples and seed as the fixture's report: PGD results are reproducible
    assert a["pgd"]["per_class"] == report["attacks"]["pgd"]["per_class"]
    assert a["clean"]["summary"]["average"] > a["pgd"]["summary"]["average"]  # attack bites
    for n in NAMES:
        clean, pgd, worst = (a[k]["per_class"][n] for k in ("clean", "pgd", "worst_case"))
        assert clean >= pgd >= worst
        assert a["cw"]["per_class"][n] >= a["worst_case"]["per_class"][n]
    # with AutoAttack the worst case lives on the AA subset and is below AA there
    r = report["attacks"]
    for n in NAMES:
        assert r["autoattack"]["per_class"][n] >= r["worst_case"]["per_class"][n]


def test_consistency_helper_flags_hand_made_case():
    labels = torch.tensor([0, 0, 1, 1])
    aa = torch.tensor([True, True, False, True])
    pgd = torch.tensor([True, False, False, False])
    w = ev.consistency_check(aa, pgd, labels, ["cat", "dog"], "autoattack", "pgd")
    assert w["n_disagreeing"] == 2 and w["n_examples"] == 4
    assert w["per_class_disagreeing"] == {"cat": 1, "dog": 1}
    assert w["accuracy"] == 0.75 and w["reference_accuracy"] == 0.25
    assert w["accuracy_above_reference"] and w["severity"] == "error"
    # disagreement without AA above PGD is a warning; agreement is no entry at all
    w2 = ev.consistency_check([True, False], [False, True], [0, 1], ["cat", "dog"])
    assert w2["severity"] == "warning" and not w2["accuracy_above_reference"]
    assert ev.consistency_check(pgd, aa, labels, ["cat", "dog"]) is None


def test_evaluate_records_and_logs_inconsistency(model, data, monkeypatch, caplog):
    images, labels = data
    always_robust = lambda m, x, y, cfg, device, **kw: torch.ones(len(y), dtype=torch.bool)  # noqa: E731
    monkeypatch.setattr(ev, "run_autoattack", always_robust)
    with caplog.at_level(logging.WARNING, logger="fairat.engine.evaluation"):
        rep = ev.evaluate(model, images, labels, NAMES, _cfg(cw=False), "cpu", {})
    assert rep["attacks"]["pgd"]["accuracy"] < 1.0  # PGD breaks some examples of this model
    assert len(rep["consistency"]) == 1  # cw off: only PGD is a reference
    warning = rep["consistency"][0]
    assert warning["reference"] == "pgd" and warning["severity"] == "error"
    assert rep["attacks"]["autoattack"]["accuracy"] == 1.0
    assert "CONSISTENCY ERROR" in caplog.text
    assert "**ERROR**" in report_view.report_markdown(rep)


def test_run_autoattack_quiet_seeded_contiguous(model, data, caplog):
    images, labels = data
    x = images[:20].float() / 255
    wide = torch.zeros(20, 1, 8, 16)
    wide[..., :8] = x
    x_nc = wide[..., :8]  # same values, a strided view
    assert not x_nc.is_contiguous()
    cfg = _cfg(autoattack_attacks=("apgd-ce", "apgd-t"), apgd_targets=2)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    with caplog.at_level(logging.DEBUG, logger="auto-attack"):
        flags = ev.run_autoattack(model, x_nc, labels[:20], cfg, "cpu")
    chatter = [r for r in caplog.records if r.name == "auto-attack" and r.levelno < logging.WARNING]
    assert not chatter
    assert torch.equal(torch.get_rng_state(), rng)  # pyautoattack's reseeding does not leak
    assert flags.dtype == torch.bool and flags.shape == (20,)
    clean = ev.predict_correct(model, x, labels[:20], torch.device("cpu"), 16)
    assert not (flags & ~clean).any()
    assert torch.equal(ev.run_autoattack(model, x, labels[:20], cfg, "cpu"), flags)  # seeded


def test_autoattack_settings_clamp_and_restarts():
    s = ev.autoattack_settings(EvalConfig(autoattack="custom", apgd_restarts=2, apgd_targets=9), 5)
    assert s["apgd_targets"] == 4 and s["apgd_restarts"] == 2
    std = ev.autoattack_settings(EvalConfig(autoattack="standard"), 10)
    assert std["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and std["apgd_targets"] == 9
    with pytest.raises(ValueError, match="4 classes"):
        ev.autoattack_settings(EvalConfig(autoattack="standard"), 3)
    with pytest.raises(ValueError, match="none"):
        ev.autoattack_settings(EvalConfig(autoattack="none"), 10)


def test_standard_autoattack_on_ten_examples(model, data, caplog):
    images, labels = data
    idx = ev.first_per_class(labels, 1, 10)
    # APGD-CE, APGD-T (9 targets), FAB-T, Square: about 1 s here on one CPU thread
    with caplog.at_level(logging.DEBUG, logger="auto-attack"):
        flags = ev.run_autoattack(model, images[idx].float() / 255, labels[idx],
                                  _cfg(autoattack="standard"), "cpu")
    # pyautoattack announces the standard version at INFO; quiet by default
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    assert flags.shape == (10,)
    clean = ev.predict_correct(model, images[idx].float() / 255, labels[idx],
                               torch.device("cpu"), 16)
    assert not (flags & ~clean).any()


def test_evaluate_rejects_bad_inputs(model, data):
    images, labels = data
    with pytest.raises(ValueError, match="uint8"):
        ev.evaluate(model, images.float(), labels, NAMES, _cfg(autoattack="none"), "cpu", {})
    keep = labels != 3
    with pytest.raises(ValueError, match="class_3"):
        ev.evaluate(model, images[keep], labels[keep], NAMES, _cfg(autoattack="none"), "cpu", {})


def test_write_report_atomic_json(report, tmp_path):
    path = tmp_path / "metrics" / "eval.json"
    ev.write_report(report, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    bad = {**report, "eps": float("nan")}
    with pytest.raises(ValueError):
        ev.write_report(bad, path)
    assert json.loads(path.read_text())["eps"] == EPS  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp files left


def test_plot_and_markdown(report, tmp_path):
    png = tmp_path / "plots" / "classwise.png"
    report_view.plot_classwise(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["classwise.png"]
    md = report_view.report_markdown(report)
    for name in NAMES + ["average", "worst", "gap", "autoattack", "worst_case", "model_sha256"]:
        assert name in md
    assert md.count("| class_") == 10
