"""Connect to NATS and provision what the platform needs: the event stream, the dead-letter stream, KV buckets."""

import logging
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from musicrl.bus.subjects import DLQ_PREFIX, SUBJECT_PREFIX
from musicrl.config import BusConfig


logger = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.5  # a restarted server is back within a second or two locally


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """A KV bucket: name, how long entries live (0 = forever), how many revisions are kept."""

    name: str
    ttl_s: float
    history: int = 1


BUCKETS = (
    BucketSpec("jobs", ttl_s=7 * 24 * 3600),  # generation jobs: clients poll them for a while
    BucketSpec("comparisons", ttl_s=90 * 24 * 3600),  # feedback may arrive long after a comparison was served
    BucketSpec("idempotency", ttl_s=24 * 3600),  # replies to replay for a retried Idempotency-Key
    BucketSpec("routing", ttl_s=0, history=16),  # the routing table; history is the audit trail
    BucketSpec("rollout", ttl_s=0, history=64),  # rollout records and their votes; history is the audit trail
)


async def connect(config: BusConfig, name: str) -> tuple[NATS, JetStreamContext]:
    """Connect with unlimited reconnects, so that a restarted server is rejoined rather than fatal.

    Args:
        config: Where the server is.
        name: Connection name, shown in NATS monitoring.
    """

    async def log_disconnect() -> None:
        if not (client.is_closed or client.is_draining):  # a shutdown of ours is not news
            logger.warning("disconnected from NATS at %s", config.nats_url)

    async def log_reconnect() -> None:
        logger.info("reconnected to NATS")

    async def log_error(error: Exception) -> None:
        logger.warning("NATS: %s", error)

    client = NATS()
    await client.connect(
        servers=config.nats_url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # annotated int, used as seconds
        disconnected_cb=log_disconnect,
        reconnected_cb=log_reconnect,
        error_cb=log_error,
    )
    return client, client.jetstream(timeout=config.publish_timeout_s)


async def ensure_streams(js: JetStreamContext, config: BusConfig) -> None:
    """Create the event and dead-letter streams, or update their settings to ``config``."""
    storage = StorageType.FILE  # acknowledged events must survive a server restart
    for stream in (
        StreamConfig(
            name=config.stream_name,
            subjects=[f"{SUBJECT_PREFIX}.>"],
            storage=storage,
            duplicate_window=config.duplicate_window_s,
            max_age=config.max_age_s,
            num_replicas=config.replicas,
            discard=DiscardPolicy.NEW,  # a full stream refuses new events rather than dropping old ones
        ),
        StreamConfig(
            name=config.dlq_stream_name,
            subjects=[f"{DLQ_PREFIX}.>"],
            storage=storage,
            duplicate_window=config.duplicate_window_s,
            num_replicas=config.replicas,
        ),
    ):
        try:
            await js.update_stream(stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(stream)
            logger.info("created stream %s for %s", stream.name, stream.subjects)


async def ensure_buckets(js: JetStreamContext, config: BusConfig) -> dict[str, KeyValue]:
    """Create (or open) every KV bucket of :data:`BUCKETS`; returns them by name."""
    buckets = {}
    for spec in BUCKETS:
        buckets[spec.name] = await js.create_key_value(
            KeyValueConfig(
                bucket=spec.name,
                history=spec.history,
                ttl=spec.ttl_s or None,
                storage=StorageType.FILE,
                replicas=config.replicas,
            )
        )
    return buckets
