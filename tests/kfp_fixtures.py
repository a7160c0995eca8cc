"""Fixtures and helpers the tests/pipelines/test_kfp_*.py and tests/cluster/test_kfp_*.py modules share (imported by name; pytest picks up
an imported fixture): the repository, its params, the compiled pipeline IR."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fairat.config import load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    from pipelines.cli import compile_to

    out = compile_to(tmp_path_factory.mktemp("ir") / "fairat_pipeline.yaml", REPO / "params.yaml")
    return out.read_text()


def pipeline_spec(ir):
    """The pipeline document (the second YAML document is the Kubernetes platform spec)."""
    return next(yaml.safe_load_all(ir))
