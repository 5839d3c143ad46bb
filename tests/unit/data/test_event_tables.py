"""Tests of the flat Arrow tables derived from the event descriptors."""

import datetime

import pyarrow as pa
import pytest
from google.protobuf import timestamp_pb2

from musicrl.bus.events import SCHEMA_VERSION
from musicrl.bus.subjects import EVENT_TYPES, kind_of
from musicrl.data.event_tables import RecordedEvent, arrow_schema, enum_label, event_row, to_table
from musicrl.v1 import events_pb2
from tests.utils import events


RECORDED_AT = datetime.datetime(2026, 3, 2, 8, 30, 15, 250_000, tzinfo=datetime.UTC)
HEADER_COLUMNS = ["event_id", "occurred_at", "schema_version", "request_id"]
RECORDER_COLUMNS = ["recorded_at", "stream_sequence"]


def _all_kinds() -> list:
    return [
        events.generation("clip-1", "lofi piano"),
        events.comparison("cmp-1", "lofi piano", "clip-1", "clip-2"),
        events.playback("cmp-1", "clip-1", 8_000, completed=True),
        events.preference("cmp-1", events_pb2.CHOICE_TIE),
        events.rating("clip-1", 4),
        events.rollout(10.0),
        events.pipeline_failed(),
    ]


@pytest.mark.parametrize("message_type", EVENT_TYPES, ids=kind_of)
def test_every_event_type_has_a_flat_schema(message_type):
    schema = arrow_schema(message_type)
    assert schema.names[:4] == HEADER_COLUMNS
    assert schema.names[-2:] == RECORDER_COLUMNS
    assert schema.field("event_id").type == pa.string()
    assert schema.field("schema_version").type == pa.int32()
    assert schema.field("stream_sequence").type == pa.int64()
    assert "header" not in schema.names and not any(n.startswith("header_") for n in schema.names)
    assert all(not pa.types.is_struct(f.type) for f in schema)  # flat: no nested columns
    assert schema.metadata[b"musicrl.kind"] == kind_of(message_type).encode()


def test_every_proto_field_has_a_column():
    kinds = {type(e) for e in _all_kinds()}
    assert kinds == set(EVENT_TYPES), "a new event kind needs a factory in tests/utils/events.py"
    for message_type in EVENT_TYPES:
        own_fields = [f.name for f in message_type.DESCRIPTOR.fields if f.name != "header"]
        names = arrow_schema(message_type).names
        for name in own_fields:
            assert any(n == name or n.startswith(name + "_") for n in names), (message_type, name)


def test_nested_messages_are_flattened_with_underscores():
    served = arrow_schema(events_pb2.ComparisonServed).names
    assert served[4:-2] == [
        "comparison_id",
        "prompt",
        "clip_a_clip_id",
        "clip_a_policy_model_uri",
        "clip_a_policy_version",
        "clip_a_audio_uri",
        "clip_a_duration_s",
        "clip_b_clip_id",
        "clip_b_policy_model_uri",
        "clip_b_policy_version",
        "clip_b_audio_uri",
        "clip_b_duration_s",
        "display_order",
        "user_id",
        "page_session",
        "canary_slot",
    ]
    generated = arrow_schema(events_pb2.GenerationCompleted)
    assert generated.field("policy_model_uri").type == pa.string()
    assert generated.field("sampling_duration_s").type == pa.float32()
    assert generated.field("sampling_top_k").type == pa.uint32()
    assert generated.field("seed").type == pa.uint64()
    assert arrow_schema(events_pb2.Playback).field("completed").type == pa.bool_()


