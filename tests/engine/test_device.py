"""A GPU that was asked for and cannot be used is an error naming the cause, never a CPU run.

This machine has no GPU: the real path (a CUDA build of torch without a driver) is checked as it
is, and the other causes by making torch report them (its own messages, its own arch list).
"""

from __future__ import annotations

import pytest
import torch

from fairat.engine import device as dev
from fairat.engine.device import GpuUnavailableError, gpu_problem, require_gpus, resolve_device

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is usable here")


@needs_no_gpu
def test_cuda_requested_without_a_gpu_names_the_cause():
    with pytest.raises(GpuUnavailableError) as err:
        resolve_device("cuda")
    line = str(err.value)
    assert line.startswith("device 'cuda' was requested, and training refuses to run on CPU")
    assert "\n" not in line
    assert ("no GPU is visible" in line) if torch.version.cuda else ("CPU build" in line)
    assert resolve_device("auto") == torch.device("cpu")  # auto without a request stays quiet
    assert resolve_device("cpu") == torch.device("cpu")


def _cuda_fails_with(monkeypatch, message):
    def init():
        raise RuntimeError(message)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "init", init)


def test_a_driver_too_old_for_the_build_is_named_with_the_driver_needed(monkeypatch):
    _cuda_fails_with(monkeypatch, "The NVIDIA driver on your system is too old (found version "
                                  "12020). Please update your GPU driver.")
    problem = gpu_problem()
    assert problem.startswith("the NVIDIA driver is too old for this torch build (CUDA 13.0 "
                              "needs a driver R580 or newer)")
    assert "found version 12020" in problem


def test_no_driver_and_a_cpu_build_are_named(monkeypatch):
    _cuda_fails_with(monkeypatch, "Found no NVIDIA driver on your system.")
    assert "no GPU is visible to this process" in gpu_problem()
    assert "nvidia.com/gpu" in gpu_problem()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "is a CPU build without CUDA" in gpu_problem()


def test_fewer_gpus_than_requested_and_a_gpu_older_than_the_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Tesla P100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (6, 0))
    assert gpu_problem(4) == ("4 GPUs were requested but 2 are visible to this process (check "
                              "the pod's GPU limit and CUDA_VISIBLE_DEVICES)")
    assert "GPU 0 (Tesla P100, compute capability 6.0) is older than this torch build supports " \
           "(7.5 and newer" in gpu_problem(2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    assert gpu_problem(2) is None
    require_gpus(2, "asked")  # usable: no error
    with pytest.raises(GpuUnavailableError, match="^asked, and training refuses"):
        require_gpus(3, "asked")
    assert dev.DRIVER_NEEDED["13"].startswith("R580")


def test_the_driver_version_is_read_from_the_kernel_module_line(tmp_path, monkeypatch):
    from fairat import provenance

    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  "
                       "Release Build  (dvs-builder@U16-I3-B13-4-3)  Sun Jul 27 06:54:38 UTC 2025\n"
                       "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    assert provenance.nvidia_driver_version(version) == "580.65.06"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12\n")
    assert provenance.nvidia_driver_version(version) == "535.183.01"
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi either
    assert provenance.nvidia_driver_version(tmp_path / "absent") is None


def test_accelerator_facts_are_empty_on_cpu_and_stay_out_of_the_cpu_run_params():
    from fairat.config import Params, to_dict
    from fairat.provenance import accelerator_facts
    from fairat.steps.shared import run_params

    assert accelerator_facts(torch.device("cpu")) == {}
    assert run_params(Params(), torch.device("cpu")) == to_dict(Params())


def test_on_a_gpu_the_run_params_carry_the_accelerator(monkeypatch):
    """What the training run logs on a GPU: the params tree plus the accelerator facts."""
    from fairat import provenance
    from fairat.config import Params, to_dict
    from fairat.steps import shared

    facts = {"gpu": "NVIDIA H100", "nvidia_driver": "580.65.06", "cuda": "13.0",
             "torch": torch.__version__}
    monkeypatch.setattr(provenance, "accelerator_facts", lambda device: facts)
    logged = shared.run_params(Params(), torch.device("cuda", 0))
    assert logged == {**to_dict(Params()), "accelerator": facts}
