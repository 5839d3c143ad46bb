"""Read the events stored on one subject of the MUSICRL stream, straight from JetStream."""

import asyncio
import contextlib

import nats.errors
from google.protobuf.message import Message

from musicrl.bus.connection import connect
from musicrl.bus.events import decode_event
from musicrl.config import BusConfig


def stream_events(nats_url: str, subject: str) -> list[Message]:
    """Every event stored on ``subject``, decoded, oldest first."""

    async def read() -> list[Message]:
        client, js = await connect(BusConfig(nats_url=nats_url), "test-reader")
        try:
            sub = await js.pull_subscribe(subject, stream="MUSICRL")
            found: list[Message] = []
            # the end of the subject: nats-py raises its own TimeoutError, or asyncio's when the deadline
            # ran out between its two pull requests
            with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                while True:
                    found += [decode_event(m.subject, m.data) for m in await sub.fetch(100, timeout=1)]
            await sub.unsubscribe()  # before the close: a pull subscription otherwise holds the drain
            return found
        finally:
            await client.close()

    return asyncio.run(read())
