"""Several params files merged in order: a base (``params.yaml``) and overlays that hold only what
differs (``params/cifar10-cpu.yaml``), as ``fairat run --params params.yaml --params
params/cifar10-cpu.yaml`` reads them.

Why overlays: a variant that copied all of ``params.yaml`` kept the copy's stale comments and
silently missed every later change to the base. Merge rule: sections (mappings) merge key by key,
at any depth; any other value (a number, a list, null) from a later file replaces the earlier one.
A file given alone is merged onto the built-in defaults, which equal ``params.yaml``
(``tests/test_layout.py`` holds them equal), so ``--params params/cifar10-cpu.yaml`` alone gives
the same params as with ``params.yaml`` before it. Validation happens once, on the merged tree
(:func:`fairat.config.params_from_raw`), so an overlay may be valid only on top of its base.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

from fairat.config import ConfigError, Params, params_from_raw, read_params_file


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on ``base`` (neither changed): mappings merge by key, other values replace."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged_tree(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The files' trees merged in order (later files win)."""
    tree: dict[str, Any] = {}
    for path in paths:
        tree = merge(tree, read_params_file(path))
    return tree


def load_params_files(paths: Sequence[str | Path] | str | Path,
                      overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Params:
    """Params from ``paths`` merged in order, then ``overrides`` (``-S``), validated once."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError("no params file given")
    return params_from_raw(merged_tree(paths), overrides)
