"""Outputs are whole or absent: prepare swaps its folder in atomically, bad output paths fail
early with one line, and files respect the umask."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fairat.config import DataConfig, Params
from fairat.fronts.cli import main
from fairat.steps.prepare import prepare_step

PARAMS = Params(data=DataConfig(source="digits", train_per_class=20, val_per_class=5,
                                test_per_class=5))


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_failing_half_way_leaves_the_previous_folder_byte_identical(tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    prepare_step(PARAMS, out)
    before = _snapshot(out)
    from fairat.engine import data as data_module

    real, calls = data_module._write_npz, []

    def full_disk(path, arrays):
        calls.append(path)
        if len(calls) == 2:  # train.npz written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, arrays)

    monkeypatch.setattr(data_module, "_write_npz", full_disk)
    other = Params(data=DataConfig(source="digits", train_per_class=30, val_per_class=5,
                                   test_per_class=5, seed=3))
    with pytest.raises(OSError, match="No space left"):
        prepare_step(other, out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temp folder left


def test_files_and_folders_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        prepare_step(PARAMS, tmp_path / "prepared")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == 0o755
    for path in (tmp_path / "prepared").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.mark.parametrize("relative, message", [
    ("README.md", "is a file, not a folder"),
    ("README.md/prepared", "cannot be created: "),
])
def test_bad_output_folders_fail_early_with_one_line(tmp_path, capsys, relative, message):
    (tmp_path / "README.md").write_text("not a folder")
    target = tmp_path / relative
    code = main(["prepare", "--params", "params.yaml", "--out", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
