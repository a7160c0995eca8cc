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

from fairat import artifacts, stages
from fairat.config import Params, load_params, to_dict
from fairat.evidence.comparison import BASELINE_METHOD
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


def test_the_steps_that_read_only_reports_never_import_torch():
    # compare and the gate judge JSON evidence: a stage process that imports torch pays ~2 s of
    # CPU at start-up for nothing (and every end-to-end test pays it again)
    code = ("import sys; import fairat.steps.compare, fairat.steps.gate; "
            "print(sorted(m for m in sys.modules if m == 'torch')); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


# docs/architecture.md, "The layers, in order": a layer imports only layers of a lower rank
LAYERS = {"fairat": 1, "fairat.engine": 2, "fairat.evidence": 3, "fairat.edge": 4,
          "fairat.steps": 5, "fairat.fronts": 6, "fairat.cluster": 6, "components": 7,
          "pipelines": 8}


def test_layers_import_only_layers_below_them():
    graph = _graph()
    assert set(graph) | {d for targets in graph.values() for d in targets} <= set(LAYERS), \
        "a new layer: give it its rank here and in docs/architecture.md"
    wrong = sorted(f"{src} -> {dst}" for src, targets in graph.items() for dst in targets
                   if LAYERS[dst] >= LAYERS[src])
    assert not wrong, f"imports against the layer order of docs/architecture.md: {wrong}"
    text = (ROOT / "docs/architecture.md").read_text()
    for layer, rank in LAYERS.items():  # the doc's table names every layer at its rank
        path = layer.replace(".", "/") + "/" if layer != "fairat" else "foundation"
        assert f"| {rank} |" in text and path in text, layer


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


def _paths(entries: list) -> set[str]:
    """``deps``/``outs`` entries of a dvc.yaml stage: plain paths or ``{path: options}``."""
    return {e if isinstance(e, str) else next(iter(e)) for e in entries or []}


def test_dvc_yaml_is_the_stage_table():
    """dvc.yaml has the table's stages in its order; each runs its step's command with exactly
    the table's files as flags, depends on its inputs and declares its outputs."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == [s.name for s in stages.STAGES]
    for st in stages.STAGES:
        words = " ".join(dvc[st.name]["cmd"].split()).split(" ")
        assert words[:2] == ["fairat", st.command], st.name
        flags = {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}
        assert flags == st.flags(), st.name
        assert ("train.method=" + BASELINE_METHOD in words) == (st.baseline and
                                                                st.command == "train"), st.name
        deps = _paths(dvc[st.name].get("deps"))
        outs = _paths(dvc[st.name].get("outs")) | _paths(dvc[st.name].get("metrics"))
        assert {st.path(k) for k in st.inputs} <= deps, st.name
        assert {st.path(k) for k in st.outputs} <= outs, st.name
        if st.needs_baseline:
            assert {artifacts.BASELINE["report"], artifacts.BASELINE["metrics"]} <= deps


def test_the_stage_graph_is_dvc_yamls():
    """Each stage waits for exactly the stages dvc.yaml makes it wait for (their outs among its
    deps), and every stage comes after the stages it waits for in the table's order."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {name: _paths(s.get("outs")) | _paths(s.get("metrics")) for name, s in dvc.items()}
    order = [s.name for s in stages.STAGES]
    for st in stages.STAGES:
        deps = _paths(dvc[st.name].get("deps"))
        implied = tuple(n for n in order if n != st.name and deps & outs[n])
        assert stages.upstream(st) == implied, st.name
        assert all(order.index(u) < order.index(st.name) for u in implied), st.name


def test_every_stage_step_exists():
    import importlib

    for st in stages.STAGES:
        module, _, function = st.step.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), st.step


OTHER_FRONTS = ("fairat/fronts/guard_cli.py", "fairat/fronts/storage_cli.py", "pipelines/cli.py")


def test_a_stage_runs_no_other_front():
    """The S3, guard and Kubeflow fronts load only for their own command: editing them (a help
    text) cannot make DVC re-run training or AutoAttack. Checked in the generated deps and at
    run time (a stage's command imports none of them)."""
    for stage in dvc_deps.STAGES:
        assert not set(OTHER_FRONTS) & set(dvc_deps.stage_code(stage)), stage
    code = ("import sys; from fairat.fronts.cli import main\n"
            "for argv in (['train', '--params', 'missing.yaml'], ['evaluate', '--params', 'x']):\n"
            "    assert main(argv) == 2\n"
            "loaded = {m for m in sys.modules if m.startswith(('fairat.fronts.', 'pipelines'))}\n"
            "assert loaded == {'fairat.fronts.cli'}, loaded")
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env,
                   capture_output=True)


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


