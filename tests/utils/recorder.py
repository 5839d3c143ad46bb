"""Run the recorder (``python -m services.recorder``) as a real subprocess, and read what it wrote."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import requests

from tests.utils.processes import REPO_ROOT, free_port


class RecorderProcess:
    """The recorder service against ``nats_url``, writing under ``dataset``; start, kill and stop it.

    Args:
        nats_url: The NATS server.
        dataset: The dataset folder.
        log_dir: Where each run's output goes.
        settings: Extra ``MUSICRL_*`` settings, by variable name.
    """

    def __init__(self, nats_url: str, dataset: Path, log_dir: Path, **settings: str) -> None:
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "MUSICRL_NATS_URL": nats_url,
            "MUSICRL_DATASET_URL": str(dataset),
            "MUSICRL_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
        self.log_dir = log_dir
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"recorder-{self.runs}.log"

    def start(self) -> "RecorderProcess":
        self.runs += 1
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.recorder"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; returns the exit code (kills it and fails the wait if it hangs)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self) -> str | None:
        """The Prometheus text, or None while the endpoint is not up."""
        try:
            return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except requests.ConnectionError:
            return None

    def logs(self) -> str:
        return "\n".join(
            (self.log_dir / f"recorder-{i}.log").read_text(errors="replace") for i in range(1, self.runs + 1)
        )

    def close(self) -> None:
        if self.running():
            self.kill()


def recorded_event_ids(dataset: Path) -> list[str]:
    """Every event_id in every Parquet file under ``dataset`` (duplicates included), read with pyarrow."""
    ids: list[str] = []
    for path in sorted(dataset.glob("*/date=*/part-*.parquet")):
        ids += pq.read_table(path, columns=["event_id"])["event_id"].to_pylist()
    return ids


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` in Prometheus text, or None if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
