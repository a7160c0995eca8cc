"""CUDA paths: attacks, bf16 training, class-wise methods and evaluation on a GPU.

Marked ``gpu``: skipped (reported as skipped) without CUDA; `benchmarks/gpu_check.sh` runs them
on a lent GPU machine. Tolerances, not digits: CUDA kernels round differently from the CPU's.
"""

from __future__ import annotations

import pytest
import torch

from fairat.config import AttackConfig, ModelConfig, TrainConfig
from fairat.engine.attacks import pgd_attack
from fairat.engine.checkpoint import load_checkpoint
from fairat.engine.training import TrainPaths
from fairat.engine.training import train as engine_train
from fairat.steps.train import write_outputs

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def train(model_cfg, cfg, data, paths):
    """The engine trains and returns; the train step's writer puts model.pt where tests read it."""
    summary = engine_train(model_cfg, cfg, data, paths)
    write_outputs(summary, cfg, paths)
    return summary


def _paths(tmp_path):
    return TrainPaths(tmp_path / "m.pt", tmp_path / "ck", tmp_path / "t.json", tmp_path / "h.csv")


def test_pgd_on_cuda_agrees_with_cpu(trained_model, digits):
    x = digits.test.images[:200].float() / 255
    y = digits.test.labels[:200]
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    cpu = pgd_attack(trained_model, x, y, 0.1, 0.025, 10, noise=noise, track_best=True)
    gpu_model = trained_model.to(CUDA)
    try:
        gpu = pgd_attack(gpu_model, x.to(CUDA), y.to(CUDA), 0.1, 0.025, 10, noise=noise.to(CUDA),
                         track_best=True)
    finally:
        trained_model.cpu()
    assert abs(int(cpu.correct.sum()) - int(gpu.correct.sum().cpu())) <= 6  # 3% of 200
    per_example = torch.full((200,), 0.05, device=CUDA)
    dist = (pgd_attack(gpu_model.to(CUDA), x.to(CUDA), y.to(CUDA), per_example, 0.01, 3).x_adv
            - x.to(CUDA)).abs().amax()
    trained_model.cpu()
    assert float(dist) <= 0.05 + 1e-6


@pytest.mark.parametrize("method", ["pgd_at", "fairat", "trades", "cfa", "dafa", "frl", "wat"])
def test_training_on_cuda_with_bf16_autocast(method, digits, tmp_path):
    cfg = TrainConfig(method=method, epochs=3, batch_size=64, device="cuda", amp="auto",
                      attack=AttackConfig(eps=0.1, step_size=0.03, steps=3), val_attack_steps=3,
                      progress=False)
    summary = train(ModelConfig(name="small_cnn", width=16), cfg, digits, _paths(tmp_path))
    last = summary.history[-1]
    assert torch.isfinite(torch.tensor(last["train_loss"]))
    assert last["val_clean_avg"] > 0.3  # learning, not just running
    payload = load_checkpoint(tmp_path / "m.pt", torch.device("cpu"))  # weights_only load
    assert all(t.device.type == "cpu" for t in payload["model"].values())


def test_evaluation_on_cuda_is_consistent(digits, tmp_path):
    from fairat.config import EvalConfig
    from fairat.engine.checkpoint import load_model
    from fairat.engine.evaluation import evaluate

    cfg = TrainConfig(method="pgd_at", epochs=4, batch_size=64, device="cuda", progress=False,
                      attack=AttackConfig(eps=0.1, step_size=0.03, steps=5), val_attack_steps=3)
    train(ModelConfig(name="small_cnn", width=16), cfg, digits, _paths(tmp_path))
    model, _ = load_model(tmp_path / "m.pt", CUDA)
    cfg_eval = EvalConfig(eps=0.1, pgd_steps=10, device="cuda", autoattack="custom",
                          autoattack_attacks=("apgd-ce",), autoattack_per_class=10,
                          progress=False)
    report = evaluate(model, digits.test.images, digits.test.labels, digits.test.class_names,
                      cfg_eval, CUDA)
    assert report["consistency"] == []  # e.g. AutoAttack never above PGD on the same examples


def test_the_gpu_facts_name_the_device_driver_cuda_and_torch():
    from fairat.engine.device import gpu_problem
    from fairat.provenance import accelerator_facts

    assert gpu_problem(torch.cuda.device_count()) is None
    facts = accelerator_facts(CUDA)
    assert facts["gpu"] == torch.cuda.get_device_name(0)
    assert facts["cuda"] == torch.version.cuda and facts["torch"] == torch.__version__
    assert facts["nvidia_driver"] != "unknown" and facts["nvidia_driver"][0].isdigit()
    major, minor = torch.cuda.get_device_capability(0)
    assert facts["gpu_capability"] == f"{major}.{minor}"
