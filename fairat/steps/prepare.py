"""Prepare: load, validate and subset the data source; write the prepared folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fairat.config import Params
from fairat.engine.data import prepare, save_prepared
from fairat.io import atomic_folder


def check_output_folder(out_dir: str | Path) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created/written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file, not a folder; choose another --out")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise NotADirectoryError(f"output folder {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {out}: {parent} is not writable")


def prepare_step(params: Params, out_dir: str | Path) -> dict[str, Any]:
    """Load, validate and subset the data; write train/val/test .npz and manifest.json.

    The folder is built beside ``out_dir`` and swapped in whole, so a failure half-way (a full
    disk, Ctrl-C) leaves the previous prepared data exactly as it was.
    """
    check_output_folder(out_dir)
    data = prepare(params.data)
    with atomic_folder(out_dir) as tmp:
        manifest = save_prepared(data, tmp, params.data)
    counts = {split: manifest["splits"][split]["n"] for split in manifest["splits"]}
    print(f"prepared {params.data.source}: {counts} -> {out_dir}", flush=True)
    return manifest
