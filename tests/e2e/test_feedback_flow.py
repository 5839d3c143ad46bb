"""The paper's data collection end to end: generate, compare, play both, prefer → one row in a snapshot."""

import pytest
import requests

from tests.utils.platform import running_platform
from tests.utils.recorder import RecorderProcess
from tests.utils.snapshots import snapshot_preferences, wait_until_recorded


pytestmark = pytest.mark.slow


def test_rest_flow_ends_as_exactly_the_expected_snapshot_row(tmp_path):
    with running_platform(tmp_path / "platform") as platform:
        recorder = RecorderProcess(
            platform.nats.url, platform.dataset_dir, tmp_path, MUSICRL_BATCH_MAX_WAIT_S="0.5"
        ).start()
        try:
            accepted = _collect_feedback(platform)
            wait_until_recorded(platform.dataset_dir, set(accepted["events"]))
            assert recorder.terminate() == 0
        finally:
            recorder.close()
    rows = snapshot_preferences(platform.dataset_dir, tmp_path / "snapshots").to_pylist()
    # the second comparison was only half listened to: the paper keeps pairs whose clips were both heard
    assert len(rows) == 1
    (row,) = rows
    kept = accepted["kept"]
    assert row["comparison_id"] == kept["id"]
    assert row["preference_event_id"] == accepted["preference_event"]
    assert row["choice"] == "b" and row["label"] == 0.0
    assert row["prompt"] == "a dreamy synthwave track"
    assert {row["clip_a_id"], row["clip_b_id"]} == {c["id"] for c in kept["clips"]}
    by_slot = {c["slot"]: c["id"] for c in kept["clips"]}
    assert row["clip_a_id"] == by_slot["a"] and row["clip_b_id"] == by_slot["b"]
    assert row["a_listened_ms"] == 400 and row["b_listened_ms"] == 390
    assert row["clip_a_policy_version"] == row["clip_b_policy_version"] == "v1"
    assert row["clip_a_codes_uri"].endswith(f"{by_slot['a']}.codes.npy")


def _collect_feedback(platform) -> dict:
    headers = platform.headers()
    job = requests.post(
        f"{platform.url}/v1/generations", json={"prompt": "warm up", "duration_s": 0.3}, headers=headers
    ).json()
    done = requests.get(f"{platform.url}/v1/generations/{job['id']}", params={"wait": "true"}, headers=headers)
    assert done.json()["status"] == "done"
    events = []
    kept = _compare(platform, "a dreamy synthwave track")
    listened = {"a": 400, "b": 390}
    for clip in kept["clips"]:
        body = {"clip_id": clip["id"], "listened_ms": listened[clip["slot"]], "completed": True, "listener_id": "ann"}
        events.append(_post(platform, f"/v1/comparisons/{kept['id']}/playback", body))
    preference_event = _post(
        platform, f"/v1/comparisons/{kept['id']}/preference", {"choice": "b", "listener_id": "ann"}
    )
    events.append(preference_event)
    half = _compare(platform, "a noisy drum solo")
    events.append(
        _post(
            platform, f"/v1/comparisons/{half['id']}/playback", {"clip_id": half["clips"][0]["id"], "listened_ms": 400}
        )
    )
    events.append(_post(platform, f"/v1/comparisons/{half['id']}/preference", {"choice": "a"}))
    return {"events": events, "kept": kept, "preference_event": preference_event}


def _compare(platform, prompt: str) -> dict:
    reply = requests.post(f"{platform.url}/v1/comparisons", json={"prompt": prompt}, headers=platform.headers())
    assert reply.status_code == 201, reply.text
    return reply.json()


def _post(platform, path: str, body: dict) -> str:
    reply = requests.post(platform.url + path, json=body, headers=platform.headers())
    assert reply.status_code == 201, reply.text
    return reply.json()["event_id"]
