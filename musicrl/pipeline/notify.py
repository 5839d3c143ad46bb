"""What the retraining pipeline tells the platform over NATS: that a run failed.

The event carries an id derived from the run, so a retried step publishes the same event and JetStream's
duplicate window drops the second copy. (A canary is started through the rollout record: ``musicrl.rollout``.)
"""

import asyncio
import logging
import uuid

from google.protobuf.message import Message

from musicrl.bus.connection import connect, ensure_streams
from musicrl.bus.events import new_header
from musicrl.bus.publisher import EventPublisher
from musicrl.config import BusConfig
from musicrl.v1 import events_pb2


logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("0b4f3c52-9d1e-4a57-8c3a-6f1d2e7b9a40")  # fixed: the same run gives the same event id


def run_failed(run_name: str, state: str, task_name: str, error_message: str) -> events_pb2.PipelineRunFailed:
    """The event the exit handler publishes for a run that did not succeed."""
    return events_pb2.PipelineRunFailed(
        header=new_header(str(uuid.uuid5(_NAMESPACE, f"failed\x00{run_name}\x00{task_name}"))),
        run_name=run_name,
        state=state,
        task_name=task_name,
        error_message=error_message,
    )


def publish(nats_url: str, event: Message) -> None:
    """Publish ``event`` and wait for JetStream to store it (the stream is created if missing).

    Raises:
        BusUnavailable: JetStream did not acknowledge within the publish deadline.
    """

    async def send() -> None:
        config = BusConfig(nats_url=nats_url)
        client, js = await connect(config, name="retraining-pipeline")
        try:
            await ensure_streams(js, config)
            await EventPublisher(js, config).publish(event)
        finally:
            await client.drain()

    asyncio.run(send())
    logger.info("published %s to %s", event.DESCRIPTOR.name, nats_url)
