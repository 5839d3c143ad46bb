"""The event dataset at rest: Parquet files under one fsspec URL, one folder per kind, partitioned by date.

Layout (the recorder writes it, snapshots read it)::

    <dataset_url>/<kind>/date=YYYY-MM-DD/part-<YYYYmmddTHHMMSSffffffZ>-<uuid4>.parquet

``date`` is the UTC day of the events' ``occurred_at``; each file holds events of one kind and one day.

Writes are durable before they return. On a local file system the bytes go to a hidden temp file in the
target folder (``pyarrow.dataset`` skips names starting with ``.``), which is flushed, fsync'ed and renamed
into place, and the folder is fsync'ed so the rename itself survives a power cut; a reader therefore sees a
whole file or none. On an object store (``s3://``, ``gs://``, ...) the object is written in one put, which
the store makes visible atomically.
"""

import contextlib
import datetime
import logging
import uuid
from collections.abc import Iterator, Sequence

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from google.protobuf.message import Message

from musicrl.bus.subjects import kind_of

# write_durably lives in a module without pyarrow (the gateway image writes keys files with it); the recorder and
# the trainers import it from here
from musicrl.data.durable import join_url as join_url
from musicrl.data.durable import write_durably as write_durably
from musicrl.data.event_tables import arrow_schema
from musicrl.errors import InvalidRequest


logger = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"  # ~2x smaller than snappy on these string-heavy rows, and as fast to read
EVENT_BATCH_ROWS = 65_536  # rows decoded at a time when scanning events: a few MB of projected columns


def read_snapshot_table(snapshot_url: str, name: str, columns: tuple[str, ...]) -> pa.Table:
    """The ``columns`` of ``<snapshot_url>/<name>.parquet`` (e.g. ``preferences_train``), and only those.

    Raises:
        InvalidRequest: The file does not exist or lacks one of the columns.
    """
    url = join_url(snapshot_url, f"{name}.parquet")
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise InvalidRequest(
            f"{snapshot_url} has no {name}.parquet: point snapshot_url at a snapshot folder ({url} does not exist)"
        )
    with parquet_file(url) as parquet:
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise InvalidRequest(f"{url} lacks the columns {missing}: it is not a snapshot file")
        return parquet.read(columns=list(columns))  # only these columns are decoded


@contextlib.contextmanager
def parquet_file(url: str) -> Iterator[pq.ParquetFile]:
    """The Parquet file at ``url``, open for reading.

    A local file is mapped and read by Arrow itself, so its bytes never pass through Python objects;
    any other store is read through fsspec.

    Raises:
        FileNotFoundError: Nothing at ``url``.
    """
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        parquet = pq.ParquetFile(path, memory_map=True)
        try:
            yield parquet
        finally:
            parquet.close()
    else:
        with fs.open(path, "rb") as f:
            yield pq.ParquetFile(f)


def part_url(dataset_url: str, kind: str, date: datetime.date, now: datetime.datetime | None = None) -> str:
    """A fresh file name for one batch of ``kind`` events that occurred on ``date``.

    Args:
        dataset_url: Root of the dataset (local path or fsspec URL).
        kind: The event kind, e.g. ``preference_submitted``.
        date: The UTC day of the events' ``occurred_at``.
        now: The write time in the name (default: the current UTC time).

    Returns:
        ``<dataset_url>/<kind>/date=YYYY-MM-DD/part-<UTC time>-<uuid4>.parquet``; the UUID keeps
        concurrent writers (or a re-delivered batch) from ever overwriting a file.
    """
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return join_url(dataset_url, kind, f"date={date.isoformat()}", f"part-{stamp}-{uuid.uuid4()}.parquet")


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` serialised as one Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
    return bytes(sink.getvalue())


def scan_kind(
    dataset_url: str, message_type: type[Message], columns: Sequence[str], *, batch_rows: int = EVENT_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The ``columns`` of every recorded event of one kind, batch by batch, in the schema of the current code.

    Only those columns are decoded, and no more than ``batch_rows`` rows at a time, so a caller that
    reduces each batch holds one batch, not the whole kind.

    Args:
        dataset_url: Root of the dataset.
        message_type: The event class; its kind names the folder.
        columns: The columns to read, a subset of the kind's :func:`~musicrl.data.event_tables.arrow_schema`.
        batch_rows: Most rows per batch.

    Yields:
        Record batches with exactly ``columns`` (duplicates included); none when the kind has no files.

    Raises:
        ValueError: A column the kind does not have, or ``batch_rows`` < 1.
    """
    schema = arrow_schema(message_type)
    unknown = [c for c in columns if c not in schema.names]
    if unknown or batch_rows < 1:
        raise ValueError(f"{kind_of(message_type)} has no columns {unknown}, or batch_rows={batch_rows} < 1")
    fs, root = fsspec.core.url_to_fs(join_url(dataset_url, kind_of(message_type)))
    if not fs.isdir(root):
        return
    dataset = pads.dataset(root, schema=schema, format="parquet", partitioning="hive", filesystem=fs)
    yield from dataset.scanner(columns=list(columns), batch_size=batch_rows).to_batches()


def read_kind(
    dataset_url: str,
    message_type: type[Message],
    columns: Sequence[str] | None = None,
    *,
    batch_rows: int = EVENT_BATCH_ROWS,
) -> pa.Table:
    """Every recorded event of one kind, in the schema of the current code.

    Files written before a field was added lack its column; it reads back as null. The ``date=``
    partition folders are not returned as a column (``occurred_at`` holds the same day).

    Args:
        dataset_url: Root of the dataset.
        message_type: The event class; its kind names the folder.
        columns: Read only these columns (default: all of them).
        batch_rows: Most rows decoded at a time (see :func:`scan_kind`).

    Returns:
        All rows (duplicates included), or an empty table of those columns when there are no files.

    Raises:
        ValueError: A column the kind does not have.
    """
    schema = arrow_schema(message_type)
    names = list(columns) if columns is not None else schema.names
    projected = pa.schema([schema.field(n) for n in names], metadata=schema.metadata)
    batches = list(scan_kind(dataset_url, message_type, names, batch_rows=batch_rows))
    return pa.Table.from_batches(batches, schema=projected)
