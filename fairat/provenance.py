"""Where a result came from: library versions and the git commit of the code that produced it.

Why apart from the engine: evaluation records these facts in its report, and registration and the
model card record them on the model version; both read them here.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import fairat


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding the fairat package, or None."""
    cwd = Path(fairat.__file__).resolve().parent if cwd is None else cwd
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
