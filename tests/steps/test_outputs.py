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


def test_a_stage_with_a_missing_input_refuses_before_writing(tmp_path, monkeypatch, capsys):
    """A fresh clone has the committed metrics but not the DVC-cached model: `fairat gate` must
    not record a blocked decision over the committed one (nor evaluate work, then fail)."""
    import shutil
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "metrics").mkdir()
    committed = b'{"passed": true}'
    for name in ("gate.json", "gate_metrics.json", "eval.json"):
        (tmp_path / "metrics" / name).write_bytes(committed)
    assert main(["gate"]) == 2
    err = capsys.readouterr().err
    assert "missing input models/model.pt" in err and "dvc pull" in err
    assert (tmp_path / "metrics" / "gate.json").read_bytes() == committed
    assert (tmp_path / "metrics" / "gate_metrics.json").read_bytes() == committed
    assert main(["evaluate"]) == 2
    assert "missing input data/prepared, models/model.pt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == \
        ["eval.json", "gate.json", "gate_metrics.json", "params.yaml"]


def test_the_run_says_how_to_add_a_dvc_remote_only_when_none_is_set(tmp_path):
    from fairat.fronts.cli import dvc_remote_hint

    assert dvc_remote_hint(tmp_path) is None  # not a DVC repository
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    autostage = true\n")
    (tmp_path / "sub").mkdir()
    hint = dvc_remote_hint(tmp_path / "sub")
    assert hint and "fairat storage dvc-remote" in hint
    (tmp_path / ".dvc" / "config.local").write_text("['remote \"storage\"']\n    url = s3://b/p\n")
    assert dvc_remote_hint(tmp_path / "sub") is None


def test_numbers_for_people_are_percent_and_points():
    from fairat.fronts.registry_cli import percent

    assert percent("0.6571428") == "65.7%" and percent(0.3) == "30.0%"
    assert percent("0.057", signed=True) == "+5.7 pts" and percent(-0.056, signed=True) == "-5.6 pts"
    assert percent(None) == percent("None") == percent("") == percent("nan") == "-"


def test_the_comparison_chart_shows_both_runs_and_the_gate_line(tmp_path):
    """Per class, this model's bar beside the baseline's (in the model's class order), and the
    chart is drawn with or without the baseline's numbers."""
    from fairat.evidence.report import comparison_series, plot_comparison

    def report(method, per_class):
        return {"class_names": ["a", "b"], "eps": 0.1,
                "provenance": {"train_config": {"train": {"method": method}}},
                "attacks": {"worst_case": {"per_class": per_class, "summary": {
                    "worst": min(per_class.values()), "average": sum(per_class.values()) / 2,
                    "worst_class": min(per_class, key=per_class.get)}}}}

    mine, base = report("fairat", {"a": 0.9, "b": 0.5}), report("pgd_at", {"a": 0.9, "b": 0.4})
    base["class_names"] = ["a", "b"]
    series = comparison_series(mine, base, "worst_case")
    assert [(label, d["values"]) for label, d in series] == \
        [("fairat", [0.9, 0.5]), ("pgd_at (baseline)", [0.9, 0.4])]
    assert comparison_series(mine, {**base, "class_names": ["b", "a"]}, "worst_case")[1:] == []
    plot_comparison(mine, base, "worst_case", 0.3, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base["attacks"] = {}  # a baseline without the gate's attack: this model's bars, said so
    assert [label for label, _ in comparison_series(mine, base, "worst_case")] == ["fairat"]
    plot_comparison(mine, base, "worst_case", None, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 0
