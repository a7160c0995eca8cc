"""Thread count from affinity, cgroup v1/v2 quotas and torchrun ranks, on fake cgroup files."""

from pathlib import Path

import pytest
import torch

from fairat.engine import threads


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_quota_parsing():
    assert threads.quota_v2("200000 100000") == 2.0
    assert threads.quota_v2("150000 100000") == 1.5
    assert threads.quota_v2("max 100000") is None
    assert threads.quota_v2("") is None and threads.quota_v2(None) is None
    assert threads.quota_v1("50000", "100000") == 0.5
    assert threads.quota_v1("-1", "100000") is None
    assert threads.quota_v1(None, "100000") is None


def test_cgroup_v2_takes_the_tightest_level(tmp_path):
    _write(tmp_path / "cpu.max", "max 100000")
    _write(tmp_path / "kubepods" / "cpu.max", "400000 100000")
    _write(tmp_path / "kubepods" / "pod1" / "cpu.max", "150000 100000")
    limit = threads.cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n")
    assert limit == 1.5
    assert threads.cgroup_cpu_limit(tmp_path, "0::/\n") is None  # the root has no limit


def test_cgroup_v1_quota(tmp_path):
    _write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "300000")
    _write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1")
    _write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    proc = "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    assert threads.cgroup_cpu_limit(tmp_path, proc) == 3.0
    # the cgroup path of the host is not visible inside the container: the mount root's file
    # (the container's own cgroup) is read instead
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "200000")
    assert threads.cgroup_cpu_limit(tmp_path, "3:cpu,cpuacct:/elsewhere\n") == 2.0


def test_usable_threads_combines_affinity_quota_ranks_and_load():
    def use(**kw):
        return threads.usable_threads(**{"quota": None, "local_world_size": 1, "load": 0.0, **kw})
    assert use(affinity=16) == 16
    assert use(affinity=16, quota=2.5) == 3  # a fractional quota rounds up
    assert use(affinity=2, quota=8.0) == 2
    assert use(affinity=16, local_world_size=4) == 4
    assert use(affinity=2, local_world_size=4) == 1  # at least 1
    assert use(affinity=8, quota=0.5) == 1
    # other work on the cores leaves fewer threads, never none
    assert use(affinity=2, load=9.0) == 1
    assert use(affinity=16, load=6.2) == 10
    assert use(affinity=16, load=6.2, local_world_size=2) == 5
    assert use(affinity=2, load=0.4) == 2


def test_fit_torch_threads_respects_explicit_choices(monkeypatch):
    old = torch.get_num_threads()
    try:
        monkeypatch.setenv("FAIRAT_THREADS", "1")
        assert threads.fit_torch_threads() == 1
        monkeypatch.setenv("FAIRAT_THREADS", "0")
        with pytest.raises(ValueError, match="FAIRAT_THREADS"):
            threads.fit_torch_threads()
        monkeypatch.delenv("FAIRAT_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert threads.fit_torch_threads() == 1  # left alone
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(threads, "usable_threads", lambda: 1)
        monkeypatch.setattr(threads, "_chosen", None)  # no choice kept from an earlier step
        assert threads.fit_torch_threads() == 1
    finally:
        torch.set_num_threads(old)


STAT_BEFORE = """cpu  300 0 100 1000 0 0 0 0 0 0
cpu0 100 0 50 500 0 0 0 0 0 0
cpu1 200 0 50 500 0 0 0 0 0 0
intr 12345
"""
# 100 jiffies pass on each CPU: cpu0 busy 90 of them, cpu1 busy 10 (and 5 in iowait, idle)
STAT_AFTER = """cpu  400 0 100 1180 5 0 0 0 0 0
cpu0 190 0 50 510 0 0 0 0 0 0
cpu1 210 0 50 585 5 0 0 0 0 0
intr 23456
"""


def test_cpu_times_sums_the_chosen_cpus_and_counts_iowait_as_idle():
    assert threads.cpu_times(STAT_BEFORE) == (1400, 1000)
    assert threads.cpu_times(STAT_AFTER, {1}) == (850, 590)
    assert threads.cpu_times(STAT_AFTER, {7}) is None
    assert threads.cpu_times("") is None and threads.cpu_times(None) is None


def test_busy_cpus_measures_other_work_between_two_reads():
    def reader():
        snapshots = iter([STAT_BEFORE, STAT_AFTER])
        return lambda: next(snapshots)

    assert threads.busy_cpus(0, {0, 1}, reader()) == pytest.approx(2 * 100 / 200)
    assert threads.busy_cpus(0, {0}, reader()) == pytest.approx(0.9)
    assert threads.busy_cpus(0, {1}, reader()) == pytest.approx(0.1)
    assert threads.busy_cpus(0, {0, 1}, lambda: None) is None  # no /proc/stat: the caller falls back


def test_the_load_of_a_stage_that_just_ended_does_not_cost_threads(monkeypatch):
    """The 1-minute load average still counts a stage that ended seconds ago; the fresh sample
    does not, so a quiet machine gets every usable CPU."""
    monkeypatch.setattr(threads, "busy_cpus", lambda: 0.05)
    monkeypatch.setattr(threads, "_load_1min", lambda: 1.9)
    assert threads.usable_threads(affinity=2, quota=None, local_world_size=1) == 2
    monkeypatch.setattr(threads, "busy_cpus", lambda: None)  # no /proc/stat: the load average
    assert threads.usable_threads(affinity=2, quota=None, local_world_size=1) == 1


def test_steps_in_one_process_keep_one_choice_for_a_while(monkeypatch):
    """The busy-CPU sample costs half a second; steps run back to back in one process (model and
    baseline in `fairat run`) reuse the choice, and choose again after RECHOOSE_AFTER_S."""
    calls = []
    monkeypatch.delenv("FAIRAT_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_threads", lambda: calls.append(1) or 1)
    monkeypatch.setattr(threads, "_chosen", None)
    old = torch.get_num_threads()
    try:
        threads.fit_torch_threads()
        threads.fit_torch_threads()
        assert len(calls) == 1
        monkeypatch.setattr(threads, "_chosen", (threads._chosen[0] - threads.RECHOOSE_AFTER_S - 1, 1))
        threads.fit_torch_threads()
        assert len(calls) == 2
    finally:
        torch.set_num_threads(old)
