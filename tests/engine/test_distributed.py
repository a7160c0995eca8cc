"""Data parallelism on CPU with gloo: N ranks train and evaluate like one process.

What must hold exactly on any CPU is tested exactly: the epoch plan, the data each rank trains on,
identical hard-example trackers on every rank, the selection given equal scores, the examples and
counts; what is floating point (gradients, weights, scores, losses) to a stated tolerance. One
training step is compared in-process (two gloo ranks from ``mp.spawn``); the multi-process tests
launch the real CLI under `torchrun --standalone --nproc_per_node 2` (one thread per rank) on the
bundled digits data with a tiny model, compare it epoch by epoch with one in-process run of the
same config, kill a rank mid-run and resume on a different number of ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from fairat.engine.checkpoint import load_checkpoint
from fairat.config import load_params, params_from_raw
from fairat.engine.distributed import (DistContext, GlobalBatchNorm2d, block_shard, collective_timeout,
                                global_batchnorm)
from fairat.engine.distributed import rank_slice
from fairat.engine.training import Trainer, epoch_generators, epoch_plan, train
from tiny import train_paths as _paths

CPU = torch.device("cpu")
PARAMS = {
    "data": {"source": "digits", "val_per_class": 10, "seed": 0},
    "model": {"name": "small_cnn", "width": 8},
    "train": {"method": "fairat", "epochs": 2, "batch_size": 64, "lr": 0.05, "crop_padding": 1,
              # No PGD steps in training (the random start stays): two ranks and one process
              # agree to float rounding only (conv kernels block a batch of 32 differently from
              # one of 64), and PGD's sign() turns that rounding into a different step wherever
              # an input gradient is near zero. Which seeds hit such a flip depends on the CPU's
              # kernels (seed 1 was clean on an AMD EPYC, and diverged within an epoch, weights
              # 0.24 apart, on an Intel Xeon), so with PGD steps a comparison tests the CPU, not
              # the data parallelism. Without them one epoch agrees to ~1e-6.
              "flip": False, "attack": {"eps": 0.1, "step_size": 0.03, "steps": 0},
              "val_attack_steps": 2,
              # The paper's global selection (per-example scores differ across world sizes by
              # ~1e-4, so a selection is compared only where both sides start from equal scores:
              # see "torchrun runs" below).
              "fairat": {"warmup": 0.5, "hard_ratio": 0.2, "per_class": False,
                         "class_power": 0.0},
              "checkpoint": "last", "progress": False, "device": "cpu", "seed": 1},
    "evaluate": {"eps": 0.1, "pgd_steps": 3, "pgd_step_size": 0.03, "examples_per_class": 10,
                 "batch_size": 16, "autoattack": "custom", "autoattack_attacks": ["apgd-ce"],
                 "autoattack_per_class": 3, "device": "cpu"},
    "track": {"enabled": False},
}


# ----------------------------------------------------------------------------- pure helpers

def test_rank_slices_are_balanced_and_cover_the_batch():
    for n, world in [(9, 8), (64, 2), (65, 4), (7, 7)]:
        parts = [rank_slice(n, DistContext(r, world)) for r in range(world)]
        sizes = [p.stop - p.start for p in parts]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))


def test_epoch_plan_does_not_depend_on_the_world_size():
    hard = torch.tensor([1, 5, 9])
    for n in (128 * 3 + 5, 128 * 3 + 9, 128 * 3):  # remainders below and above batch_size // 16
        plans = [epoch_plan(n, hard, 1, 128, w, torch.Generator().manual_seed(3), None)
                 for w in (1, 2, 8)]
        for other in plans[1:]:
            assert [b[0].tolist() for b in other] == [b[0].tolist() for b in plans[0]]
    # a sliver of a batch (< batch_size // 16) is merged into the batch before it
    plan = epoch_plan(128 * 2 + 5, torch.zeros(0, dtype=torch.long), 1, 128, 1,
                      torch.Generator().manual_seed(0), None)
    assert [b[0].numel() for b in plan] == [128, 133]


def test_block_shard_deals_fixed_blocks_round_robin():
    mine = [block_shard(10, 3, DistContext(r, 2)) for r in range(2)]
    assert [b for b, _ in mine[0]] == [0, 2] and [b for b, _ in mine[1]] == [1, 3]
    positions = torch.cat([p for shard in mine for _, p in shard]).sort().values
    assert positions.tolist() == list(range(10))


def test_collective_timeout_from_env(monkeypatch):
    monkeypatch.setenv("FAIRAT_DIST_TIMEOUT_S", "12.5")
    assert collective_timeout().total_seconds() == 12.5
    monkeypatch.setenv("FAIRAT_DIST_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="FAIRAT_DIST_TIMEOUT_S"):
        collective_timeout()


# ----------------------------------------------------------------------------- global BatchNorm

def _bn_worker(rank: int, world: int, store: str, x: torch.Tensor, dy: torch.Tensor,
               out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = global_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), "cpu").train()
    part = x.chunk(world)[rank].clone().requires_grad_(True)
    y = model(part)
    (y * dy.chunk(world)[rank]).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)  # sum over ranks: what DDP averages
    torch.save({"y": y.detach(), "dx": part.grad, "grads": grads,
                "buffers": {k: v for k, v in model.state_dict().items() if "running" in k}},
               f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_global_batchnorm_matches_one_process_on_the_global_batch(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, 6, 6, generator=g) * 3 + 2  # uneven split: 5 and 5, mean far from 0
    dy = torch.randn(10, 4, 4, 4, generator=g)
    mp.spawn(_bn_worker, args=(2, str(tmp_path / "store"), x, dy, str(tmp_path / "out")),
             nprocs=2, join=True)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    expected = _bn_eval_free_forward(ref, x)
    xr = x.clone().requires_grad_(True)
    (ref(xr) * dy).sum().backward()
    parts = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), xr.grad, atol=1e-5, rtol=1e-5)
    for got, want in zip(parts[0]["grads"], [p.grad for p in ref.parameters()]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    for key, value in parts[0]["buffers"].items():  # running stats: global, identical on ranks
        assert torch.equal(value, parts[1]["buffers"][key])
        torch.testing.assert_close(value, ref.state_dict()[key], atol=1e-5, rtol=1e-5)
    converted = global_batchnorm(ref, "cpu")
    assert isinstance(converted[1], GlobalBatchNorm2d)
    assert converted[1].weight is ref[1].weight  # parameters shared, state-dict keys unchanged


def _bn_eval_free_forward(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Training-mode output on the whole batch, without touching ``model``'s running stats."""
    conv, bn = model
    with torch.no_grad():
        h = conv(x)
        mean = h.mean((0, 2, 3), keepdim=True)
        var = h.var((0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) \
            + bn.bias.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- one step, 2 ranks

def _capture_steps(trainer: Trainer) -> list:
    """Record the shard each training step sees (the real step still runs)."""
    seen, step = [], trainer.step_fn

    def recording(attack_model, train_model, batch, cfg, need_clean):
        seen.append({"x": batch.x.clone(), "targets": batch.targets.clone(),
                     "labels": batch.labels.clone(), "noise": batch.noise.clone()})
        return step(attack_model, train_model, batch, cfg, need_clean)

    trainer.step_fn = recording
    return seen


def _first_step(data, ctx: DistContext | None) -> dict:
    """One FairAT training step (a global batch holding augmented hard copies) from the seed's
    initial weights: the shard trained, the gradient applied, the weights and scores after it."""
    params = params_from_raw(PARAMS)
    trainer = Trainer(params.model, params.train, data, _paths(Path("/nonexistent")), ctx)
    shards = _capture_steps(trainer)
    idx, is_copy = _first_batch(len(data.train), ctx.world_size if ctx else 1)
    _, dev_gen = epoch_generators(params.train.seed, 0, CPU)
    trainer.train_batch(idx, is_copy, dev_gen)
    return {"shard": shards[0], "idx": idx, "is_copy": is_copy,
            "grads": [p.grad.clone() for p in trainer.model.parameters()],
            "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "tracker": trainer.hook.tracker.state_dict()}


def _first_batch(n_train: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first global batch of an epoch in which every 5th example is hard (one copy each)."""
    plan = epoch_plan(n_train, torch.arange(0, n_train, 5), 1, PARAMS["train"]["batch_size"],
                      world, torch.Generator().manual_seed(7), None)
    return plan[0]


def _step_worker(rank: int, world: int, store: str, data_dir: str, out: str) -> None:
    from fairat.engine.data import load_prepared

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.save(_first_step(load_prepared(Path(data_dir)), DistContext(rank, world)),
               f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_first_step_on_two_ranks_equals_one_process(work, tmp_path):
    """The mechanics, on any CPU: the same plan, each rank trains its contiguous slice of the
    identical augmented global batch (exact), both ranks hold identical hard-example trackers
    (exact, so they select the same examples), and the all-reduced gradient is one process's
    gradient of the global batch (to float rounding: convolution kernels block a batch of 32
    differently from one of 64)."""
    from fairat.engine.data import load_prepared

    mp.spawn(_step_worker, args=(2, str(tmp_path / "store"), str(work / "data"),
                                 str(tmp_path / "step")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"step.{r}", weights_only=True) for r in range(2)]
    torch.set_num_threads(1)
    one = _first_step(load_prepared(work / "data"), None)
    assert one["is_copy"].any() and (~one["is_copy"]).any()  # originals and augmented copies
    for r in ranks:  # the plan is drawn for the global batch on every rank
        assert torch.equal(r["idx"], one["idx"]) and torch.equal(r["is_copy"], one["is_copy"])
    for key in ("x", "targets", "labels", "noise"):  # the data each rank sees, bit for bit
        assert torch.equal(torch.cat([r["shard"][key] for r in ranks]), one["shard"][key]), key
    assert [len(r["shard"]["labels"]) for r in ranks] == [32, 32]
    # the trackers: identical on both ranks, the same examples scored as in one process
    assert torch.equal(ranks[0]["tracker"]["scores"], ranks[1]["tracker"]["scores"])
    for r in ranks:
        assert torch.equal(r["tracker"]["seen"], one["tracker"]["seen"])
    assert int(one["tracker"]["seen"].sum()) == int((~one["is_copy"]).sum())  # copies not scored
    torch.testing.assert_close(ranks[0]["tracker"]["scores"], one["tracker"]["scores"],
                               atol=1e-5, rtol=1e-5)
    # the update: every rank applies the same all-reduced gradient; it is one process's
    for got, other, want in zip(ranks[0]["grads"], ranks[1]["grads"], one["grads"]):
        assert torch.equal(got, other)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    for key, want in one["weights"].items():
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key
        torch.testing.assert_close(ranks[0]["weights"][key], want, atol=1e-6, rtol=1e-5,
                                   msg=key)


# ----------------------------------------------------------------------------- torchrun runs
#
# Why epoch by epoch: a run is a chain of float steps and discrete choices. Between epochs FairAT
# picks its hard examples from scores that agree only to rounding, and neighbouring scores at the
# top-k boundary can be closer than that (4.5e-5 apart on one Xeon), so each comparison below
# starts both sides from the same state and compares one epoch, except the first epoch, which
# both start from the seed's initial weights.
#
# What is exact on any CPU: the examples trained, which of them were scored, the hard-example
# counts per class, and the validation a run records for its weights. The floats are not: within
# an epoch two ranks and one process agreed to ~1e-6 on an Intel Xeon, but on an AMD EPYC
# (2026-12-07) one epoch ended with weights 3% apart (relative norm; train loss 1e-4 relative,
# validation cost 0.027) although the first step agrees to 1e-6 there too. A kernel-dependent
# discrete event inside the epoch (a tie in a max-pool or a ReLU broken the other way between a
# batch of 32 and one of 64) grows through the epoch's SGD steps. So the precise claim, "the
# all-reduced step is one process's step", is test_first_step_on_two_ranks_equals_one_process's,
# at rounding tolerance; an epoch is held to DRIFT, about three times the growth seen on the
# EPYC. For scale, one process's first epoch from another seed (measured on the EPYC): weights
# 79% apart, scores 33%, train loss 3% (validation cost only 0.047: it discriminates least).
DRIFT = {"weights": 0.1, "scores": 0.1, "train_loss": 1e-2, "val_cost_avg": 0.08}


def _relative_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    va, vb = torch.cat([t.flatten().double() for t in a]), torch.cat([t.flatten().double() for t in b])
    return float((va - vb).norm() / vb.norm())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Params file, prepared digits and one single-process reference run of the config, with its
    checkpoint after epoch 1 kept as ``ref/epoch1.pt``."""
    from fairat.engine.data import load_prepared
    from fairat.steps.prepare import prepare_step

    root = tmp_path_factory.mktemp("ddp")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    params = load_params(root / "params.yaml")
    prepare_step(params, root / "data")
    paths = _paths(root / "ref")

    def keep_epoch_one(record):
        if record["epoch"] == 1:
            shutil.copy(paths.checkpoints / "last.pt", root / "ref" / "epoch1.pt")

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from fairat.steps.train import write_outputs

        summary = train(params.model, params.train, load_prepared(root / "data"), paths,
                        on_epoch=keep_epoch_one)
        write_outputs(summary, params.train, paths)  # the engine returns them; the step writes
    finally:
        torch.set_num_threads(old)
    return root


@pytest.fixture(scope="module")
def ddp(work) -> str:
    """The whole run on two ranks under torchrun, from scratch (``work/ddp``); its output."""
    return _run_ok(_cli(work, "ddp"))


@pytest.fixture(scope="module")
def killed(work) -> dict:
    """A two-rank run whose rank 1 is SIGKILLed right after the first epoch's checkpoint; the
    launcher's exit code, output and seconds to fail, and that checkpoint (``epoch1.pt``)."""
    run = work / "killed"
    last = run / "checkpoints" / "last.pt"
    proc = _torchrun(_cli(work, "killed"))
    deadline = time.monotonic() + 120
    while not last.exists():  # the first epoch's checkpoint: kill right after it is written
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    ranks = _ranks(proc.pid)
    assert set(ranks) == {0, 1}
    os.kill(ranks[1], signal.SIGKILL)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=90)
    seconds = time.monotonic() - t0
    shutil.copy(last, run / "epoch1.pt")
    return {"returncode": proc.returncode, "out": out, "seconds": seconds, "run": run}


def _cli(work: Path, out: str, command: str = "train") -> list[str]:
    if command == "train":
        return ["train", "--params", str(work / "params.yaml"), "--data", str(work / "data"),
                "--model", f"{work}/{out}/model.pt", "--checkpoints", f"{work}/{out}/checkpoints",
                "--metrics", f"{work}/{out}/train.json", "--history", f"{work}/{out}/history.csv"]
    return ["evaluate", "--params", str(work / "params.yaml"), "--data", str(work / "data"),
            "--model", str(work / "ref" / "model.pt"), "--report", f"{work}/{out}/eval.json",
            "--plot", f"{work}/{out}/eval.png", "--markdown", f"{work}/{out}/report.md",
            "--summary", f"{work}/{out}/summary.json"]  # every output inside the test folder


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIRAT_DIST_TIMEOUT_S": "60",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--max-restarts=0", "-m", "fairat", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _run_ok(args: list[str], nproc: int = 2) -> str:
    proc = _torchrun(args, nproc)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    return out


def _state(path: Path) -> dict:
    return load_checkpoint(path, CPU)


TIMING = {"seconds", "examples_per_second"}  # wall clock: differs between any two runs


def _assert_same_epochs(a: dict, b: dict, epochs: range) -> None:
    """States ``a`` and ``b`` trained the same ``epochs`` (0-based) from the same start: the same
    examples and hard-example selection, exactly; losses, weights and scores within DRIFT."""
    assert a["epoch"] == b["epoch"] == epochs.stop
    assert torch.equal(a["tracker"]["seen"], b["tracker"]["seen"])
    for e in epochs:
        ra, rb = a["history"][e], b["history"][e]
        for key in ("epoch", "examples", "hard_count", "hard_per_class"):
            assert ra[key] == rb[key], (e, key)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=DRIFT["train_loss"])
        # the per-class validation accuracies are counts of 10 that flip where a margin is ~0;
        # _assert_validation_reproduces checks them exactly against one process, same weights
        assert ra["val_cost_avg"] == pytest.approx(rb["val_cost_avg"], abs=DRIFT["val_cost_avg"])
    assert list(a["model"]) == list(b["model"])
    floats = [k for k, v in b["model"].items() if v.is_floating_point()]
    for key in b["model"].keys() - set(floats):  # counters (BatchNorm's batches seen): exact
        assert torch.equal(a["model"][key], b["model"][key]), key
    distance = _relative_distance([a["model"][k] for k in floats], [b["model"][k] for k in floats])
    assert distance <= DRIFT["weights"], distance
    seen = b["tracker"]["seen"]
    scores = _relative_distance([a["tracker"]["scores"][seen]], [b["tracker"]["scores"][seen]])
    assert scores <= DRIFT["scores"], scores


def _assert_validation_reproduces(work: Path, state: dict) -> None:
    """The validation a run recorded for its last epoch (sharded over its ranks, then reduced) is
    exactly what one process computes for the same weights (fixed blocks, per-block seeds)."""
    from fairat.engine.data import load_prepared

    params = load_params(work / "params.yaml")
    torch.set_num_threads(1)
    trainer = Trainer(params.model, params.train, load_prepared(work / "data"),
                      _paths(work / "revalidate"))
    trainer.model.load_state_dict(state["model"])
    recorded = state["history"][-1]
    for key, value in trainer.validate().items():
        assert recorded[key] == value, key


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_two_ranks_train_like_one_process(work, ddp, killed):
    out = ddp
    assert out.count("epoch 2/2") == 1, out  # only rank 0 prints (and writes)
    assert not list((work / "ddp" / "checkpoints").glob(".*.tmp"))
    run, ref = _state(work / "ddp" / "checkpoints" / "last.pt"), _state(work / "ref" / "epoch1.pt")
    # Two-rank runs repeat exactly, so the killed run's first epoch is this run's first epoch:
    first = _state(killed["run"] / "epoch1.pt")
    assert _without_timing(first["history"][0]) == _without_timing(run["history"][0])
    # ... and it is one process's first epoch (scores are all-gathered on every rank):
    _assert_same_epochs(first, ref, range(0, 1))
    _assert_validation_reproduces(work, first)
    _assert_validation_reproduces(work, run)
    # Epoch 2 selects from scores equal to ~1e-4, so only the count is exact from scratch; epoch 2
    # from equal scores, selection and weights included, is compared by the two resume tests.
    whole = _state(work / "ref" / "checkpoints" / "last.pt")
    assert run["history"][1]["hard_count"] == whole["history"][1]["hard_count"] > 0
    assert torch.equal(run["tracker"]["seen"], whole["tracker"]["seen"])


def _ranks(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes below a torchrun launcher (Linux /proc)."""
    found, todo = {}, [launcher_pid]
    while todo:
        pid = todo.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            try:
                env = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = kid
            todo.append(kid)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killed_rank_fails_the_job_and_it_resumes_on_one_rank(work, ddp, killed):
    run = killed["run"]
    assert killed["returncode"] != 0, killed["out"]  # the job fails, not hangs or pretends
    assert killed["seconds"] < 90
    saved = _state(run / "checkpoints" / "last.pt")  # intact: written atomically
    assert saved["epoch"] == 1 < PARAMS["train"]["epochs"]
    assert not (run / "model.pt").exists()
    # Resume on ONE rank (world size 2 -> 1): epoch 2 from the same state as the uninterrupted
    # two-rank run's epoch 2, so the same hard examples and, to float tolerance, the same result.
    params = load_params(work / "params.yaml")
    from fairat.engine.data import load_prepared

    torch.set_num_threads(1)
    summary = train(params.model, params.train, load_prepared(work / "data"), _paths(run),
                    resume=True)
    assert summary.epochs == PARAMS["train"]["epochs"]
    resumed = _state(run / "checkpoints" / "last.pt")
    assert resumed["history"][0] == saved["history"][0]  # epoch 1 carried over as it was
    _assert_same_epochs(resumed, _state(work / "ddp" / "checkpoints" / "last.pt"), range(1, 2))
    _assert_validation_reproduces(work, resumed)


@pytest.mark.slow
def test_checkpoint_from_one_process_resumes_on_two_ranks(work):
    """One process's first epoch (the reference's own checkpoint), then epoch 2 on two ranks:
    the same hard examples as the reference's epoch 2 and, to float tolerance, its result."""
    run = work / "grow"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(work / "ref" / "epoch1.pt", run / "checkpoints" / "last.pt")
    out = _run_ok(_cli(work, "grow") + ["--resume"])
    assert "resumed after epoch 1" in out
    grown, ref = _state(run / "checkpoints" / "last.pt"), _state(work / "ref" / "checkpoints" / "last.pt")
    assert grown["history"][1]["hard_count"] > 0  # FairAT's phase: copies of hard examples
    _assert_same_epochs(grown, ref, range(1, 2))
    _assert_validation_reproduces(work, grown)


@pytest.mark.slow
def test_sharded_evaluation_counts_equal_one_process(work):
    from fairat.steps.evaluate import evaluate_step

    params = load_params(work / "params.yaml")
    torch.set_num_threads(1)
    one = evaluate_step(params, work / "data", work / "ref" / "model.pt", work / "eval1.json")
    _run_ok(_cli(work, "eval2", "evaluate"))
    two = json.loads((work / "eval2" / "eval.json").read_text())
    assert two["provenance"]["world_size"] == 2 and one["provenance"]["world_size"] == 1
    for name in ("clean", "pgd", "cw"):
        assert two["attacks"][name]["counts"] == one["attacks"][name]["counts"], name
    # AutoAttack: same examples; its random restarts are seeded per shard (docs/scale-out.md)
    assert two["attacks"]["autoattack"]["counts"]["total"] == \
        one["attacks"]["autoattack"]["counts"]["total"]
    assert one["attacks"]["pgd"]["accuracy"] < one["attacks"]["clean"]["accuracy"]
