"""The recorder as a real process against a real nats-server: Parquet out, dead letters, crashes, restarts."""

import asyncio
import collections
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message

from musicrl.bus.connection import connect, ensure_streams
from musicrl.bus.local_server import LocalNatsServer
from musicrl.bus.publisher import EventPublisher
from musicrl.bus.subjects import EVENT_TYPES, kind_of
from musicrl.config import BusConfig
from musicrl.v1 import events_pb2
from tests.utils import events
from tests.utils.recorder import RecorderProcess, metric_value, recorded_event_ids


pytestmark = pytest.mark.slow

FAST = {
    "MUSICRL_BATCH_MAX_WAIT_S": "0.2",  # batches close quickly, so tests wait fractions of a second
    "MUSICRL_ACK_WAIT_S": "2",  # a killed recorder's batch comes back after 2 s instead of 60
}


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalNatsServer]:
    with LocalNatsServer(tmp_path / "jetstream", log_path=tmp_path / "nats.log") as server:
        yield server


@pytest.fixture
def recorder(nats_server: LocalNatsServer, tmp_path: Path) -> Iterator[RecorderProcess]:
    process = RecorderProcess(nats_server.url, tmp_path / "dataset", tmp_path, **FAST)
    yield process
    process.close()


_MAKERS: list[Callable[[int], Message]] = [
    lambda i: events.generation(f"clip-{i}", f"prompt {i}"),
    lambda i: events.comparison(f"cmp-{i}", f"prompt {i}", f"clip-{i}", f"clip-{i + 1}"),
    lambda i: events.playback(f"cmp-{i}", f"clip-{i}", 1000 * i),
    lambda i: events.preference(f"cmp-{i}", events_pb2.CHOICE_A, minutes=i * 60),  # spans several days
    lambda i: events.rating(f"clip-{i}", 1 + i % 5),
    lambda i: events.rollout(float(i % 100)),
]


def _mixed_event(i: int) -> Message:
    """Event number ``i`` of a stream that cycles through every kind."""
    return _MAKERS[i % len(_MAKERS)](i)


def _mixed_events(n: int) -> list[Message]:
    return [_mixed_event(i) for i in range(n)]


