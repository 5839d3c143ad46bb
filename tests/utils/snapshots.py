"""Read what the feedback path stored: the recorder's Parquet and the snapshots built from it."""

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from musicrl.data.snapshot import create_snapshot
from musicrl.data.snapshot_config import SPLITS, SnapshotConfig
from tests.utils.recorder import recorded_event_ids


def wait_until_recorded(dataset: Path, event_ids: set[str], timeout_s: float = 120) -> None:
    """Block until every one of ``event_ids`` is in the dataset's Parquet files."""
    deadline = time.monotonic() + timeout_s
    missing = set(event_ids)
    while missing and time.monotonic() < deadline:
        missing -= set(recorded_event_ids(dataset))
        if missing:
            time.sleep(0.5)
    if missing:
        raise TimeoutError(f"{len(missing)} accepted events never reached Parquet, e.g. {sorted(missing)[:3]}")


def snapshot_preferences(dataset: Path, out: Path, config: SnapshotConfig | None = None) -> pa.Table:
    """Take a snapshot and return its preference rows, every split together."""
    result = create_snapshot(str(dataset), str(out), config or SnapshotConfig())
    folder = Path(result.uri)
    return pa.concat_tables([pq.read_table(folder / f"preferences_{split}.parquet") for split in SPLITS])
