"""A/B comparisons (MusicRL §3.3): two clips for one prompt, in random display order, then feedback.

Slot A always holds the stable policy; slot B holds the stable policy with another seed, or the canary
for ``canary_share`` of comparisons. Which slot is shown first is random, so position bias cancels out.
The comparison is kept in the ``comparisons`` KV bucket so that feedback can be checked against it.
"""

import asyncio
import collections
import dataclasses
import json
import random
import time
from dataclasses import dataclass

from nats.js.errors import InvalidKeyError, KeyNotFoundError
from nats.js.kv import KeyValue

from musicrl.bus.events import new_header
from musicrl.bus.publisher import EventPublisher
from musicrl.config import SamplingParams
from musicrl.errors import Forbidden, InvalidRequest, NotFound
from musicrl.gateway.auth import Listener
from musicrl.gateway.capacity import GenerationSlots
from musicrl.gateway.clips import ClipRecord, ClipRecorder
from musicrl.gateway.generator_client import GeneratedAudio, GeneratorClient
from musicrl.gateway.idempotency import Idempotency
from musicrl.rollout.routing import PolicyEndpoint, RoutingStore
from musicrl.v1 import events_pb2


SLOTS = ("a", "b")
CACHED_COMPARISONS = 10_000  # ~2 MB: the comparisons currently being listened to


@dataclass(frozen=True, slots=True)
class StoredComparison:
    """What feedback is checked against.

    Attributes:
        id: Comparison id.
        prompt: The prompt.
        clip_ids: Clip of slot A, clip of slot B.
        a_first: Whether slot A was shown first.
        user_id: Pseudonymous id of the listener it was served to (only they may give feedback on it).
        page_session: Whether that listener is an anonymous listening-page session.
    """

    id: str
    prompt: str
    clip_ids: tuple[str, str]
    a_first: bool
    user_id: str
    page_session: bool = False  # records written before the field existed came from either kind

    def check_listener(self, listener: Listener) -> bool:
        """Whether ``listener`` is another listener than the one this comparison was served to.

        Raises:
            Forbidden: A page session's feedback on a comparison served to someone else: a session cannot
                be forged, so another session's comparison id can only have leaked.
        """
        other = listener.user_id != self.user_id
        if other and (listener.page_session or self.page_session):
            raise Forbidden(f"comparison {self.id!r} was served to another listener")
        return other

    def slot_of(self, clip_id: str) -> str:
        """``a`` or ``b``. Raises InvalidRequest for a clip of another comparison."""
        for slot, candidate in zip(SLOTS, self.clip_ids, strict=True):
            if candidate == clip_id:
                return slot
        raise InvalidRequest(f"clip {clip_id!r} is not part of comparison {self.id!r}")


@dataclass(frozen=True, slots=True)
class ServedComparison:
    """A comparison as served: the stored record and its clips in slot order (A, B)."""

    stored: StoredComparison
    clips: tuple[ClipRecord, ClipRecord]


