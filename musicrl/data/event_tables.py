"""Flat Arrow tables of the protobuf events, derived from the message descriptors.

Each event kind becomes one table whose columns follow the message: the header's ``event_id``,
``occurred_at`` and ``schema_version`` first, then every other field in field-number order, nested
messages flattened with ``_`` (``clip_a.policy.version`` → ``clip_a_policy_version``), then the recorder's
``recorded_at`` and ``stream_sequence``. Nothing is listed by hand, so adding a field to
``events.proto`` adds a column; Parquet files written before the change read back with that column null
(schema evolution by addition, the proto's own compatibility rule).

Conversions, each decided once here:

* enums become strings: the value name without the enum's UPPER_SNAKE prefix, lower-cased
  (``CHOICE_A`` → ``a``, ``DISPLAY_ORDER_B_FIRST`` → ``b_first``, ``*_UNSPECIFIED`` → ``unspecified``); a
  number this reader does not know (written by a newer schema) becomes ``unknown_<number>``;
* ``google.protobuf.Timestamp`` becomes ``timestamp[us, tz=UTC]``;
* an unset nested message makes all of its columns null; proto3 scalars without presence keep their
  default (0, ``""``, false) because the wire cannot tell "unset" from "default".
"""

import datetime
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from musicrl.bus.subjects import kind_of


