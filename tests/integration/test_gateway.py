"""The gateway as a real process, with a real nats-server and a tiny generator behind it."""

import asyncio
import concurrent.futures
import contextlib
import io
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import soundfile

from musicrl.bus.connection import connect
from musicrl.bus.events import decode_event
from musicrl.config import BusConfig
from musicrl.v1 import events_pb2
from tests.utils.platform import TINY, running_platform


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with running_platform(tmp_path_factory.mktemp("platform")) as running:
        yield running


def _events(platform, subject: str) -> list:
    """Every event stored on ``subject``, decoded (read straight from the stream)."""

    async def read() -> list:
        client, js = await connect(BusConfig(nats_url=platform.nats.url), "test-reader")
        try:
            info = await js.stream_info("MUSICRL", subjects_filter=subject)
            count = (info.state.subjects or {}).get(subject, 0)
            if not count:
                return []
            sub = await js.pull_subscribe(subject, stream="MUSICRL")
            messages = await sub.fetch(count, timeout=5)
            await sub.unsubscribe()
            return [decode_event(m.subject, m.data) for m in messages]
        finally:
            await client.close()

    return asyncio.run(read())


def _comparison(platform, listener_id: str | None = None, **headers) -> dict:
    body = {"prompt": "a calm piano piece"} | ({"listener_id": listener_id} if listener_id else {})
    reply = requests.post(f"{platform.url}/v1/comparisons", json=body, headers=platform.headers(**headers))
    assert reply.status_code == 201, reply.text
    return reply.json()


def test_generation_job_from_202_to_downloadable_clips(platform):
    headers = platform.headers()
    body = {"prompt": "lofi hip hop beat", "duration_s": 0.5, "num_clips": 2}
    accepted = requests.post(f"{platform.url}/v1/generations", json=body, headers=headers)
    assert accepted.status_code == 202
    job = accepted.json()
    assert job["status"] in ("queued", "running", "done")
    assert accepted.headers["Location"] == f"/v1/generations/{job['id']}"
    done = requests.get(f"{platform.url}/v1/generations/{job['id']}", params={"wait": "true"}, headers=headers).json()
    assert done["status"] == "done", done
    assert len(done["clips"]) == 2
    for clip in done["clips"]:
        audio, rate = soundfile.read(
            io.BytesIO(requests.get(platform.url + clip["audio_url"], headers=headers).content)
        )
        assert rate == 32_000 and audio.shape == (16_000,)
        codes = np.load(io.BytesIO(requests.get(platform.url + clip["codes_url"], headers=headers).content))
        assert codes.shape == (4, 25) and codes.dtype == np.int64
    completed = {e.clip_id: e for e in _events(platform, "musicrl.v1.generation_completed")}
    for clip in done["clips"]:
        event = completed[clip["id"]]
        assert event.prompt == "lofi hip hop beat" and event.policy.version == "v1"
        assert event.sampling.duration_s == pytest.approx(0.5) and event.sampling.top_k == 250


def test_a_seeded_job_replays_its_clips_and_its_clips_take_the_next_seeds(platform):
    headers = platform.headers()

    def clips(body: dict) -> list[tuple[bytes, bytes]]:
        """(WAV, codes .npy) of each clip of a job."""
        job = requests.post(f"{platform.url}/v1/generations", json=body, headers=headers).json()
        done = requests.get(f"{platform.url}/v1/generations/{job['id']}", params={"wait": "true"}, headers=headers)
        fetch = lambda url: requests.get(platform.url + url, headers=headers).content  # noqa: E731
        return [(fetch(c["audio_url"]), fetch(c["codes_url"])) for c in done.json()["clips"]]

    body = {"prompt": "a slow organ chorale", "duration_s": 0.4, "num_clips": 2, "seed": 41}
    first, again = clips(body), clips(body)
    assert first == again and first[0][1] != first[1][1]  # the same audio under new clip ids; two seeds, two clips
    # alone in its batch, seed 42 samples the same tokens (the decoder's float sums may differ in the last bit)
    assert clips({**body, "seed": 42, "num_clips": 1})[0][1] == first[1][1]
    assert clips({**body, "seed": None})[0][1] != first[0][1]
    refused = requests.post(f"{platform.url}/v1/generations", json={**body, "seed": -1}, headers=headers)
    assert refused.status_code == 422 and refused.json()["detail"]


