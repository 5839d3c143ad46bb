"""How many CPUs this process may really use: the container's CPU quota, not the node's core count.

torch sizes its intra-op pool from the cores it sees, which in a pod are the node's (64 on a GPU node) even
when the pod's CPU limit is 2. Sixty-four threads on two CPUs' worth of quota spend their time at barriers,
descheduled: on a 2-core machine shared with one other busy process, a toy codec trained at 0.19 steps/s with 2
torch threads and at 2.5 steps/s with 1. The chart sets ``OMP_NUM_THREADS`` from the pod's limit; a container
started any other way (a plain ServingRuntime, ``docker run --cpus 2``) gets the same answer from here.
"""

import math
import os
from pathlib import Path


CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 for ``150000 100000``), or None when unlimited.

    Reads cgroup v2's ``cpu.max`` (``<quota> <period>`` or ``max <period>``), else v1's
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` (a quota of -1 is no limit).
    """
    v2 = cgroup_root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100_000)
    v1_quota, v1_period = cgroup_root / "cpu" / "cpu.cfs_quota_us", cgroup_root / "cpu" / "cpu.cfs_period_us"
    if v1_quota.is_file() and v1_period.is_file():
        quota_us = int(v1_quota.read_text())
        return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    return None


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process may use: its quota rounded up, within the cores it is allowed to run on."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = quota_cpus(cgroup_root)
    return max(1, min(allowed, math.ceil(quota)) if quota is not None else allowed)


def torch_threads(requested: int = 0, cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """The intra-op thread count to set: ``requested`` when positive; else, unless ``OMP_NUM_THREADS`` is
    set (torch reads it itself), the available CPUs. None means leave torch as it is.
    """
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return available_cpus(cgroup_root)
