"""One batch of fetched messages: decode them, group the valid ones into Parquet files, set aside the rest.

Decoding and converting to rows happen per message, so one bad event (undecodable bytes, an unknown kind,
a timestamp out of range) goes to the dead-letter subject alone instead of failing the whole batch.
"""

import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from nats.aio.msg import Msg

from musicrl.bus.events import decode_event
from musicrl.bus.subjects import kind_of
from musicrl.data.dataset import parquet_bytes, part_url, write_durably
from musicrl.data.event_tables import event_row, rows_to_table


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that cannot be recorded, and the sentence saying why."""

    msg: Msg
    reason: str


@dataclass(slots=True)
class Batch:
    """Fetched messages sorted into what gets written and what gets dead-lettered.

    Attributes:
        parts: Rows to write, by (event class, UTC day of ``occurred_at``): one Parquet file each.
        recorded: The messages whose rows are in ``parts``; acknowledged once every file is durable.
        dead: Messages for the dead-letter subject.
    """

    parts: dict[tuple[type[Message], datetime.date], list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    recorded: list[Msg] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """One Parquet file a batch produced."""

    kind: str
    url: str
    rows: int


def stream_sequence(msg: Msg) -> int:
    """The message's sequence number in its JetStream stream."""
    return int(msg.metadata.sequence.stream)


def sort_batch(msgs: Sequence[Msg], recorded_at: datetime.datetime) -> Batch:
    """Decode every message and sort it into a file of the batch or onto the dead-letter list.

    Args:
        msgs: Messages fetched from the event stream.
        recorded_at: The time stored in every row's ``recorded_at`` (tz-aware UTC).

    Returns:
        The sorted batch.
    """
    batch = Batch()
    for msg in msgs:
        sequence = stream_sequence(msg)
        try:
            event = decode_event(msg.subject, msg.data)
            row = event_row(event, recorded_at=recorded_at, stream_sequence=sequence)
        except ValueError as e:  # InvalidEvent is one; a Timestamp outside years 1-9999 is the other
            logger.warning("dead-lettering message %d on %s: %s", sequence, msg.subject, e)
            batch.dead.append(DeadLetter(msg, str(e)))
            continue
        batch.parts[(type(event), row["occurred_at"].date())].append(row)
        batch.recorded.append(msg)
    return batch


def write_batch(dataset_url: str, batch: Batch) -> list[WrittenFile]:
    """Write one Parquet file per (kind, day) of ``batch``, each durable before the next starts.

    Blocking I/O: call it from a worker thread.

    Args:
        dataset_url: Root of the dataset.
        batch: A sorted batch.

    Returns:
        The files written.

    Raises:
        OSError: A write failed; files written before it stay (their events are re-delivered and
            written again, which the snapshot's de-duplication by event_id absorbs).
    """
    now = datetime.datetime.now(datetime.UTC)
    written = []
    for (message_type, date), rows in sorted(batch.parts.items(), key=lambda item: (kind_of(item[0][0]), item[0][1])):
        kind = kind_of(message_type)
        url = part_url(dataset_url, kind, date, now)
        started = time.monotonic()
        write_durably(url, parquet_bytes(rows_to_table(message_type, rows)))
        logger.debug("wrote %d %s events to %s in %.3f s", len(rows), kind, url, time.monotonic() - started)
        written.append(WrittenFile(kind, url, len(rows)))
    return written