def test_a_comparison_serves_two_different_clips_and_records_it(platform):
    comparison = _comparison(platform)
    assert sorted(c["slot"] for c in comparison["clips"]) == ["a", "b"]
    wavs = [
        requests.get(platform.url + c["audio_url"], headers=platform.headers()).content for c in comparison["clips"]
    ]
    assert wavs[0] != wavs[1]  # stable vs stable, different seeds
    (served,) = [e for e in _events(platform, "musicrl.v1.comparison_served") if e.comparison_id == comparison["id"]]
    by_slot = {c["slot"]: c["id"] for c in comparison["clips"]}
    assert served.clip_a.clip_id == by_slot["a"] and served.clip_b.clip_id == by_slot["b"]
    first_slot = comparison["clips"][0]["slot"]
    assert served.display_order == (1 if first_slot == "a" else 2)  # DISPLAY_ORDER_A_FIRST / _B_FIRST


def test_feedback_is_published_with_a_pseudonymous_user(platform):
    comparison = _comparison(platform, listener_id="listener-7")
    clip = comparison["clips"][0]["id"]
    url = f"{platform.url}/v1/comparisons/{comparison['id']}"
    body = {"clip_id": clip, "listened_ms": 900, "completed": True, "listener_id": "listener-7"}
    playback = requests.post(f"{url}/playback", json=body, headers=platform.headers())
    preference = requests.post(
        f"{url}/preference", json={"choice": "b", "listener_id": "listener-7"}, headers=platform.headers()
    )
    rating = requests.post(
        f"{platform.url}/v1/ratings", json={"clip_id": clip, "score": 4}, headers=platform.headers()
    )
    assert [r.status_code for r in (playback, preference, rating)] == [201, 201, 201]
    (stored,) = [
        e for e in _events(platform, "musicrl.v1.preference_submitted") if e.comparison_id == comparison["id"]
    ]
    assert stored.header.event_id == preference.json()["event_id"]
    assert stored.choice == 2  # CHOICE_B
    assert len(stored.user_id) == 32 and "listener-7" not in stored.user_id
    assert not stored.page_session  # an API-key client vouches for this listener
    assert stored.header.request_id == preference.headers["X-Request-ID"]  # the same id in logs and events
    (played,) = [e for e in _events(platform, "musicrl.v1.playback") if e.comparison_id == comparison["id"]]
    assert played.user_id == stored.user_id and played.listened_ms == 900 and played.completed


def test_a_retried_request_with_its_idempotency_key_yields_one_event(platform):
    comparison = _comparison(platform)
    url = f"{platform.url}/v1/comparisons/{comparison['id']}/preference"
    headers = platform.headers(**{"Idempotency-Key": "retry-me"})
    replies = [requests.post(url, json={"choice": "a"}, headers=headers) for _ in range(3)]
    assert {r.status_code for r in replies} == {201}
    assert len({r.json()["event_id"] for r in replies}) == 1
    assert [r.headers.get("Idempotent-Replayed") for r in replies] == [None, "true", "true"]
    stored = [e for e in _events(platform, "musicrl.v1.preference_submitted") if e.comparison_id == comparison["id"]]
    assert len(stored) == 1
    changed = requests.post(url, json={"choice": "b"}, headers=headers)
    # final, not "in progress": a client that retries on 409 must not loop on it
    assert changed.status_code == 422 and "different request" in changed.json()["detail"]
    assert "Retry-After" not in changed.headers


def test_a_retried_comparison_returns_the_same_clips(platform):
    headers = platform.headers(**{"Idempotency-Key": "compare-once"})
    first = requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "techno"}, headers=headers)
    second = requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "techno"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    served = [e for e in _events(platform, "musicrl.v1.comparison_served") if e.comparison_id == first.json()["id"]]
    assert len(served) == 1


