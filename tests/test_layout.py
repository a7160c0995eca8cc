"""The layout's promises: layers without import cycles, one home per rule, dvc.yaml deps that match
the code each stage runs, and dataclass defaults equal to params.yaml."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fairat import artifacts
from fairat.config import Params, load_params, to_dict
from fairat.fronts import dvc_deps

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("fairat", "pipelines", "components")
# config reads the training-method registry (a method's knobs live with its method); the registry
# imports only the foundation's fairat.knobs at import time, never torch or the rest of the engine
REGISTRY = "fairat.engine.methods"


def _modules() -> dict[str, Path]:
    out = {}
    for top in PROJECT:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _layer(module: str) -> str:
    """fairat.engine.data -> fairat.engine; fairat.config -> fairat (the foundation)."""
    parts = module.split(".")
    if module == "fairat.__main__":  # `python -m fairat` is the CLI front
        return "fairat.fronts"
    if parts[0] != "fairat":
        return parts[0]
    mods = _modules()
    return ".".join(parts[:2]) if len(parts) > 1 and (ROOT / "fairat" / parts[1]).is_dir() \
        else "fairat" if module in mods else module


def _graph() -> dict[str, set[str]]:
    """Layer -> layers it imports (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    mods = _modules()
    for name, path in mods.items():
        src = _layer(name)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for target in names:
                if name == "fairat.config" and target == REGISTRY:
                    continue  # the one named exception: see test_the_method_registry_is_torch_free
                if target.split(".")[0] in PROJECT:
                    dst = _layer(target)
                    if dst != src:
                        graph.setdefault(src, set()).add(dst)
    return graph


def test_layers_import_each_other_without_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join(path + [node, nxt])}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_method_registry_is_torch_free():
    # what makes config's read of the registry no real upward dependency: loading params pulls
    # in neither torch nor any engine module other than the registry's own
    code = ("import sys; from fairat.config import Params; Params(); "
            "from fairat.engine.methods import registry; registry(); "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or "
            "(m.startswith('fairat.engine.') and not m.startswith('fairat.engine.methods'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_package_never_imports_its_orchestration_wiring():
    graph = _graph()
    for layer, targets in graph.items():
        if layer.startswith("fairat"):
            assert not targets & {"pipelines", "components"}, (layer, targets)
    # the engine thinks; it never talks to MLflow, S3, Kubernetes or the fronts
    assert not graph.get("fairat.engine", set()) - {"fairat"}, graph.get("fairat.engine")


def test_dataclass_defaults_equal_params_yaml():
    assert to_dict(Params()) == to_dict(load_params(ROOT / "params.yaml"))


def test_dvc_yaml_uses_the_artifact_table():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    text = " ".join(s["cmd"] for s in stages.values())
    for key, path in artifacts.LOCAL.items():
        assert f"--{key} {path}" in text or f"--out {path}" in text, (key, path)
    register_outs = {k for out in stages["register"]["outs"] for k in out}
    assert {artifacts.LOCAL["registered"], artifacts.LOCAL["card"]} <= register_outs


@pytest.mark.parametrize("stage", dvc_deps.STAGES)
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    declared = dvc_deps.declared_code(yaml.safe_load((ROOT / "dvc.yaml").read_text()), stage)
    assert declared == dvc_deps.stage_code(stage), (
        "dvc.yaml deps drifted from the imports: run `python -m fairat.fronts.dvc_deps --write`")


def test_the_dependency_finder_follows_lazy_imports(tmp_path):
    pkg = tmp_path / "fairat"
    (pkg / "steps").mkdir(parents=True)
    (pkg / "fronts").mkdir()
    for folder in (pkg, pkg / "steps", pkg / "fronts"):
        (folder / "__init__.py").write_text("")
    (pkg / "fronts" / "cli.py").write_text("def main():\n    from fairat import heavy\n")
    (pkg / "heavy.py").write_text("")
    (pkg / "helper.py").write_text("")
    (pkg / "steps" / "gate.py").write_text("def gate_step():\n    import fairat.helper\n")
    files = dvc_deps.stage_code("gate", tmp_path)
    assert "fairat/helper.py" in files and "fairat/heavy.py" not in files


@pytest.mark.slow
def test_touching_a_module_makes_dvc_report_exactly_its_stages(tmp_path):
    """DVC itself, on a copy of the code and of dvc.yaml's code deps (commands replaced by `true`):
    a module changed after `dvc repro` makes `dvc status` report exactly the stages that run it."""
    copy = tmp_path / "repo"
    for top in PROJECT:
        shutil.copytree(ROOT / top, copy / top, ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    code = {name: dvc_deps.declared_code({"stages": stages}, name) for name in stages}
    (copy / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {n: {"cmd": "true", "deps": deps} for n, deps in code.items()}}))
    dvc = [sys.executable, "-m", "dvc"]
    run = lambda *a: subprocess.run([*dvc, *a], cwd=copy, check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout
    run("init", "--no-scm", "-q")
    run("repro", "-q")
    assert "up to date" in run("status").lower()
    # one module per distinct set of stages (touching every module costs a DVC call each; the
    # equality test above already ties every module to its stages)
    by_stages: dict[frozenset, str] = {}
    for rel in sorted({p for deps in code.values() for p in deps}):
        by_stages.setdefault(frozenset(n for n, deps in code.items() if rel in deps), rel)
    assert len(by_stages) >= 4  # prepare-only, train, evaluate and gate code are told apart
    for rel in by_stages.values():
        path = copy / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# touched\n")
        status = yaml.safe_load(run("status", "--json")) or {}
        path.write_bytes(original)
        expected = {n for n, deps in code.items() if rel in deps}
        assert set(status) == expected, (rel, set(status), expected)