class ComparisonService:
    """Serves comparisons and looks them up.

    Args:
        kv: The ``comparisons`` bucket.
        routing: Which policies take part.
        generator: The V2 client.
        clips: Stores clips and publishes their events.
        publisher: Publishes ComparisonServed.
        slots: The bound on generations in flight, shared with generation jobs.
    """

    def __init__(
        self,
        kv: KeyValue,
        routing: RoutingStore,
        generator: GeneratorClient,
        clips: ClipRecorder,
        publisher: EventPublisher,
        slots: GenerationSlots,
    ) -> None:
        self.kv = kv
        self.routing = routing
        self.generator = generator
        self.clips = clips
        self.publisher = publisher
        self.slots = slots
        self._cache: collections.OrderedDict[str, StoredComparison] = collections.OrderedDict()

    async def serve(
        self, prompt: str, params: SamplingParams, listener: Listener, idem: Idempotency
    ) -> ServedComparison:
        """Generate both clips, store them, record the comparison and publish its events.

        Raises:
            Overloaded: The replica is at its bound of generations in flight.
            UpstreamUnavailable: A generator is down.
            BusUnavailable: An event was not stored.
        """
        rng = random.Random(idem.new_seed("draw"))  # routing and display order are replayed on a retry
        endpoints = (await self.routing.get()).comparison_pair(rng)
        seeds = (idem.new_seed("seed/a"), idem.new_seed("seed/b"))
        started = time.monotonic()
        with self.slots.held():
            generated = await self._generate(prompt, endpoints, seeds, params)
        latency_ms = (time.monotonic() - started) * 1000
        clips = tuple(
            [
                await self.clips.save(
                    idem.new_id(f"clip/{slot}").replace("-", ""),
                    audio,
                    prompt,
                    endpoint,
                    params,
                    latency_ms,
                    idem.new_id(f"event/clip/{slot}"),
                )
                for slot, audio, endpoint in zip(SLOTS, generated, endpoints, strict=True)
            ]
        )
        stored = StoredComparison(
            idem.new_id("comparison"),
            prompt,
            (clips[0].clip_id, clips[1].clip_id),
            rng.random() < 0.5,
            listener.user_id,
            listener.page_session,
        )
        await self.kv.put(stored.id, json.dumps(dataclasses.asdict(stored)).encode())
        self._remember(stored)
        await self.publisher.publish(_served_event(stored, clips, idem.new_id("event/comparison")))
        return ServedComparison(stored, (clips[0], clips[1]))

    async def get(self, comparison_id: str) -> StoredComparison:
        """The stored comparison. Raises NotFound for an unknown id.

        A comparison never changes once stored, so recent ones are kept in memory: every playback and
        preference looks its comparison up, and a KV round trip per feedback request is the hot path.
        """
        if (cached := self._cache.get(comparison_id)) is not None:
            self._cache.move_to_end(comparison_id)
            return cached
        try:
            entry = await self.kv.get(comparison_id)
        except (KeyNotFoundError, InvalidKeyError, ValueError) as e:
            raise NotFound(f"no comparison {comparison_id!r}") from e
        data = json.loads(entry.value or b"{}")
        known = {f.name for f in dataclasses.fields(StoredComparison)}
        data = {k: v for k, v in data.items() if k in known}  # a newer writer's fields are ignored
        data["clip_ids"] = tuple(data["clip_ids"])
        return self._remember(StoredComparison(**data))

    def _remember(self, comparison: StoredComparison) -> StoredComparison:
        self._cache[comparison.id] = comparison
        if len(self._cache) > CACHED_COMPARISONS:
            self._cache.popitem(last=False)  # least recently used
        return comparison

    async def _generate(
        self,
        prompt: str,
        endpoints: tuple[PolicyEndpoint, PolicyEndpoint],
        seeds: tuple[int, int],
        params: SamplingParams,
    ) -> list[GeneratedAudio]:
        if endpoints[0] == endpoints[1]:  # one batched request when both clips come from the same policy
            return await self.generator.generate(endpoints[0], [prompt, prompt], list(seeds), params)
        first, second = await asyncio.gather(
            *(self.generator.generate(e, [prompt], [s], params) for e, s in zip(endpoints, seeds, strict=True))
        )
        return [first[0], second[0]]


def _served_event(
    stored: StoredComparison, clips: tuple[ClipRecord, ...], event_id: str
) -> events_pb2.ComparisonServed:
    def ref(clip: ClipRecord) -> events_pb2.ClipRef:
        policy = events_pb2.PolicyRef(model_uri=clip.policy.model_uri, version=clip.policy.version)
        return events_pb2.ClipRef(clip_id=clip.clip_id, policy=policy, audio_uri=clip.audio_uri)

    order = events_pb2.DISPLAY_ORDER_A_FIRST if stored.a_first else events_pb2.DISPLAY_ORDER_B_FIRST
    return events_pb2.ComparisonServed(
        header=new_header(event_id),
        comparison_id=stored.id,
        prompt=stored.prompt,
        clip_a=ref(clips[0]),
        clip_b=ref(clips[1]),
        display_order=order,
        user_id=stored.user_id,
        page_session=stored.page_session,
    )