def _code_only_repo(tmp_path: Path) -> tuple[Path, dict[str, list[str]], object]:
    """A copy of the code and of dvc.yaml's code deps (commands replaced by `true`), reproduced
    once; returns it, each stage's code deps and a function running `dvc ARGS` there."""
    copy = tmp_path / "repo"
    for top in PROJECT:
        shutil.copytree(ROOT / top, copy / top, ignore=shutil.ignore_patterns("__pycache__"))
    dvc_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    code = {name: dvc_deps.declared_code({"stages": dvc_stages}, name) for name in dvc_stages}
    (copy / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {n: {"cmd": "true", "deps": deps} for n, deps in code.items()}}))
    dvc = [sys.executable, "-m", "dvc"]
    run = lambda *a: subprocess.run([*dvc, *a], cwd=copy, check=True, capture_output=True,  # noqa: E731
                                    text=True).stdout
    run("init", "--no-scm", "-q")
    run("repro", "-q")
    assert "up to date" in run("status").lower()
    return copy, code, run


# What decides promotion, not how a model is trained or attacked: an edit here must not re-train
# or re-run AutoAttack (minutes to hours), so training and evaluation must not import it.
PROMOTION_RULES = ("fairat/evidence/gate.py", "fairat/evidence/protocol.py",
                   "fairat/evidence/approval.py", "fairat/evidence/report_checks.py",
                   "fairat/evidence/comparison.py", "fairat/evidence/verified.py",
                   "fairat/evidence/model_card.py", "fairat/edge/registry.py")


@pytest.mark.parametrize("stage", ["train", "evaluate", "baseline_train", "baseline_evaluate"])
def test_training_and_evaluation_do_not_run_the_promotion_rules(stage):
    code = set(dvc_deps.stage_code(stage))
    assert not code & set(PROMOTION_RULES), sorted(code & set(PROMOTION_RULES))
    assert "fairat/evidence/gate.py" in dvc_deps.stage_code("gate")  # the rule is where it acts


@pytest.mark.slow
def test_a_help_text_edit_in_another_front_reruns_no_stage(tmp_path):
    """DVC itself: after `dvc repro`, editing the help of `fairat storage`, `fairat guard` and
    `fairat pipeline` leaves every stage, train and evaluate included, up to date."""
    copy, _, run = _code_only_repo(tmp_path)
    for rel in OTHER_FRONTS:
        path = copy / rel
        text = path.read_text()
        assert "help=\"" in text, rel
        path.write_text(text.replace("help=\"", "help=\"(edited) ", 1))
    assert yaml.safe_load(run("status", "--json")) in ({}, None)


@pytest.mark.slow
def test_touching_a_module_makes_dvc_report_exactly_its_stages(tmp_path):
    """DVC itself, on a copy of the code and of dvc.yaml's code deps (commands replaced by `true`):
    a module changed after `dvc repro` makes `dvc status` report exactly the stages that run it."""
    copy, code, run = _code_only_repo(tmp_path)
    # one module per distinct set of stages (touching every module costs a DVC call each; the
    # equality test above already ties every module to its stages)
    by_stages: dict[frozenset, str] = {}
    for rel in sorted({p for deps in code.values() for p in deps}):
        by_stages.setdefault(frozenset(n for n, deps in code.items() if rel in deps), rel)
    assert len(by_stages) >= 4  # prepare-only, train, evaluate and gate code are told apart
    from dvc.repo import Repo

    def stale() -> set[str]:  # `dvc status` through DVC's API: no DVC start-up (~2 s) per module
        with Repo(str(copy)) as repo:
            return {name.split(":")[-1] for name in repo.status()}

    assert stale() == set()
    for rel in by_stages.values():
        path = copy / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# touched\n")
        status = stale()
        path.write_bytes(original)
        expected = {n for n, deps in code.items() if rel in deps}
        assert status == expected, (rel, status, expected)


TEST_FOLDERS = {"foundation", "engine", "evidence", "edge", "steps", "fronts", "cluster",
                "pipelines", "benchmarks", "data"}


def test_tests_mirror_the_layers():
    """A test lives in the folder of the layer whose code it covers (tests/<layer>/); only the
    tests about the whole (this layout check, the shared fixtures) sit at the top."""
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders <= TEST_FOLDERS, folders - TEST_FOLDERS
    assert sorted(p.name for p in tests.glob("test_*.py")) == ["test_fixtures.py", "test_layout.py"]
    assert all(list(p.glob("test_*.py")) for p in tests.iterdir()
               if p.is_dir() and p.name in TEST_FOLDERS - {"data"})
