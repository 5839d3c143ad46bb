"""Everything a running gateway holds: connections, stores and services, built once at start-up."""

import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from musicrl.bus.connection import connect, ensure_buckets, ensure_streams
from musicrl.bus.publisher import EventPublisher
from musicrl.data.clips import ClipStore
from musicrl.gateway.auth import KeyFile, Signer
from musicrl.gateway.capacity import GenerationSlots
from musicrl.gateway.clips import ClipRecorder
from musicrl.gateway.comparisons import ComparisonService
from musicrl.gateway.config import GatewayConfig
from musicrl.gateway.feedback import FeedbackService
from musicrl.gateway.generator_client import GeneratorClient
from musicrl.gateway.jobs import JobRunner
from musicrl.gateway.ratelimit import RateLimiter
from musicrl.rollout.routing import PolicyEndpoint, RoutingStore, RoutingTable


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayState:
    """The gateway's collaborators (one per process, on ``app.state.gateway``)."""

    config: GatewayConfig
    keyring: KeyFile
    signer: Signer
    limiter: RateLimiter
    nats: NATS
    publisher: EventPublisher
    idempotency_kv: KeyValue
    routing: RoutingStore
    generator: GeneratorClient
    clip_store: ClipStore
    jobs: JobRunner
    comparisons: ComparisonService
    feedback: FeedbackService

    async def close(self) -> None:
        await self.jobs.close()
        await self.generator.close()
        await self.nats.drain()


async def open_state(config: GatewayConfig) -> GatewayState:
    """Connect to NATS, provision streams and buckets, and build the services."""
    keyring = KeyFile(config.api_keys_file)
    client, js = await connect(config.bus, name="gateway")
    await ensure_streams(js, config.bus)
    buckets = await ensure_buckets(js, config.bus)
    publisher = EventPublisher(js, config.bus)
    default_table = RoutingTable(
        stable=PolicyEndpoint(
            config.generator_url, config.generator_model_name, config.stable_model_uri, config.stable_version
        )
    )
    routing = RoutingStore(buckets["routing"], default_table)
    await routing.put_default()
    generator = GeneratorClient()
    clip_store = ClipStore(config.clip_store_url)
    clips = ClipRecorder(clip_store, publisher)
    slots = GenerationSlots(config.limits.max_inflight_generations)
    comparisons = ComparisonService(buckets["comparisons"], routing, generator, clips, publisher, slots)
    logger.info("gateway connected to %s with %d API keys", config.bus.nats_url, len(keyring.ring.keys))
    return GatewayState(
        config=config,
        keyring=keyring,
        signer=Signer(config.secret_key, config.limits.session_max_age_s),
        limiter=RateLimiter(),
        nats=client,
        publisher=publisher,
        idempotency_kv=buckets["idempotency"],
        routing=routing,
        generator=generator,
        clip_store=clip_store,
        jobs=JobRunner(buckets["jobs"], routing, generator, clips, slots),
        comparisons=comparisons,
        feedback=FeedbackService(comparisons, clip_store, publisher),
    )
