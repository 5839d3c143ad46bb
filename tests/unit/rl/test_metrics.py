"""MetricsBuffer: NaN-ignoring means, and a real two-process gloo reduction."""

import json
import math
import os
import subprocess
import sys

import pytest

from musicrl.rl.metrics import MetricsBuffer
from tests.utils.processes import REPO_ROOT, free_port


def test_one_process_averages_the_buffer_ignoring_nan_and_clears_it():
    buffer = MetricsBuffer()
    for value in (1.0, float("nan"), 3.0):
        buffer.add("reward/mean", value)
    buffer.add("held_out/mean", float("nan"))
    reduced = buffer.reduce()
    assert reduced["reward/mean"] == 2.0 and math.isnan(reduced["held_out/mean"])
    assert buffer.reduce() == {}


@pytest.mark.slow  # two Python processes that import torch: ~8 s on two busy cores
def test_two_gloo_processes_log_the_same_means_over_ranks_ignoring_nan(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}  # fmt: skip
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.utils.metrics_worker", str(tmp_path)],
            cwd=REPO_ROOT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr[-4000:]
    results = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    assert [r["device"] for r in results] == [r["collective_device"] for r in results] == ["cpu", "cpu"]
    assert results[0]["metrics"] == results[1]["metrics"]  # every rank logs the same line
    # rank means 2 and 6; kl 1 and 2; held_out only on rank 0 (rank 1's NaN is ignored, not averaged in)
    assert results[0]["metrics"] == {"reward/mean": 4.0, "kl": 1.5, "held_out/mean": 0.25}