@pytest.mark.parametrize(
    "headers, status, message",
    [
        ({}, 401, "missing credentials"),
        ({"Authorization": "Bearer mrl_not-a-key"}, 401, "unknown API key"),
        ({"Authorization": "Basic abc"}, 401, "malformed Authorization header"),
    ],
)
def test_unauthenticated_requests_are_refused(platform, headers, status, message):
    reply = requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers=headers)
    assert reply.status_code == status
    assert message in reply.json()["detail"]
    assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_a_key_without_the_scope_is_forbidden(platform):
    reply = requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers=platform.headers("feedback"))
    assert reply.status_code == 403
    assert "lacks the 'compare' scope" in reply.json()["detail"]
    admin = requests.get(f"{platform.url}/v1/admin/routing", headers=platform.headers("feedback"))
    assert admin.status_code == 403


def test_a_key_over_its_rate_is_told_when_to_come_back(platform):
    url = f"{platform.url}/v1/generations/00000000-0000-4000-8000-000000000000"
    first = requests.get(url, headers=platform.headers("slow"))
    second = requests.get(url, headers=platform.headers("slow"))
    assert first.status_code == 404
    assert second.status_code == 429
    assert "rate limit of 6 requests per minute" in second.json()["detail"]
    assert int(second.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/comparisons", {"prompt": "   "}, 422, "must contain more than white space"),
        ("/v1/comparisons", {"prompt": "x" * 1001}, 422, "at most 1000 characters"),
        ("/v1/comparisons", {"prompt": "x" * 5000}, 422, "at most 1000 characters"),  # same mistake, same reply
        ("/v1/generations", {"prompt": "x", "duration_s": 3}, 422, "less than or equal to 2.0"),
        ("/v1/generations", {"prompt": "x", "duration_s": -1}, 422, "greater than 0"),
        ("/v1/generations", {"prompt": "x", "loudness": 3}, 422, "Extra inputs are not permitted"),
        ("/v1/ratings", {"clip_id": "0" * 32, "score": 3}, 404, "no clip"),
        ("/v1/ratings", {"clip_id": "../../etc/passwd", "score": 3}, 422, "should match pattern"),
        ("/v1/ratings", {"clip_id": "0" * 32, "score": 6}, 422, "less than or equal to 5"),
        ("/v1/comparisons/00000000-0000-4000-8000-000000000000/preference", {"choice": "a"}, 404, "no comparison"),
        (
            "/v1/comparisons/00000000-0000-4000-8000-000000000000/preference",
            {"choice": "c"},
            422,
            "'a', 'b', 'tie' or 'none'",
        ),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(platform, path, body, status, message):
    reply = requests.post(platform.url + path, json=body, headers=platform.headers())
    assert reply.status_code == status, reply.text
    assert message in str(reply.json()["detail"])


def test_a_clip_of_another_comparison_is_refused(platform):
    first, second = _comparison(platform), _comparison(platform)
    body = {"clip_id": second["clips"][0]["id"], "listened_ms": 10}
    reply = requests.post(
        f"{platform.url}/v1/comparisons/{first['id']}/playback", json=body, headers=platform.headers()
    )
    assert reply.status_code == 400
    assert "is not part of comparison" in reply.json()["detail"]


def test_the_page_opens_a_session_that_needs_the_page_header(platform):
    session = requests.Session()
    page = session.get(platform.url + "/")
    assert page.status_code == 200 and "Which clip do you prefer?" in page.text
    assert "musicrl_session" in session.cookies
    cross_site = session.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"})
    assert cross_site.status_code == 403 and "X-Requested-With" in cross_site.json()["detail"]
    same_site = session.post(
        f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers={"X-Requested-With": "musicrl-page"}
    )
    assert same_site.status_code == 201
    audio = session.get(platform.url + same_site.json()["clips"][0]["audio_url"])  # as an <audio> element would
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    forged = requests.Session()
    session_id, issued_at, _ = session.cookies["musicrl_session"].split(".")
    forged.cookies.set("musicrl_session", f"{session_id}.{int(issued_at) + 10**6}.not-the-signature")
    refused = forged.get(f"{platform.url}/v1/clips/{'0' * 32}.wav")
    assert refused.status_code == 401 and "signature is invalid" in refused.json()["detail"]


def test_health_readiness_and_metrics(platform):
    assert requests.get(f"{platform.url}/healthz").json() == {"status": "ok", "checks": {}}
    ready = requests.get(f"{platform.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"nats": True}
    metrics = requests.get(f"{platform.url}/metrics").text
    assert 'musicrl_gateway_requests_total{route="/readyz",status="200"}' in metrics
    assert "musicrl_events_published_total" in metrics


CANARY_VERSION = "v2-canary"
CANARY_URI = "tiny://musicgen?seed=0&canary=1"
CANARY_COMPARISONS = 30  # both slots at least 4 times fails a fair draw with probability 8e-6


@contextlib.contextmanager
def _canary(platform) -> Iterator[dict]:
    """Route every comparison to a canary (the same generator under another version); restore afterwards."""
    url, headers = f"{platform.url}/v1/admin/routing", platform.headers()
    table = requests.get(url, headers=headers).json()
    assert table["canary"] is None and table["stable"]["version"] == "v1"
    canary = {**table["stable"], "version": CANARY_VERSION, "model_uri": CANARY_URI}
    updated = requests.put(url, json={**table, "canary": canary, "canary_share": 1.0}, headers=headers)
    assert updated.status_code == 200
    try:
        yield table
    finally:
        requests.put(url, json=table, headers=headers)


def _policy_versions(platform, comparisons: list[dict]) -> list[dict[str, str]]:
    """Slot → the version of the policy that made its clip, from the clips' GenerationCompleted events."""
    completed = {e.clip_id: e for e in _events(platform, "musicrl.v1.generation_completed")}
    return [{c["slot"]: completed[c["id"]].policy.version for c in comparison["clips"]} for comparison in comparisons]


def test_the_canary_is_served_in_either_slot_and_the_event_records_which(platform):
    with _canary(platform):
        comparisons = [_comparison(platform) for _ in range(CANARY_COMPARISONS)]
        headers = platform.headers(**{"Idempotency-Key": "canary-retry"})
        retried = [requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers=headers)]
        retried.append(requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers=headers))
    served = _events(platform, "musicrl.v1.comparison_served")
    by_id = {e.comparison_id: e for e in served}
    in_a = 0
    for comparison, versions in zip(comparisons, _policy_versions(platform, comparisons), strict=True):
        assert sorted(versions.values()) == sorted(["v1", CANARY_VERSION]), versions
        event = by_id[comparison["id"]]
        assert (event.clip_a.policy.version, event.clip_b.policy.version) == (versions["a"], versions["b"])
        assert event.clip_a.policy.model_uri == (CANARY_URI if versions["a"] == CANARY_VERSION else TINY)
        canary_in_a = versions["a"] == CANARY_VERSION
        assert event.canary_slot == (events_pb2.CANARY_SLOT_A if canary_in_a else events_pb2.CANARY_SLOT_B)
        in_a += canary_in_a
    assert 4 <= in_a <= CANARY_COMPARISONS - 4, f"the canary filled slot A in {in_a} of {CANARY_COMPARISONS}"
    first, second = retried
    assert first.status_code == second.status_code == 201 and first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len([e for e in served if e.comparison_id == first.json()["id"]]) == 1  # one draw, one event
    rollouts = _events(platform, "musicrl.v1.policy_rollout")
    assert any(r.canary_percent == 100.0 and "admin API" in r.reason for r in rollouts)
    url, headers = f"{platform.url}/v1/admin/routing", platform.headers()
    table = requests.get(url, headers=headers).json()
    bad = requests.put(url, json={**table, "canary_share": 0.5}, headers=headers)
    assert bad.status_code == 400 and "needs a canary endpoint" in bad.json()["detail"]


