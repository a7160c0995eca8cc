"""Shared fixtures: tiny real data (scikit-learn digits), tiny models, tiny runs; CPU only.

The tiny-run settings themselves live in ``tests/tiny.py`` (importable: ``from tiny import tiny,
cli_flags``), the hand-made report pieces in ``tests/reports.py``, the loopback servers in
``tests/servers.py``. Trained things are session-scoped: tests share one tiny trained model
instead of training their own.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Callable

import pytest
import torch

from fairat.config import DataConfig
from fairat.engine.data import PreparedData, prepare
from fairat.engine.models import ModelSpec, build_model
from tiny import TINY_RUN, train_paths

pytest_plugins = ["servers"]  # loopback S3, PostgreSQL and mlflow servers: tests/servers.py

# Two cores: two threads for one pytest process; one each for pytest-xdist's workers.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def digits() -> PreparedData:
    """Digits with a 10-per-class validation split; the same object for the whole session."""
    return prepare(DataConfig(source="digits", val_per_class=10, seed=0))


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", ModelSpec(1, 10, 8, (0.3,), (0.3,)), width=8).eval()


@pytest.fixture(scope="session")
def trained_model(digits) -> torch.nn.Module:
    """A small CNN trained briefly on clean digits (about a second), so attacks have a slope."""
    torch.manual_seed(0)
    spec = ModelSpec(1, 10, 8, (0.3,), (0.3,))
    model = build_model("small_cnn", spec, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = digits.train.images.float() / 255
    y = digits.train.labels
    model.train()
    for step in range(150):
        idx = torch.randint(0, len(y), (64,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture
def tiny_run() -> dict:
    """A fresh copy of the tiny-run overrides (dotted keys) a test may extend."""
    return dict(TINY_RUN)


@pytest.fixture
def paths(tmp_path):
    """A TrainPaths under this test's ``tmp_path``."""
    return train_paths(tmp_path)


@pytest.fixture(scope="session")
def _mlflow_schema(tmp_path_factory) -> Path:
    """An SQLite file at MLflow's current schema with no experiment in it, made once a session.

    Why: MLflow builds a new SQLite store by running every one of its schema migrations (about
    3 s of CPU, far more than the tiny runs the tests log), and several tests each start a
    fresh store. A copy of this file is a fresh store: MLflow skips the migrations on a database
    at its schema and creates the Default experiment (with its artifact folder beside the copy)
    on first use, since this template has none.
    """
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM experiment_tags")
        db.execute("DELETE FROM experiments")
    return path


@pytest.fixture(scope="session")
def mlflow_sqlite(_mlflow_schema) -> Callable[[Path], str]:
    """``mlflow_sqlite(path)`` puts a fresh, empty MLflow SQLite store at ``path`` (its folder is
    created) and returns its ``sqlite:///`` URI."""
    def make(path: Path) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_mlflow_schema, path)
        return f"sqlite:///{path}"

    return make


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than the CPUs this process may use (affinity and cgroup quota).

    Why more workers than cores: an end-to-end test's worker mostly waits, on stage
    subprocesses, servers starting and DVC, so with one worker per core the cores sat idle for
    part of the run. Measured from a clean checkout on a quiet 2-core Xeon: 5 min 20 s with 2
    workers, 4 min 41 s with 3. On a quiet 2-core AMD EPYC from a fresh clone (2026-12-07):
    5 min 12 s with 3, 5 min 19 s and 5 min 37 s with 4 (beside two niced study processes 4
    had looked faster, 4 min 53 s against 5 min 14 s: it is not, on a quiet machine). With the
    longest files first (below), 3 workers took 4 min 27 s and 4 min 12 s (2026-12-08)."""
    from fairat.engine.threads import affinity_cpus, cgroup_cpu_limit

    quota = cgroup_cpu_limit()
    usable = affinity_cpus() if quota is None else max(1, min(affinity_cpus(), int(quota)))
    return usable + 1


# the files that cost most CPU on a 2-core machine, most first (per-test CPU seconds, the test's
# process and its children, 2026-12-08 on the AMD EPYC: 100, 71, 69, 37, 29, 22, 20, 19, 18, 14;
# team mode waits on its servers for most of its 48 s)
LONGEST_FIRST = ("test_pipeline_dvc.py", "test_distributed.py", "test_kfp_local_run.py",
                 "test_kfp_submit.py", "test_team_mode.py", "test_storage.py", "test_layout.py",
                 "test_benchmark_smoke.py", "test_kfp_compile.py", "test_guard.py",
                 "test_cli_end_to_end.py", "test_autoattack_fast.py", "test_registry.py")


def pytest_collection_modifyitems(config, items):
    """Files holding ``slow`` tests run first, and tests marked ``gpu`` need CUDA.

    Why the order: the suite runs one file per pytest-xdist worker at a time (``--dist
    loadfile``), in collection order; a minute-long end-to-end file collected last keeps one
    worker busy after the others have finished, so the long files start first and the short ones
    fill the gaps (a stable sort: the order inside a file is kept). pytest-xdist would otherwise
    reorder the files by how many tests each holds, most first, which put the two longest files
    (one and five tests) last: ``--no-loadscope-reorder`` in pyproject.toml keeps this order.
    On a machine without CUDA the ``gpu`` tests are reported as skipped (never passed);
    `benchmarks/gpu_check.sh` runs them where a GPU is lent."""
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: (LONGEST_FIRST.index(item.path.name)
                                 if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST),
                                 item.path not in slow_files))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
