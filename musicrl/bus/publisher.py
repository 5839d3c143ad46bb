"""Publish protobuf events to JetStream, exactly once from the stream's point of view.

Every event carries ``Nats-Msg-Id = event_id``. A publish whose acknowledgement was lost is retried with
exponential backoff; the stream's duplicate window (far longer than the retry deadline) turns the retry
into a no-op if the first attempt had landed. A caller gets a return only once JetStream has stored the
event, and :class:`BusUnavailable` if that did not happen before the deadline.
"""

import asyncio
import logging
import random
import time

import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import PubAck
from prometheus_client import Counter, Histogram

from musicrl.bus.subjects import kind_of, subject_for
from musicrl.config import BusConfig
from musicrl.errors import BusUnavailable


logger = logging.getLogger(__name__)

PUBLISHED = Counter("musicrl_events_published_total", "Events acknowledged by JetStream.", ["kind", "duplicate"])
PUBLISH_RETRIES = Counter("musicrl_event_publish_retries_total", "Publish attempts that were retried.", ["kind"])
PUBLISH_LATENCY = Histogram(
    "musicrl_event_publish_seconds",
    "Time from the first attempt to JetStream's acknowledgement.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
# What a publish raises while the server restarts, the connection reconnects, or the stream has no leader.
RETRIABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


class EventPublisher:
    """Publishes events of the ``musicrl.v1`` schemas.

    Args:
        js: A JetStream context.
        config: Stream name, timeouts and the retry deadline.
    """

    def __init__(self, js: JetStreamContext, config: BusConfig) -> None:
        self.js = js
        self.config = config

    async def publish(self, event: Message) -> PubAck:
        """Publish ``event`` on its subject and wait until JetStream has stored it.

        Args:
            event: An event message whose ``header.event_id`` is set.

        Returns:
            JetStream's acknowledgement (``duplicate`` is true when an earlier attempt had landed).

        Raises:
            BusUnavailable: No acknowledgement before ``publish_deadline_s``.
        """
        subject, kind = subject_for(event), kind_of(event)
        event_id = event.header.event_id  # type: ignore[attr-defined]
        return await self.publish_raw(subject, event.SerializeToString(), event_id, kind)

    async def publish_raw(
        self, subject: str, payload: bytes, msg_id: str, kind: str, headers: dict | None = None
    ) -> PubAck:
        """Publish bytes with ``Nats-Msg-Id = msg_id`` and the retry policy of :meth:`publish`."""
        started = time.monotonic()
        deadline = started + self.config.publish_deadline_s
        backoff = FIRST_BACKOFF_S
        all_headers = {**(headers or {}), "Nats-Msg-Id": msg_id}
        while True:
            try:
                ack = await self.js.publish(
                    subject,
                    payload,
                    timeout=self.config.publish_timeout_s,
                    headers=dict(all_headers),  # nats-py adds to the dict it is given
                )
            except RETRIABLE as e:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    waited = self.config.publish_deadline_s
                    raise BusUnavailable(
                        f"the event bus did not acknowledge a {kind} event within {waited:.0f} s"
                    ) from e
                PUBLISH_RETRIES.labels(kind=kind).inc()
                logger.warning("publishing %s %s failed (%s); retrying", kind, msg_id, type(e).__name__)
                await asyncio.sleep(min(remaining, backoff * random.uniform(0.5, 1.0)))  # jitter spreads herds
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            PUBLISH_LATENCY.labels(kind=kind).observe(time.monotonic() - started)
            PUBLISHED.labels(kind=kind, duplicate=str(bool(ack.duplicate)).lower()).inc()
            return ack
