"""Store generated clips (WAV and codes) and announce each with a GenerationCompleted event."""

import asyncio
import dataclasses
from dataclasses import dataclass

from musicrl.bus.events import new_header
from musicrl.bus.publisher import EventPublisher
from musicrl.config import SamplingParams
from musicrl.data.clips import ClipStore
from musicrl.gateway.generator_client import GeneratedAudio
from musicrl.models.audio import encode_wav
from musicrl.rollout.routing import PolicyEndpoint
from musicrl.v1 import events_pb2


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """A stored clip.

    Attributes:
        clip_id: Its id (32 hex characters).
        prompt: The prompt it was generated from.
        policy: The policy that generated it.
        seed: Its sampling seed.
        duration_s: Its length in seconds.
        audio_uri: Where its WAV is.
        codes_uri: Where its codes are.
    """

    clip_id: str
    prompt: str
    policy: PolicyEndpoint
    seed: int
    duration_s: float
    audio_uri: str
    codes_uri: str


class ClipRecorder:
    """Writes clips to the clip store, then publishes their GenerationCompleted events.

    Args:
        store: The clip store.
        publisher: The event publisher.
    """

    def __init__(self, store: ClipStore, publisher: EventPublisher) -> None:
        self.store = store
        self.publisher = publisher

    async def save(
        self,
        clip_id: str,
        generated: GeneratedAudio,
        prompt: str,
        policy: PolicyEndpoint,
        params: SamplingParams,
        latency_ms: float,
        event_id: str | None = None,
    ) -> ClipRecord:
        """Store one clip and publish its event (with ``event_id`` when the request was idempotent)."""
        wav = encode_wav(generated.audio, generated.sample_rate)
        audio_uri = await asyncio.to_thread(self.store.put_wav, clip_id, wav)  # blocking I/O off the loop
        codes_uri = await asyncio.to_thread(self.store.put_codes, clip_id, generated.codes)
        record = ClipRecord(clip_id, prompt, policy, generated.seed, generated.duration_s, audio_uri, codes_uri)
        await self.publisher.publish(
            events_pb2.GenerationCompleted(
                header=new_header(event_id),
                clip_id=clip_id,
                prompt=prompt,
                policy=events_pb2.PolicyRef(model_uri=policy.model_uri, version=policy.version),
                sampling=events_pb2.SamplingParams(**dataclasses.asdict(params)),
                seed=generated.seed,
                duration_s=generated.duration_s,
                audio_uri=audio_uri,
                codes_uri=codes_uri,
                latency_ms=latency_ms,
                sample_rate=generated.sample_rate,
            )
        )
        return record