def _shape(value) -> object:
    """A JSON value's structure: keys and value types, not values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def _riff_chunks(wav: bytes) -> list[tuple[bytes, bytes]]:
    """The (id, content) of every chunk of a RIFF/WAVE file except the samples'."""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    chunks, at = [], 12
    while at < len(wav):
        chunk_id, size = wav[at : at + 4], int.from_bytes(wav[at + 4 : at + 8], "little")
        chunks.append((chunk_id, b"" if chunk_id == b"data" else wav[at + 8 : at + 8 + size]))
        at += 8 + size + size % 2
    return chunks


def test_no_reply_tells_the_canary_clip_from_the_stable_one(platform):
    with _canary(platform) as table:
        replies = [
            requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers=platform.headers())
            for _ in range(12)
        ]
    assert all(r.status_code == 201 for r in replies)
    versions = _policy_versions(platform, [r.json() for r in replies])
    assert {v["a"] for v in versions} == {"v1", CANARY_VERSION}  # 12 fair draws all alike: probability 2^-11
    # names that identify a policy: its URI, version, endpoint and model name ("v1" is also the API's path prefix)
    secrets = {CANARY_URI, CANARY_VERSION, TINY, table["stable"]["url"], table["stable"]["model_name"]}
    for reply in replies:
        assert _shape(reply.json()) == _shape(replies[0].json())
        assert set(reply.headers) == set(replies[0].headers)
        for text in (reply.text, *reply.headers.values()):
            assert not any(secret in text for secret in secrets), text
        assert "v1" not in reply.headers.values() and '"v1"' not in reply.text
    wav_headers, chunks = [], []
    for reply in replies:
        for clip in reply.json()["clips"]:
            wav = requests.get(platform.url + clip["audio_url"], headers=platform.headers())
            assert wav.status_code == 200
            chunks.append(_riff_chunks(wav.content))
            wav_headers.append({k: v for k, v in wav.headers.items() if k.lower() not in ("date", "x-request-id")})
    assert all(c == chunks[0] for c in chunks) and [c[0] for c in chunks[0]] == [b"fmt ", b"data"]
    assert all(h == wav_headers[0] for h in wav_headers)


