"""Prepare: load, validate and subset the data source; write the prepared folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairat.config import Params
from fairat.engine.data import prepare, save_prepared


def prepare_step(params: Params, out_dir: str | Path) -> dict[str, Any]:
    """Load, validate and subset the data; write train/val/test .npz and manifest.json."""
    data = prepare(params.data)
    manifest = save_prepared(data, out_dir, params.data)
    counts = {split: manifest["splits"][split]["n"] for split in manifest["splits"]}
    print(f"prepared {params.data.source}: {counts} -> {out_dir}", flush=True)
    return manifest
