"""No accepted event is lost: 5,000 preferences while the recorder is SIGKILLed twice and NATS restarts.

Clients behave as the API asks: each request carries an Idempotency-Key and is retried on a connection
error, a 503 or a 409 until it is accepted. Every accepted request must reach the snapshot, exactly once.
"""

import concurrent.futures
import threading
import time

import pytest
import requests

from musicrl.data.snapshot_config import SnapshotConfig
from tests.utils.platform import running_platform
from tests.utils.recorder import RecorderProcess
from tests.utils.snapshots import snapshot_preferences, wait_until_recorded


pytestmark = pytest.mark.slow

PREFERENCES = 5_000
COMPARISONS = 25  # each comparison gets PREFERENCES / COMPARISONS listeners
CLIENTS = 16
RETRIABLE = {409, 429, 503}


def test_no_accepted_preference_is_lost_through_crashes_and_a_bus_restart(tmp_path):
    with running_platform(tmp_path / "platform") as platform:
        recorder = RecorderProcess(
            platform.nats.url,
            platform.dataset_dir,
            tmp_path,
            MUSICRL_BATCH_MAX_WAIT_S="0.5",  # short batches; the default ack wait brings a killed one back in seconds
        ).start()
        try:
            comparisons = [_comparison(platform, i) for i in range(COMPARISONS)]
            progress = _Progress()
            chaos = threading.Thread(target=_chaos, args=(platform, recorder, progress), daemon=True)
            chaos.start()
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                accepted = dict(pool.map(lambda i: _prefer(platform, comparisons, i, progress), range(PREFERENCES)))
            chaos.join(timeout=60)
            assert progress.events == ["recorder killed", "nats restarted", "recorder killed"]
            wait_until_recorded(platform.dataset_dir, set(accepted.values()), timeout_s=180)
            assert recorder.terminate() == 0
        finally:
            recorder.close()
    rows = snapshot_preferences(
        platform.dataset_dir, tmp_path / "snapshots", SnapshotConfig(require_listened=False)
    ).to_pylist()
    assert len(accepted) == PREFERENCES
    assert len(rows) == PREFERENCES
    assert {r["preference_event_id"] for r in rows} == set(accepted.values())
    assert len({(r["comparison_id"], r["user_id"]) for r in rows}) == PREFERENCES


class _Progress:
    def __init__(self) -> None:
        self.accepted = 0
        self.events: list[str] = []
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.accepted += 1


def _chaos(platform, recorder: RecorderProcess, progress: _Progress) -> None:
    """Kill the recorder at 20 % and 80 %, restart nats-server at 50 % of the accepted preferences."""
    steps = [
        (0.2 * PREFERENCES, "recorder killed", lambda: (recorder.kill(), time.sleep(0.5), recorder.start())),
        (0.5 * PREFERENCES, "nats restarted", platform.nats.restart),
        (0.8 * PREFERENCES, "recorder killed", lambda: (recorder.kill(), time.sleep(0.5), recorder.start())),
    ]
    for threshold, name, action in steps:
        while progress.accepted < threshold:
            time.sleep(0.01)
        action()
        progress.events.append(name)


def _comparison(platform, index: int) -> dict:
    reply = requests.post(
        f"{platform.url}/v1/comparisons", json={"prompt": f"prompt number {index}"}, headers=platform.headers()
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


def _prefer(platform, comparisons: list[dict], index: int, progress: _Progress) -> tuple[int, str]:
    comparison = comparisons[index % COMPARISONS]
    body = {"choice": "ab"[index % 2], "listener_id": f"listener-{index // COMPARISONS}"}
    headers = platform.headers(**{"Idempotency-Key": f"preference-{index}"})
    url = f"{platform.url}/v1/comparisons/{comparison['id']}/preference"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            reply = requests.post(url, json=body, headers=headers, timeout=30)
        except requests.RequestException:
            time.sleep(0.2)
            continue
        if reply.status_code == 201:
            progress.add()
            return index, reply.json()["event_id"]
        assert reply.status_code in RETRIABLE, reply.text
        time.sleep(0.2)
    raise TimeoutError(f"preference {index} was never accepted")
