"""The fast AutoAttack against pyautoattack: same random starts, same targets, same verdicts.

Tiny on purpose (a width-8 CNN that memorised random 8x8 images, a dozen examples, one thread):
the large agreement study is benchmarks/autoattack_agreement.py.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from pyautoattack.autopgd_base import APGDAttack_targeted

from fairat.config import ConfigError, EvalConfig, from_dict
from fairat.engine import autoattack_fast as fast
from fairat.engine import evaluation as ev
from fairat.engine.models import ModelSpec, build_model

EPS = 12 / 255


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 10
    torch.manual_seed(0)
    net = build_model("small_cnn", ModelSpec(1, 10, 8, (0.5,), (0.25,)), width=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(net(images.float() / 255), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), images.float() / 255, labels


def _key(row: torch.Tensor) -> bytes:
    return row.numpy().tobytes()


def _recording_single_run(atk, breaks, log):
    """A stand-in for attack_single_run: draws its start exactly as pyautoattack does (one
    ``torch.rand(x.shape)`` on the CPU), records it per (example, target) and reports as broken
    the (example, target) pairs in ``breaks``. Isolates the stream bookkeeping from numerics."""
    def run(x, y, x_init=None):
        noise = torch.rand(x.shape)
        acc = torch.ones(len(x), dtype=torch.bool)
        for i in range(len(x)):
            key = (_key(x[i]), int(atk.y_target[i]))
            log[key] = noise[i].clone()
            if key in breaks:
                acc[i] = False
        return x, acc, torch.zeros(len(x)), x + 0
    return run


def test_apgd_t_replays_pyautoattacks_random_starts_exactly(setup):
    """Examples broken at different targets force reruns; every (example, target) pair that
    pyautoattack attacks must get bit for bit the start pyautoattack drew for it."""
    model, x, y = setup
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep][:12].contiguous(), y[keep][:12]
    order = model(x).sort(1)[1]
    breaks = {(_key(x[1]), int(order[1, -2])), (_key(x[4]), int(order[4, -4])),
              (_key(x[7]), int(order[7, -4])), (_key(x[9]), int(order[9, -9]))}
    logs = []
    for batched in (False, True):
        atk = APGDAttack_targeted(model, n_iter=5, eps=EPS, seed=3, n_target_classes=9,
                                  device="cpu")
        log: dict = {}
        atk.attack_single_run = _recording_single_run(atk, breaks, log)
        with torch.no_grad():
            if batched:
                fast._apgd_targeted(atk, model, x, y, lambda text: None)
            else:
                atk.perturb(x, y)
        logs.append(log)
    reference, batched = logs
    assert reference, "the reference attacked nothing"
    for key, noise in reference.items():
        assert key in batched, "a pair the reference attacked was skipped"
        assert torch.equal(batched[key], noise), "a different random start"


def test_fast_autoattack_agrees_with_pyautoattack(setup):
    """APGD-CE, APGD-T and FAB-T with 9 targets each, in two chunks, both implementations.

    Square is left out here for time (5000 queries per chunk); the fast path calls pyautoattack's
    Square exactly as the reference does, and tests/engine/test_evaluation.py runs the standard suite
    through the fast path."""
    model, x, y = setup
    x, y = x[:12], y[:12]
    cfg = EvalConfig(eps=EPS, batch_size=8, autoattack="custom", seed=0, apgd_targets=9,
                     autoattack_attacks=("apgd-ce", "apgd-t", "fab-t"))
    ref = ev.run_autoattack(model, x, y, dataclasses.replace(cfg, autoattack_impl="reference"),
                            "cpu")
    got = ev.run_autoattack(model, x, y, cfg, "cpu")
    clean = ev.predict_correct(model, x, y, torch.device("cpu"), 16)
    assert clean.sum() > ref.sum() > 0, "the radius must leave some examples robust, not all"
    # never robust where pyautoattack found an adversarial example
    assert not (got & ~ref).any()
    # identical random starts and targets: rounding of a larger batch may flip one borderline
    # example at most on this tiny set
    assert (got == ref).sum() >= len(ref) - 1


def test_settings_and_provenance_name_the_implementation():
    std = ev.autoattack_settings(EvalConfig(autoattack="standard"), 10)
    assert std["implementation"] == "fast"
    ref = ev.autoattack_settings(EvalConfig(autoattack="standard", autoattack_impl="reference"), 10)
    assert ref["implementation"] == "reference"
    record = ev._eval_config_record(EvalConfig(autoattack="standard"))
    assert record["autoattack_attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert ev._eval_config_record(EvalConfig(autoattack="none"))["autoattack_attacks"] == []
    with pytest.raises(ConfigError, match="autoattack_impl"):
        from_dict(EvalConfig, {"autoattack_impl": "faster"}, prefix="evaluate.")


def test_attack_progress_lines_name_attack_robust_so_far_and_eta():
    import io

    from fairat.engine.progress import AttackProgress

    out = io.StringIO()  # not a terminal: plain lines, starts and ends always, the rest throttled
    with AttackProgress("autoattack (standard, fast)", 40, stream=out, every_s=0.0) as bar:
        bar.report("apgd-t", "started on 30 robust", 30, 40)
        bar.report("apgd-t", "chunk 1: targets 2-2 on 16: 1 broken at target 2", 30, 40)
        bar.report("apgd-t", "16/30 attacked", 29, 40)
        bar.report("apgd-t", "done", 27, 40)
    lines = out.getvalue().splitlines()
    assert lines[0] == "autoattack (standard, fast) on 40 images: started"
    assert "apgd-t started on 30 robust; robust 30/40 (75.0%)" in lines[1]
    assert "targets 2-2 on 16: 1 broken at target 2" in lines[2]
    assert "robust 29/40 (72.5%)" in lines[3] and "apgd-t ETA" in lines[3]
    assert "apgd-t done; robust 27/40 (67.5%)" in lines[4]
    assert lines[5].startswith("autoattack (standard, fast): done")
    quiet = io.StringIO()
    with AttackProgress("aa", 10, stream=quiet, every_s=3600) as bar:
        bar.report("square", "started on 5 robust", 5, 10)
        bar.report("square", "chunk 1: something", 5, 10)  # within the heartbeat: not printed
        bar.report("square", "done", 5, 10)
    assert "chunk 1" not in quiet.getvalue() and quiet.getvalue().count("\n") == 4