TIMESTAMP = pa.timestamp("us", tz="UTC")
HEADER_FIELD = "header"  # every event holds its EventHeader as this field; its columns carry no prefix
RECORDER_COLUMNS = (pa.field("recorded_at", TIMESTAMP), pa.field("stream_sequence", pa.int64()))
_TIMESTAMP_TYPE = "google.protobuf.Timestamp"
# schema_version is a uint32 on the wire; int32 is what every Parquet reader handles, and versions stay small.
_COLUMN_TYPE_OVERRIDES = {"schema_version": pa.int32()}
_SCALAR_TYPES: dict[int, pa.DataType] = {
    FieldDescriptor.TYPE_STRING: pa.string(),
    FieldDescriptor.TYPE_BYTES: pa.binary(),
    FieldDescriptor.TYPE_BOOL: pa.bool_(),
    FieldDescriptor.TYPE_INT32: pa.int32(),
    FieldDescriptor.TYPE_SINT32: pa.int32(),
    FieldDescriptor.TYPE_SFIXED32: pa.int32(),
    FieldDescriptor.TYPE_INT64: pa.int64(),
    FieldDescriptor.TYPE_SINT64: pa.int64(),
    FieldDescriptor.TYPE_SFIXED64: pa.int64(),
    FieldDescriptor.TYPE_UINT32: pa.uint32(),
    FieldDescriptor.TYPE_FIXED32: pa.uint32(),
    FieldDescriptor.TYPE_UINT64: pa.uint64(),
    FieldDescriptor.TYPE_FIXED64: pa.uint64(),
    FieldDescriptor.TYPE_FLOAT: pa.float32(),
    FieldDescriptor.TYPE_DOUBLE: pa.float64(),
}
_COLUMNS_CACHE: dict[type[Message], tuple["_Column", ...]] = {}
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the recorder received it.

    Attributes:
        event: The decoded event message.
        recorded_at: When the recorder read it (tz-aware UTC).
        stream_sequence: Its sequence number in the JetStream event stream.
    """

    event: Message
    recorded_at: datetime.datetime
    stream_sequence: int


@dataclass(frozen=True, slots=True)
class _Column:
    """One flat column: the field path from the event message and how its values convert."""

    name: str
    path: tuple[FieldDescriptor, ...]
    type: pa.DataType


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)  # protobuf >= 6 (``label`` is deprecated)


def _leaf_type(field: FieldDescriptor) -> pa.DataType:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return pa.string()
    if field.message_type is not None and field.message_type.full_name == _TIMESTAMP_TYPE:
        return TIMESTAMP
    return _SCALAR_TYPES[field.type]


def _columns_of(descriptor: Descriptor, prefix: str, path: tuple[FieldDescriptor, ...]) -> Iterator[_Column]:
    for field in descriptor.fields:
        name = f"{prefix}{field.name}"
        nested = field.message_type
        if _is_repeated(field) and (nested is not None and nested.full_name != _TIMESTAMP_TYPE):
            raise TypeError(
                f"{descriptor.full_name}.{field.name} is a repeated message or a map, which has no flat column; "
                "give it a mapping in musicrl.data.event_tables"
            )
        if _is_repeated(field):
            yield _Column(name, path + (field,), pa.list_(_leaf_type(field)))
        elif nested is not None and nested.full_name != _TIMESTAMP_TYPE:
            inner_prefix = "" if not path and field.name == HEADER_FIELD else name + "_"
            yield from _columns_of(nested, inner_prefix, path + (field,))
        else:
            yield _Column(name, path + (field,), _COLUMN_TYPE_OVERRIDES.get(name, _leaf_type(field)))


def _columns(message_type: type[Message]) -> tuple[_Column, ...]:
    """The flat columns of ``message_type``, derived once per type (the recorder asks for every event)."""
    if message_type not in _COLUMNS_CACHE:
        _COLUMNS_CACHE[message_type] = _derive_columns(message_type)
    return _COLUMNS_CACHE[message_type]


def _derive_columns(message_type: type[Message]) -> tuple[_Column, ...]:
    columns = tuple(_columns_of(message_type.DESCRIPTOR, "", ()))
    names = [c.name for c in columns] + [f.name for f in RECORDER_COLUMNS]
    clashing = sorted({n for n in names if names.count(n) > 1})
    if clashing:
        raise TypeError(f"{message_type.DESCRIPTOR.name}: flattened column names {clashing} appear twice")
    header = [c for c in columns if c.path[0].name == HEADER_FIELD]
    if [c.name for c in header][:3] != ["event_id", "occurred_at", "schema_version"]:
        raise TypeError(f"{message_type.DESCRIPTOR.name} has no EventHeader as its field {HEADER_FIELD!r}")
    return tuple(header) + tuple(c for c in columns if c.path[0].name != HEADER_FIELD)


def arrow_schema(message_type: type[Message]) -> pa.Schema:
    """The flat Arrow schema of one event kind.

    Args:
        message_type: An event message class, e.g. ``events_pb2.PreferenceSubmitted``.

    Returns:
        Header columns, the flattened fields in field-number order, then ``recorded_at`` and
        ``stream_sequence``. The schema's metadata names the kind and the message.

    Raises:
        TypeError: The message has no header, a field cannot be flattened, or two columns share a name.
    """
    fields = [pa.field(c.name, c.type) for c in _columns(message_type)] + list(RECORDER_COLUMNS)
    metadata = {"musicrl.kind": kind_of(message_type), "musicrl.message": message_type.DESCRIPTOR.full_name}
    return pa.schema(fields, metadata=metadata)


def enum_label(enum: EnumDescriptor, number: int) -> str:
    """The column value of an enum number: its name without the enum's prefix, lower-cased.

    Args:
        enum: The enum's descriptor, e.g. ``events_pb2.Choice.DESCRIPTOR``.
        number: The value on the wire.

    Returns:
        E.g. ``a`` for ``CHOICE_A``, ``b_first`` for ``DISPLAY_ORDER_B_FIRST``, ``unknown_7`` for a number
        this reader's schema does not define.
    """
    value = enum.values_by_number.get(number)
    if value is None:
        return f"unknown_{number}"
    prefix = _CAMEL_BOUNDARY.sub("_", enum.name).upper() + "_"  # DisplayOrder → DISPLAY_ORDER_
    return value.name.removeprefix(prefix).lower()


def _convert(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_label(field.enum_type, value)
    if field.message_type is not None:  # a Timestamp: the only message that is a leaf
        return value.ToDatetime(tzinfo=datetime.UTC)
    return value


def _value(event: Message, column: _Column) -> Any:
    message = event
    for field in column.path[:-1]:
        if not message.HasField(field.name):
            return None  # an unset nested message: every column under it is null
        message = getattr(message, field.name)
    leaf = column.path[-1]
    if _is_repeated(leaf):
        return [_convert(leaf, v) for v in getattr(message, leaf.name)]
    if leaf.has_presence and not message.HasField(leaf.name):
        return None
    return _convert(leaf, getattr(message, leaf.name))


def event_row(event: Message, *, recorded_at: datetime.datetime, stream_sequence: int) -> dict[str, Any]:
    """One event as a row of :func:`arrow_schema` of its type.

    Args:
        event: An event message.
        recorded_at: When the recorder read it (tz-aware).
        stream_sequence: Its JetStream stream sequence.

    Returns:
        Column name → Python value (timestamps as tz-aware UTC datetimes, enums as strings).

    Raises:
        ValueError: A timestamp lies outside years 1–9999 or has invalid nanoseconds.
    """
    row = {c.name: _value(event, c) for c in _columns(type(event))}
    row["recorded_at"] = recorded_at
    row["stream_sequence"] = stream_sequence
    return row


def rows_to_table(message_type: type[Message], rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows from :func:`event_row` (all of ``message_type``) as a table of its schema (empty rows: empty table)."""
    return pa.Table.from_pylist(list(rows), schema=arrow_schema(message_type))


def to_table(events: Sequence[RecordedEvent], message_type: type[Message] | None = None) -> pa.Table:
    """Events of one kind, with the recorder's metadata, as an Arrow table.

    Args:
        events: Recorded events, all of the same message type.
        message_type: Their type; required when ``events`` is empty, checked otherwise.

    Returns:
        A table with :func:`arrow_schema` of the type, one row per event, in the given order.

    Raises:
        ValueError: The events are of several types, or there are none and no ``message_type``.
    """
    types = {type(e.event) for e in events} | ({message_type} if message_type else set())
    if len(types) != 1:
        names = sorted(t.__name__ for t in types) or ["none"]
        raise ValueError(f"to_table needs events of exactly one message type, got {', '.join(names)}")
    (only_type,) = types
    rows = [event_row(e.event, recorded_at=e.recorded_at, stream_sequence=e.stream_sequence) for e in events]
    return rows_to_table(only_type, rows)