async def _wait_until(predicate: Callable[[], bool], what: str, recorder: RecorderProcess, timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s; recorder log:\n{recorder.logs()}")
        await asyncio.sleep(0.1)


def _metric(recorder: RecorderProcess, name: str) -> float | None:
    text = recorder.metrics()
    return None if text is None else metric_value(text, name)


async def _publisher(url: str):
    bus = BusConfig(nats_url=url)
    nc, js = await connect(bus, name="test-publisher")
    await ensure_streams(js, bus)
    return nc, js, EventPublisher(js, bus)


def test_events_reach_parquet_and_bad_messages_the_dead_letter_stream(nats_server, recorder, tmp_path):
    dataset = tmp_path / "dataset"

    async def scenario() -> None:
        nc, js, publisher = await _publisher(nats_server.url)
        recorder.start()
        published = _mixed_events(60)
        for event in published:
            await publisher.publish(event)
        garbage = await js.publish("musicrl.v1.preference_submitted", b"\xff\xfe not a protobuf")
        unknown = await js.publish("musicrl.v1.unknown_kind", events.rating("clip", 3).SerializeToString())
        ids = {e.header.event_id for e in published}
        await _wait_until(lambda: set(recorded_event_ids(dataset)) == ids, "all events in Parquet", recorder)
        await _wait_until(lambda: _metric(recorder, "musicrl_recorder_dead_letters_total") == 2, "2 dead", recorder)
        metrics = recorder.metrics() or ""
        assert metric_value(metrics, "musicrl_recorder_consumer_pending") == 0
        assert 'musicrl_recorder_events_written_total{kind="playback"} 10.0' in metrics
        dead = [await js.get_msg("MUSICRL_DLQ", seq) for seq in (1, 2)]
        assert (await js.stream_info("MUSICRL_DLQ")).state.messages == 2
        by_subject = {m.subject: m for m in dead}
        assert by_subject["musicrl.dlq.v1.preference_submitted"].data == b"\xff\xfe not a protobuf"
        bad_bytes = by_subject["musicrl.dlq.v1.preference_submitted"].headers
        assert "not a valid preference_submitted protobuf" in bad_bytes["Musicrl-Dlq-Reason"]
        assert bad_bytes["Musicrl-Original-Sequence"] == str(garbage.seq)
        assert bad_bytes["Musicrl-Original-Subject"] == "musicrl.v1.preference_submitted"
        assert "not an event kind" in by_subject["musicrl.dlq.v1.unknown_kind"].headers["Musicrl-Dlq-Reason"]
        assert by_subject["musicrl.dlq.v1.unknown_kind"].headers["Nats-Msg-Id"] == f"dlq-{unknown.seq}"
        await nc.close()

    asyncio.run(scenario())
    assert len(recorded_event_ids(dataset)) == 60  # nothing of the bad messages, no duplicate without a crash
    assert {p.name for p in dataset.iterdir()} == {kind_of(t) for t in EVENT_TYPES}  # no folder for unknown_kind
    assert len(list((dataset / "preference_submitted").glob("date=*"))) > 1  # partitioned by occurred_at's day
    assert recorder.terminate() == 0


def test_a_killed_recorder_loses_nothing(nats_server, recorder, tmp_path):
    dataset = tmp_path / "dataset"
    published: list[str] = []
    stop_publishing = asyncio.Event()

    async def publish_steadily(publisher: EventPublisher) -> None:
        while not stop_publishing.is_set():
            event = _mixed_event(len(published))
            await publisher.publish(event)
            published.append(event.header.event_id)
            await asyncio.sleep(0.005)

    async def scenario() -> None:
        nc, _, publisher = await _publisher(nats_server.url)
        recorder.start()
        publishing = asyncio.create_task(publish_steadily(publisher))
        await _wait_until(lambda: len(recorded_event_ids(dataset)) >= 50, "a first batch written", recorder)
        recorder.kill()  # mid-stream: the publisher keeps going
        published_at_kill = len(published)
        await asyncio.sleep(0.3)
        recorder.start()
        await _wait_until(lambda: len(published) >= published_at_kill + 150, "more events published", recorder)
        stop_publishing.set()
        await publishing
        await _wait_until(lambda: set(recorded_event_ids(dataset)) == set(published), "every event", recorder)
        await nc.close()

    asyncio.run(scenario())
    counts = collections.Counter(recorded_event_ids(dataset))
    assert set(counts) == set(published)  # duplicates are allowed, losses are not
    assert recorder.terminate() == 0


def test_the_recorder_rides_out_a_server_restart(nats_server, recorder, tmp_path):
    dataset = tmp_path / "dataset"

    async def scenario() -> None:
        nc, _, publisher = await _publisher(nats_server.url)
        recorder.start()
        before = _mixed_events(20)
        for event in before:
            await publisher.publish(event)
        ids = {e.header.event_id for e in before}
        await _wait_until(lambda: set(recorded_event_ids(dataset)) == ids, "events before the restart", recorder)
        await asyncio.to_thread(nats_server.restart)
        after = _mixed_events(20)
        for event in after:
            await publisher.publish(event)  # retries until the server is back
        ids |= {e.header.event_id for e in after}
        await _wait_until(lambda: set(recorded_event_ids(dataset)) == ids, "events after the restart", recorder)
        await nc.close()

    asyncio.run(scenario())
    assert recorder.running()
    assert recorder.terminate() == 0
    assert "recorder stopped" in recorder.logs()


def test_a_failing_store_acknowledges_nothing_and_shows_the_lag(nats_server, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the dataset folder should be: every write fails")
    recorder = RecorderProcess(nats_server.url, blocker / "dataset", tmp_path, MUSICRL_BATCH_MAX_EVENTS="5", **FAST)

    async def scenario() -> None:
        nc, js, publisher = await _publisher(nats_server.url)
        for event in _mixed_events(30):
            await publisher.publish(event)
        recorder.start()
        # 2 batches of 5 fill max_ack_pending (10); the other 20 wait in the stream: the lag
        await _wait_until(lambda: _metric(recorder, "musicrl_recorder_consumer_pending") == 20, "lag 20", recorder)
        assert (_metric(recorder, "musicrl_recorder_write_failures_total") or 0) >= 2
        info = await js.consumer_info("MUSICRL", "recorder")
        assert info.ack_floor.stream_seq == 0  # not one event acknowledged
        await nc.close()

    try:
        asyncio.run(scenario())
        assert recorder.terminate() == 0
    finally:
        recorder.close()


def test_sigterm_while_the_server_is_down_still_exits_cleanly(nats_server, recorder):
    recorder.start()
    asyncio.run(_wait_until(lambda: "consuming musicrl.v1.>" in recorder.logs(), "the consumer set up", recorder))
    nats_server.kill()
    time.sleep(0.5)  # the recorder notices and starts reconnecting
    assert recorder.terminate() == 0, recorder.logs()
    assert "recorder stopped" in recorder.logs()
