"""Run the recorder (``python -m services.recorder``) as a real subprocess, and read what it wrote."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import requests

from tests.utils.processes import RestartableService, free_port


class RecorderProcess(RestartableService):
    """The recorder service against ``nats_url``, writing under ``dataset``; start, kill and stop it.

    Args:
        nats_url: The NATS server.
        dataset: The dataset folder.
        log_dir: Where each run's output goes.
        settings: Extra ``MUSICRL_*`` settings, by variable name.
    """

    def __init__(self, nats_url: str, dataset: Path, log_dir: Path, **settings: str) -> None:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "MUSICRL_NATS_URL": nats_url,
            "MUSICRL_DATASET_URL": str(dataset),
            "MUSICRL_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
        super().__init__("services.recorder", "recorder", env, log_dir)

    def metrics(self) -> str | None:
        """The Prometheus text, or None while the endpoint is not up."""
        try:
            return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except requests.ConnectionError:
            return None

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
