"""The recorder as a real process against a real nats-server: Parquet out, dead letters, crashes, restarts."""

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import nats.js.errors
import prometheus_client
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem
from google.protobuf.message import Message
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from musicrl.bus.connection import connect, ensure_streams
from musicrl.bus.local_server import LocalNatsServer
from musicrl.bus.publisher import EventPublisher
from musicrl.bus.subjects import EVENT_TYPES, kind_of
from musicrl.config import BusConfig
from musicrl.recorder.config import RecorderConfig
from musicrl.recorder.recorder import record
from musicrl.v1 import events_pb2
from tests.utils import events
from tests.utils.recorder import RecorderProcess, metric_value, recorded_event_ids


pytestmark = pytest.mark.slow

FAST = {
    "MUSICRL_BATCH_MAX_WAIT_S": "0.2",  # batches close quickly, so tests wait fractions of a second
    "MUSICRL_ACK_WAIT_S": "2",  # a killed recorder's batch comes back after 2 s
}
DEFAULT_ACK_WAIT_S = next(f.default for f in dataclasses.fields(RecorderConfig) if f.name == "ack_wait_s")
OLD_ACK_WAIT_S = 60.0  # what recorders used to set, and what the consumers they created still hold
REDELIVERY_BOUND_S = 20.0  # generous, yet far below what the old ack wait allowed


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
    lambda i: events.pipeline_failed(f"run-{i}"),
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
        published = _mixed_events(70)  # ten of each kind
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
    assert len(recorded_event_ids(dataset)) == 70  # nothing of the bad messages, no duplicate without a crash
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


def test_a_batch_held_by_a_killed_recorder_is_written_within_seconds(nats_server, tmp_path):
    dataset = tmp_path / "dataset"
    # The default ack wait; batches collect for 3 s, so a kill is likely to land while one is in hand.
    recorder = RecorderProcess(nats_server.url, dataset, tmp_path, MUSICRL_BATCH_MAX_WAIT_S="3")

    async def scenario() -> tuple[set[str], float]:
        nc, js, publisher = await _publisher(nats_server.url)
        await js.add_consumer("MUSICRL", config=_consumer_left_by_an_older_recorder())
        recorder.start()
        await _wait_until(lambda: "consuming musicrl.v1.>" in recorder.logs(), "the consumer set up", recorder)
        assert (await js.consumer_info("MUSICRL", "recorder")).config.ack_wait == DEFAULT_ACK_WAIT_S  # updated
        published: set[str] = set()
        for _ in range(5):  # a batch written just before the kill is not the case under test: try again
            batch = _mixed_events(30)
            for event in batch:
                await publisher.publish(event)
            published |= {e.header.event_id for e in batch}
            await _wait_for_ack_pending(js, len(batch), recorder)  # the recorder holds the batch, unacknowledged
            recorder.kill()
            killed_at = time.monotonic()
            await asyncio.sleep(0.2)  # acks already on the wire would arrive by now
            if (await js.consumer_info("MUSICRL", "recorder")).num_ack_pending >= len(batch):
                break
            recorder.start()
        else:
            raise AssertionError(f"never killed the recorder while it held a batch; log:\n{recorder.logs()}")
        recorder.start()
        await _wait_until(
            lambda: set(recorded_event_ids(dataset)) == published,
            "the killed recorder's batch written by its successor",
            recorder,
            timeout_s=REDELIVERY_BOUND_S,
        )
        await nc.close()
        return published, time.monotonic() - killed_at

    try:
        published, caught_up_s = asyncio.run(scenario())
        assert caught_up_s < REDELIVERY_BOUND_S < OLD_ACK_WAIT_S
        assert set(recorded_event_ids(dataset)) == published  # nothing lost
        assert recorder.terminate() == 0
    finally:
        recorder.close()


class SlowStore(AbstractFileSystem):
    """A local folder behind ``slowstore://`` whose every file write first waits ``delay_s``: a slow object store.

    It is not a ``LocalFileSystem``, so the recorder writes through ``pipe_file``, as it does to S3.
    """

    protocol = "slowstore"
    delay_s = 0.0

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        time.sleep(self.delay_s)
        LocalFileSystem(auto_mkdir=True).pipe_file(path, value, mode=mode, **kwargs)


def test_a_write_slower_than_the_ack_wait_is_not_redelivered_to_another_replica(nats_server, tmp_path):
    bus = BusConfig(nats_url=nats_server.url)
    slow_replica = RecorderConfig(
        dataset_url=f"slowstore://{tmp_path / 'slow'}", bus=bus, batch_max_wait_s=0.2, ack_wait_s=2.0, metrics_port=0
    )
    other_replica = dataclasses.replace(slow_replica, dataset_url=str(tmp_path / "other"))
    fsspec.register_implementation("slowstore", SlowStore, clobber=True)
    SlowStore.delay_s = 3 * slow_replica.ack_wait_s  # the batch's one file takes three ack waits to write
    ratings = [events.rating(f"clip-{i}", 1 + i % 5) for i in range(20)]  # one kind, one day: one file
    renewals_before = prometheus_client.REGISTRY.get_sample_value("musicrl_recorder_batch_renewals_total") or 0

    async def scenario():
        nc, js, publisher = await _publisher(nats_server.url)
        for event in ratings:
            await publisher.publish(event)
        stop = asyncio.Event()
        slow = asyncio.create_task(record(slow_replica, stop))
        await _wait_for_ack_pending(js, len(ratings))  # the slow replica holds every event
        other = asyncio.create_task(record(other_replica, stop))  # waits for work: a re-delivery would reach it
        deadline = time.monotonic() + SlowStore.delay_s + 10
        while len(recorded_event_ids(tmp_path / "slow")) < len(ratings):
            assert time.monotonic() < deadline, "the slow write never finished"
            await asyncio.sleep(0.1)
        await asyncio.sleep(slow_replica.ack_wait_s + 1)  # room for any late re-delivery to show
        info = await js.consumer_info("MUSICRL", "recorder")
        stop.set()
        await asyncio.gather(slow, other)
        await nc.close()
        return info

    info = asyncio.run(scenario())
    counts = collections.Counter(recorded_event_ids(tmp_path / "slow"))
    assert set(counts) == {e.header.event_id for e in ratings} and set(counts.values()) == {1}
    assert recorded_event_ids(tmp_path / "other") == []  # the other replica never got a message being written
    assert info.delivered.consumer_seq == len(ratings)  # each event delivered once: no re-delivery at all
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
    renewals = prometheus_client.REGISTRY.get_sample_value("musicrl_recorder_batch_renewals_total") or 0
    assert renewals - renewals_before >= 3  # the write outlasted three ack waits on in-progress acks alone


def _consumer_left_by_an_older_recorder() -> ConsumerConfig:
    return ConsumerConfig(
        name="recorder",
        durable_name="recorder",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=OLD_ACK_WAIT_S,
        max_ack_pending=2000,
        filter_subject="musicrl.v1.>",
    )


async def _wait_for_ack_pending(js, count: int, recorder: RecorderProcess | None = None, timeout_s: float = 20):
    """Wait until the consumer has at least ``count`` messages delivered and not yet acknowledged."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if (await js.consumer_info("MUSICRL", "recorder")).num_ack_pending >= count:
                return
        except nats.js.errors.NotFoundError:  # the recorder has not created its consumer yet
            pass
        logs = recorder.logs() if recorder else ""
        assert time.monotonic() < deadline, f"{count} messages never pending acknowledgement; log:\n{logs}"
        await asyncio.sleep(0.02)


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
