"""NATS subjects of the protobuf events: one subject per event kind, ``musicrl.v1.<kind>``."""

import re

from google.protobuf.message import Message

from musicrl.v1 import events_pb2


SUBJECT_PREFIX = "musicrl.v1"

#: The event message classes, one per event kind (``Envelope`` is a wrapper, not a kind).
EVENT_TYPES: tuple[type[Message], ...] = (
    events_pb2.GenerationCompleted,
    events_pb2.ComparisonServed,
    events_pb2.Playback,
    events_pb2.PreferenceSubmitted,
    events_pb2.QualityRating,
    events_pb2.PolicyRollout,
    events_pb2.PipelineRunFailed,
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _snake_case(name: str) -> str:
    """Converts a CamelCase message name to snake_case.

    Args:
        name: A message name such as ``PreferenceSubmitted``.

    Returns:
        The snake_case form, e.g. ``preference_submitted``.
    """
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def kind_of(message: Message | type[Message]) -> str:
    """The event kind: snake_case of the message name, e.g. ``preference_submitted``."""
    return _snake_case(message.DESCRIPTOR.name)


DLQ_PREFIX = "musicrl.dlq"


def dlq_subject_for(subject: str) -> str:
    """Where an undecodable message from ``subject`` goes: ``musicrl.v1.x`` → ``musicrl.dlq.v1.x``."""
    return DLQ_PREFIX + "." + subject.removeprefix("musicrl.")


def subject_for(message: Message | type[Message]) -> str:
    """Returns the NATS subject an event is published on.

    Args:
        message: An event message, or its class.

    Returns:
        ``musicrl.v1.<kind>``, where kind is the snake_case of the message name, e.g.
        ``musicrl.v1.preference_submitted`` for ``PreferenceSubmitted``.
    """
    return f"{SUBJECT_PREFIX}.{kind_of(message)}"
