"""Build and read protobuf events: headers, kinds, decoding by subject."""

import datetime
import uuid

from google.protobuf.message import DecodeError, Message

from musicrl.bus.subjects import EVENT_TYPES, SUBJECT_PREFIX, kind_of
from musicrl.errors import InvalidRequest
from musicrl.logs import current_request_id
from musicrl.v1 import events_pb2


SCHEMA_VERSION = 3  # 2: request_id, page_session; 3: canary_slot, clip durations, rollout evidence
EVENT_TYPES_BY_KIND: dict[str, type[Message]] = {kind_of(t): t for t in EVENT_TYPES}


class InvalidEvent(InvalidRequest):
    """A message on an event subject that cannot be decoded or fails validation."""


def new_header(event_id: str | None = None, occurred_at: datetime.datetime | None = None) -> events_pb2.EventHeader:
    """An event header with a fresh UUID (or ``event_id``), the current UTC time (or ``occurred_at``) and the
    id of the request being served, if any (:func:`musicrl.logs.current_request_id`)."""
    header = events_pb2.EventHeader(
        event_id=event_id or str(uuid.uuid4()), schema_version=SCHEMA_VERSION, request_id=current_request_id()
    )
    header.occurred_at.FromDatetime(occurred_at or datetime.datetime.now(datetime.UTC))
    return header


def decode_event(subject: str, data: bytes) -> Message:
    """Decode the event published on ``subject`` and check its header.

    Args:
        subject: ``musicrl.v1.<kind>``.
        data: The serialised protobuf.

    Returns:
        The event message.

    Raises:
        InvalidEvent: Unknown kind, undecodable bytes, or a header without a UUID event id or a time.
    """
    prefix = SUBJECT_PREFIX + "."
    kind = subject[len(prefix) :] if subject.startswith(prefix) else None
    if kind not in EVENT_TYPES_BY_KIND:
        raise InvalidEvent(f"subject {subject!r} is not an event kind this reader knows")
    try:
        event = EVENT_TYPES_BY_KIND[kind].FromString(data)
    except DecodeError as e:
        raise InvalidEvent(f"payload on {subject!r} is not a valid {kind} protobuf: {e}") from e
    header = event.header  # type: ignore[attr-defined]
    try:
        uuid.UUID(header.event_id)
    except ValueError as e:
        raise InvalidEvent(f"{kind} event has no valid UUID event_id ({header.event_id!r})") from e
    if not header.HasField("occurred_at"):
        raise InvalidEvent(f"{kind} event {header.event_id} has no occurred_at")
    try:
        header.occurred_at.ToDatetime()
    except (ValueError, OverflowError) as e:  # out of datetime's range: it could not be partitioned by date
        raise InvalidEvent(f"{kind} event {header.event_id} has an out-of-range occurred_at: {e}") from e
    return event
