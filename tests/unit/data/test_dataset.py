"""Tests of the dataset layout: durable writes, file names, reading old files after a field was added."""

import datetime
import re

import pyarrow.parquet as pq

from musicrl.data.dataset import parquet_bytes, part_url, read_kind, write_durably
from musicrl.data.event_tables import RecordedEvent, arrow_schema, to_table
from musicrl.v1 import events_pb2
from tests.utils import events


NOW = datetime.datetime(2026, 3, 2, 8, 30, tzinfo=datetime.UTC)


def _table(*messages):
    return to_table([RecordedEvent(m, NOW, i) for i, m in enumerate(messages)])


def test_part_url_follows_the_layout():
    url = part_url("s3://bucket/events/", "playback", datetime.date(2026, 3, 1), NOW)
    assert re.fullmatch(
        r"s3://bucket/events/playback/date=2026-03-01/part-20260302T083000000000Z-[0-9a-f-]{36}\.parquet", url
    )
    assert url != part_url("s3://bucket/events", "playback", datetime.date(2026, 3, 1), NOW)  # never overwrites


def test_local_write_leaves_one_whole_file_and_no_temp_file(tmp_path):
    url = part_url(str(tmp_path / "events"), "playback", datetime.date(2026, 3, 1))
    table = _table(events.playback("c", "k", 10))
    write_durably(url, parquet_bytes(table))
    folder = tmp_path / "events" / "playback" / "date=2026-03-01"
    assert [p.name for p in folder.iterdir()] == [url.rsplit("/", 1)[1]]
    assert pq.read_table(url).to_pylist() == table.to_pylist()


def test_object_store_write_is_one_put(memory_filesystem):
    table = _table(events.rating("clip", 5))
    write_durably("memory://bucket/events/quality_rating/date=2026-03-01/part-x.parquet", parquet_bytes(table))
    assert memory_filesystem.ls("/bucket/events/quality_rating/date=2026-03-01", detail=False) == [
        "/bucket/events/quality_rating/date=2026-03-01/part-x.parquet"
    ]
    assert read_kind("memory://bucket/events", events_pb2.QualityRating).to_pylist() == table.to_pylist()


def test_a_kind_without_files_reads_as_an_empty_table_of_its_schema(tmp_path):
    table = read_kind(str(tmp_path / "nowhere"), events_pb2.Playback)
    assert table.num_rows == 0 and table.schema == arrow_schema(events_pb2.Playback)


def test_files_from_before_a_field_was_added_read_back_with_nulls(tmp_path):
    root = str(tmp_path / "events")
    old = _table(events.preference("c-old", events_pb2.CHOICE_A, user="u-old")).drop_columns(["user_id"])
    new = _table(events.preference("c-new", events_pb2.CHOICE_B, user="u-new"))
    for table in (old, new):
        write_durably(part_url(root, "preference_submitted", datetime.date(2026, 3, 1)), parquet_bytes(table))
    (tmp_path / "events" / "preference_submitted" / "date=2026-03-01" / ".half-written.tmp").write_bytes(b"PAR1")
    rows = {r["comparison_id"]: r for r in read_kind(root, events_pb2.PreferenceSubmitted).to_pylist()}
    assert rows["c-old"]["user_id"] is None and rows["c-old"]["choice"] == "a"
    assert rows["c-new"]["user_id"] == "u-new"
