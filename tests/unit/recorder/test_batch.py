"""Tests of how one fetched batch is sorted into Parquet files and dead letters (no server needed)."""

import datetime

import pyarrow.parquet as pq
from google.protobuf import timestamp_pb2
from nats.aio.msg import Msg

from musicrl.bus.subjects import subject_for
from musicrl.recorder.batch import sort_batch, write_batch
from musicrl.v1 import events_pb2
from tests.utils import events


NOW = datetime.datetime(2026, 3, 2, 8, 30, tzinfo=datetime.UTC)


def _msg(subject: str, data: bytes, sequence: int) -> Msg:
    # the reply subject JetStream sets on a delivered message: stream, consumer, delivered, stream seq, ...
    reply = f"$JS.ACK.MUSICRL.recorder.1.{sequence}.{sequence}.1772440200000000000.0"
    return Msg(_client=None, subject=subject, reply=reply, data=data)  # type: ignore[arg-type]


def _event_msg(event, sequence: int) -> Msg:
    return _msg(subject_for(event), event.SerializeToString(), sequence)


def test_valid_events_are_grouped_by_kind_and_day(tmp_path):
    late = events.preference("c2", events_pb2.CHOICE_B, minutes=24 * 60)  # the next UTC day
    msgs = [
        _event_msg(events.preference("c1", events_pb2.CHOICE_A), 1),
        _event_msg(events.playback("c1", "k", 5), 2),
        _event_msg(late, 3),
    ]
    batch = sort_batch(msgs, NOW)
    assert batch.dead == [] and batch.recorded == msgs
    written = write_batch(str(tmp_path), batch)
    # one file per kind and day: the two preferences fall on two days
    assert sorted((f.kind, f.rows) for f in written) == [
        ("playback", 1),
        ("preference_submitted", 1),
        ("preference_submitted", 1),
    ]
    late_files = list((tmp_path / "preference_submitted" / "date=2026-03-02").glob("part-*.parquet"))
    (row,) = pq.read_table(late_files[0]).to_pylist()
    assert (row["event_id"], row["stream_sequence"], row["recorded_at"]) == (late.header.event_id, 3, NOW)


def test_bad_messages_become_dead_letters_and_nothing_else():
    out_of_range = events_pb2.Playback(
        header=events_pb2.EventHeader(
            event_id="3f1c2a4e-0000-4000-8000-000000000001", occurred_at=timestamp_pb2.Timestamp(seconds=10**12)
        )
    )
    good = _event_msg(events.rating("clip", 3), 4)
    msgs = [
        _msg("musicrl.v1.preference_submitted", b"\xff\xfe not a protobuf", 1),
        _msg("musicrl.v1.unknown_kind", b"", 2),
        _event_msg(out_of_range, 3),
        good,
    ]
    batch = sort_batch(msgs, NOW)
    assert [d.msg for d in batch.dead] == msgs[:3]
    assert "not a valid preference_submitted protobuf" in batch.dead[0].reason
    assert "not an event kind" in batch.dead[1].reason
    assert "Timestamp is not valid" in batch.dead[2].reason
    assert batch.recorded == [good] and [len(rows) for rows in batch.parts.values()] == [1]
