"""A/B comparisons (MusicRL §3.3): two clips for one prompt, in random display order, then feedback.

Both clips come from the stable policy with different seeds, or, for ``canary_share`` of comparisons, one
from the stable policy and one from the canary. Which of the two fills slot A and which slot B is drawn at
random per comparison, so the slot names a client reads (and answers with) say nothing about the policies;
which slot is shown first is a second, separate draw, so position bias cancels out. Both draws come from
one generator seeded by the request, so a retry with the same Idempotency-Key replays them. The policies
are recorded in the ComparisonServed event only, never in a reply.
The comparison is kept in the ``comparisons`` KV bucket so that feedback can be checked against it.
"""

import asyncio
import collections
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Literal

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
from musicrl.rollout.routing import PolicyEndpoint, RoutingStore, RoutingTable
from musicrl.v1 import events_pb2


logger = logging.getLogger(__name__)

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
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
    """A comparison as served.

    Attributes:
        stored: The stored record.
        clips: Its clips in slot order (A, B).
        canary_slot: ``a`` or ``b``, the slot of the canary's clip; None when both are the stable policy's.
    """

    stored: StoredComparison
    clips: tuple[ClipRecord, ClipRecord]
    canary_slot: Slot | None = None


@dataclass(frozen=True, slots=True)
class Draw:
    """The random choices of one comparison.

    Attributes:
        endpoints: The policy of slot A and that of slot B.
        canary_slot: ``a`` or ``b``, the slot the canary fills; None when it does not take part.
        a_first: Whether slot A is shown first (drawn after, and apart from, the slots' policies).
    """

    endpoints: tuple[PolicyEndpoint, PolicyEndpoint]
    canary_slot: Slot | None
    a_first: bool


def draw_comparison(table: RoutingTable, idem: Idempotency) -> Draw:
    """Draw the policies of both slots and the display order from one generator seeded by the request.

    Args:
        table: The routing table in force.
        idem: The request's idempotency: with a key, the seed (and so every draw) is the same on a retry,
            which must regenerate the same clips under the same ids; without one, the seed is random.

    Returns:
        The draw.
    """
    rng = random.Random(idem.new_seed("draw"))
    endpoints = table.comparison_pair(rng)
    a_first = rng.random() < 0.5
    canary_slot: Slot | None = None
    if table.canary is not None and table.canary != table.stable:  # an identical "canary" is the stable one
        canary_slot = next((s for s, e in zip(SLOTS, endpoints, strict=True) if e == table.canary), None)
    return Draw(endpoints, canary_slot, a_first)


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
        draw = draw_comparison(await self.routing.get(), idem)
        endpoints = draw.endpoints
        seeds = (idem.new_seed("seed/a"), idem.new_seed("seed/b"))
        started = time.monotonic()
        with self.slots.held():
            generated = await self._generate(prompt, endpoints, seeds, params)
        latency_ms = (time.monotonic() - started) * 1000
        _warn_if_told_apart(generated, draw)
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
            draw.a_first,
            listener.user_id,
            listener.page_session,
        )
        await self.kv.put(stored.id, json.dumps(dataclasses.asdict(stored)).encode())
        self._remember(stored)
        served = ServedComparison(stored, (clips[0], clips[1]), draw.canary_slot)
        await self.publisher.publish(served_event(served, idem.new_id("event/comparison")))
        return served

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


def _warn_if_told_apart(generated: list[GeneratedAudio], draw: Draw) -> None:
    """Log when the canary's clip differs from the stable one's in what a client reads without listening.

    Generation jobs always use the stable policy, so a client can learn its sample rate, its clips' length
    and the shape of its codes; a canary that differs there (another codec, a stereo model) is recognisable
    by its WAV header, its ``duration_s`` or its codes, whichever slot it fills. No policy served today
    differs: this is the alarm for the day one does, since the votes of such a rollout are not blind.
    """
    if draw.canary_slot is None:
        return
    canary, stable = generated[::-1] if draw.canary_slot == "b" else generated
    shapes = [(g.sample_rate, len(g.audio), tuple(g.codes.shape)) for g in (canary, stable)]
    if shapes[0] != shapes[1]:
        logger.warning(
            "the canary's clip (rate, samples, codes shape) is %s, the stable one's %s: clients can tell the "
            "clips of stable-vs-canary comparisons apart without listening",
            *shapes,
        )


CANARY_SLOTS: dict[Slot | None, "events_pb2.CanarySlot"] = {
    None: events_pb2.CANARY_SLOT_NONE,
    "a": events_pb2.CANARY_SLOT_A,
    "b": events_pb2.CANARY_SLOT_B,
}


def served_event(served: ServedComparison, event_id: str) -> events_pb2.ComparisonServed:
    """The ComparisonServed event of ``served``: each slot's clip and policy, the canary's slot, the order.

    Args:
        served: The comparison as served.
        event_id: The event id (derived from the request, so a retry publishes the same event).

    Returns:
        The event.
    """

    def ref(clip: ClipRecord) -> events_pb2.ClipRef:
        policy = events_pb2.PolicyRef(model_uri=clip.policy.model_uri, version=clip.policy.version)
        return events_pb2.ClipRef(
            clip_id=clip.clip_id, policy=policy, audio_uri=clip.audio_uri, duration_s=clip.duration_s
        )

    stored = served.stored
    order = events_pb2.DISPLAY_ORDER_A_FIRST if stored.a_first else events_pb2.DISPLAY_ORDER_B_FIRST
    return events_pb2.ComparisonServed(
        header=new_header(event_id),
        comparison_id=stored.id,
        prompt=stored.prompt,
        clip_a=ref(served.clips[0]),
        clip_b=ref(served.clips[1]),
        display_order=order,
        user_id=stored.user_id,
        page_session=stored.page_session,
        canary_slot=CANARY_SLOTS[served.canary_slot],
    )