def test_enums_are_short_lower_case_strings():
    assert enum_label(events_pb2.Choice.DESCRIPTOR, events_pb2.CHOICE_A) == "a"
    assert enum_label(events_pb2.Choice.DESCRIPTOR, events_pb2.CHOICE_NONE) == "none"
    assert enum_label(events_pb2.Choice.DESCRIPTOR, events_pb2.CHOICE_UNSPECIFIED) == "unspecified"
    assert enum_label(events_pb2.DisplayOrder.DESCRIPTOR, events_pb2.DISPLAY_ORDER_B_FIRST) == "b_first"
    assert enum_label(events_pb2.RolloutAction.DESCRIPTOR, events_pb2.ROLLOUT_ACTION_ROLLED_BACK) == "rolled_back"
    assert enum_label(events_pb2.CanarySlot.DESCRIPTOR, events_pb2.CANARY_SLOT_A) == "a"
    assert enum_label(events_pb2.Choice.DESCRIPTOR, 42) == "unknown_42"  # a value from a newer schema
    assert arrow_schema(events_pb2.PreferenceSubmitted).field("choice").type == pa.string()


def test_timestamps_are_utc_microseconds():
    for message_type in EVENT_TYPES:
        schema = arrow_schema(message_type)
        for name in ("occurred_at", "recorded_at"):
            assert schema.field(name).type == pa.timestamp("us", tz="UTC")


def test_round_trip_keeps_every_value():
    event = events.comparison("cmp-7", "dark ambient drone", "clip-a", "clip-b", user="u-9", minutes=90)
    table = to_table([RecordedEvent(event, RECORDED_AT, 41)])
    (row,) = table.to_pylist()
    assert row["event_id"] == event.header.event_id
    assert row["occurred_at"] == events.at(90)
    assert row["occurred_at"].utcoffset() == datetime.timedelta(0)
    assert row["schema_version"] == SCHEMA_VERSION
    assert row["comparison_id"] == "cmp-7"
    assert row["prompt"] == "dark ambient drone"
    assert (row["clip_a_clip_id"], row["clip_b_clip_id"]) == ("clip-a", "clip-b")
    assert (row["clip_a_policy_version"], row["clip_b_policy_model_uri"]) == ("v1", "s3://p/v2")
    assert row["display_order"] == "b_first"
    assert row["user_id"] == "u-9"
    assert row["recorded_at"] == RECORDED_AT
    assert row["stream_sequence"] == 41


def test_large_unsigned_and_float_values_survive():
    event = events.generation("clip-1", "x", seed=2**63 + 5)
    (row,) = to_table([RecordedEvent(event, RECORDED_AT, 1)]).to_pylist()
    assert row["seed"] == 2**63 + 5
    assert row["sampling_duration_s"] == pytest.approx(10.0)
    assert row["policy_version"] == "v1"


def test_an_unset_nested_message_gives_nulls():
    event = events_pb2.ComparisonServed(header=events.preference("c", 1).header, comparison_id="c")
    row = event_row(event, recorded_at=RECORDED_AT, stream_sequence=1)
    assert row["clip_a_clip_id"] is None and row["clip_a_policy_version"] is None
    assert row["prompt"] == ""  # a proto3 scalar cannot be told apart from its default


def test_a_timestamp_out_of_range_is_refused():
    header = events_pb2.EventHeader(
        event_id="3f1c2a4e-0000-4000-8000-000000000001", occurred_at=timestamp_pb2.Timestamp(seconds=10**12)
    )
    with pytest.raises(ValueError, match="Timestamp is not valid"):
        event_row(events_pb2.Playback(header=header), recorded_at=RECORDED_AT, stream_sequence=1)


def test_to_table_refuses_mixed_kinds_and_needs_a_type_when_empty():
    with pytest.raises(ValueError, match="exactly one message type"):
        to_table([RecordedEvent(e, RECORDED_AT, i) for i, e in enumerate(_all_kinds()[:2])])
    with pytest.raises(ValueError, match="exactly one message type"):
        to_table([])
    empty = to_table([], events_pb2.Playback)
    assert empty.num_rows == 0 and empty.schema == arrow_schema(events_pb2.Playback)
