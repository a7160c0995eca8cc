"""The code each `dvc.yaml` stage runs, computed from the imports, so its ``deps`` cannot drift.

Why computed: a stage that forgets one module it imports is reported "up to date" after that
module changes, and ``dvc repro`` silently keeps a stale model or report. A stage runs
``fairat <step>`` (:data:`STEP_OF`, from the stage table :data:`fairat.stages.STAGES`): the CLI
module and what it imports at module level (the other fronts, S3, the guard, Kubeflow, load only
when their own command runs), plus the stage's step module and everything it imports, at any
depth and also inside functions (a lazy import still runs), plus the ``__init__`` of every package
on the way. Third-party imports
are not listed (the pinned environment covers them).

``python -m fairat.fronts.dvc_deps`` prints each stage's list; ``--write`` puts them into
``dvc.yaml`` (between its data deps and the next key); a test fails when they differ.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from fairat.stages import STAGES as TABLE

PACKAGE = "fairat"
PROJECT = (PACKAGE, "pipelines", "components")  # importable folders of this repo
# dvc.yaml stage -> the step module it runs (the baseline stages run train and evaluate again)
STEP_OF = {s.name: s.module for s in TABLE}
STAGES = tuple(STEP_OF)
ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ("pipelines.cli",)  # subcommands the CLI loads by entry point, on use (pyproject.toml)


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Project modules ``path`` imports (``from fairat.x import y`` may name module ``x.y``)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] in PROJECT}


def _with_packages(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _is_front(name: str) -> bool:
    """Fronts dispatch on argv: only what they import at module level runs for every command."""
    return name.startswith("fairat.fronts.") or name in PLUGINS


def closure(start: list[str], root: Path = ROOT) -> set[Path]:
    """Files of ``start`` and every project module they import, transitively (fronts: only
    their module-level imports)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        for mod in _with_packages(name):
            if mod in seen:
                continue
            seen.add(mod)
            path = _module_file(mod, root)
            if path is None:  # ``from fairat.x import name`` where name is not a module
                continue
            files.add(path)
            todo += sorted(_imports(path, top_level_only=_is_front(mod)))
    return files


def stage_code(stage: str, root: Path = ROOT) -> list[str]:
    """Repo-relative paths of the project code ``fairat <stage>`` runs, sorted."""
    files = closure(["fairat.fronts.cli", STEP_OF.get(stage, f"fairat.steps.{stage}")], root)
    return sorted(p.relative_to(root).as_posix() for p in files)


def declared_code(dvc_yaml: dict, stage: str) -> list[str]:
    """The ``.py`` entries of a stage's ``deps`` in a parsed ``dvc.yaml``."""
    deps = dvc_yaml["stages"][stage].get("deps", [])
    return sorted(d for d in deps if isinstance(d, str) and d.endswith(".py"))


def write(dvc_path: Path, root: Path = ROOT) -> None:
    """Replace each stage's ``- *.py`` deps lines with the computed list, in place."""
    lines = dvc_path.read_text().splitlines(keepends=True)
    out: list[str] = []
    stage = None
    for line in lines:
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage = stripped[:-1]
        if stage in STAGES and stripped.startswith("- ") and stripped.endswith(".py"):
            continue
        out.append(line)
        if stage in STAGES and stripped == "deps:":
            indent = line[: len(line) - len(line.lstrip())] + "  "
            out += [f"{indent}- {path}\n" for path in stage_code(stage, root)]
    dvc_path.write_text("".join(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update dvc.yaml in place")
    args = parser.parse_args(argv)
    if args.write:
        write(ROOT / "dvc.yaml")
    for stage in STAGES:
        print(f"{stage}:", *stage_code(stage), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