def test_a_bus_outage_is_a_503_and_nothing_is_half_accepted(platform):
    comparison = _comparison(platform)
    url = f"{platform.url}/v1/comparisons/{comparison['id']}/preference"
    platform.nats.stop()
    try:
        down = requests.post(url, json={"choice": "a"}, headers=platform.headers(**{"Idempotency-Key": "outage"}))
    finally:
        platform.nats.start()
    assert down.status_code == 503
    assert down.headers["Retry-After"] == "1"
    for _ in range(50):  # the gateway reconnects within a second or two
        retry = requests.post(url, json={"choice": "a"}, headers=platform.headers(**{"Idempotency-Key": "outage"}))
        if retry.status_code == 201:
            break
    assert retry.status_code == 201, retry.text
    stored = [e for e in _events(platform, "musicrl.v1.preference_submitted") if e.comparison_id == comparison["id"]]
    assert [e.header.event_id for e in stored] == [retry.json()["event_id"]]


def test_a_preference_is_answered_only_after_jetstream_stored_it(platform):
    """nats-server is frozen (SIGSTOP) while a preference is in flight: no reply may come until it thaws."""
    comparison = _comparison(platform)
    url = f"{platform.url}/v1/comparisons/{comparison['id']}/preference"
    headers = platform.headers(**{"Idempotency-Key": "frozen-bus"})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        os.kill(platform.nats.process.pid, signal.SIGSTOP)
        try:
            pending = pool.submit(requests.post, url, json={"choice": "b"}, headers=headers, timeout=30)
            with pytest.raises(concurrent.futures.TimeoutError):
                pending.result(timeout=1.5)  # the gateway holds the request while the bus cannot acknowledge
        finally:
            thawed_at = time.monotonic()
            os.kill(platform.nats.process.pid, signal.SIGCONT)
        reply = pending.result(timeout=30)
        answered_at = time.monotonic()
    assert reply.status_code == 201, reply.text
    assert answered_at >= thawed_at
    stored = [e for e in _events(platform, "musicrl.v1.preference_submitted") if e.comparison_id == comparison["id"]]
    assert [e.header.event_id for e in stored] == [reply.json()["event_id"]]
