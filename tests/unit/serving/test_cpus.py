"""The CPUs a server sizes torch's pool from: the cgroup's quota, within the process's affinity."""

import os
from pathlib import Path

import pytest

from musicrl.serving.cpus import available_cpus, quota_cpus, torch_threads


ALLOWED = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota_us: int, period_us: int = 100_000) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return root


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: _v2(root, "150000 100000\n"), 1.5),
        (lambda root: _v2(root, "max 100000\n"), None),
        (lambda root: _v1(root, 300_000, 100_000), 3.0),
        (lambda root: _v1(root, -1), None),
        (lambda root: root, None),  # no cgroup files at all (not Linux, or not mounted)
    ],
)
def test_the_quota_is_read_from_cgroup_v2_or_v1(tmp_path: Path, make, expected) -> None:
    assert quota_cpus(make(tmp_path / "cgroup")) == expected


def test_a_fractional_quota_rounds_up_and_the_affinity_caps_it(tmp_path: Path) -> None:
    assert available_cpus(_v2(tmp_path / "half", "50000 100000")) == 1
    assert available_cpus(_v2(tmp_path / "one-and-a-half", "150000 100000")) == min(2, ALLOWED)
    assert available_cpus(_v2(tmp_path / "a-node", "6400000 100000")) == ALLOWED  # 64 CPUs of quota
    assert available_cpus(_v2(tmp_path / "unlimited", "max 100000")) == ALLOWED


def test_a_requested_count_wins_then_omp_num_threads_then_the_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _v2(tmp_path / "cgroup", "100000 100000")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads(3, root) == 3
    assert torch_threads(0, root) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert torch_threads(0, root) is None  # torch read OMP_NUM_THREADS itself: leave it
    assert torch_threads(2, root) == 2
