"""The rollout controller: one replica that judges the canary on live votes and promotes or rolls it back.

Three loops share one lock, so exactly one step of a rollout runs at a time:

- a durable JetStream pull consumer of ComparisonServed, Playback and PreferenceSubmitted events, which
  feeds the :class:`~musicrl.rollout.tally.Tally` and applies the decision rule after every counted vote;
- a watch on the rollout record, which picks up a ``musicrl rollout start``, promote or rollback at once;
- a timer, every ``check_interval_s``, for what no vote announces: readiness, guardrails and the deadline.

An event is acknowledged after the tally has stored what it changed; a controller killed at any point and
restarted picks up at the first unacknowledged event with the tally rebuilt from the bucket.
"""

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from prometheus_client import Counter

from musicrl.bus.events import InvalidEvent, decode_event
from musicrl.bus.publisher import RETRIABLE, EventPublisher
from musicrl.bus.subjects import subject_for
from musicrl.errors import Conflict
from musicrl.rollout.config import ControllerConfig
from musicrl.rollout.guardrails import GuardrailProbe
from musicrl.rollout.lifecycle import Lifecycle
from musicrl.rollout.record import CURRENT_KEY, RolloutRecord, RolloutStore, Status
from musicrl.rollout.routing import RoutingStore
from musicrl.rollout.tally import CanaryComparison, Tally
from musicrl.rollout.target import RolloutTarget
from musicrl.v1 import events_pb2


logger = logging.getLogger(__name__)

SUBJECTS = [subject_for(k) for k in (events_pb2.ComparisonServed, events_pb2.Playback, events_pb2.PreferenceSubmitted)]
CHOICES = {
    events_pb2.CHOICE_A: "a",
    events_pb2.CHOICE_B: "b",
    events_pb2.CHOICE_TIE: "tie",
    events_pb2.CHOICE_NONE: "none",
}
FETCH_BATCH = 256
ACK_WAIT_S = 60.0  # a batch is counted in well under a second; only a stuck controller exceeds this
FETCH_WAIT_S = 1.0
RETRY_WAIT_S = 1.0
WATCH_POLL_S = 1.0  # how soon the record watch notices a stop
VOTES = Counter("musicrl_rollout_votes_total", "Stable-vs-canary votes counted and judged.", ["outcome"])
TRANSIENT = (*RETRIABLE, nats.js.errors.APIError, nats.errors.SlowConsumerError)


class RolloutController:
    """Judges the current rollout.

    Args:
        config: The controller's settings.
        js: JetStream of a connected client.
        buckets: The platform's KV buckets (``rollout`` and ``routing`` are used).
        target: Where decisions are carried out.
        probe: Reads the canary's and the stable policy's health.
    """

    def __init__(
        self,
        config: ControllerConfig,
        js: JetStreamContext,
        buckets: dict[str, KeyValue],
        target: RolloutTarget,
        probe: GuardrailProbe,
    ) -> None:
        self.config = config
        self.js = js
        self.kv = buckets["rollout"]
        self.store = RolloutStore(self.kv)
        self.lifecycle = Lifecycle(
            config, self.store, RoutingStore(buckets["routing"]), target, js, EventPublisher(js, config.bus)
        )
        self.probe = probe
        self.lock = asyncio.Lock()
        self.tally: Tally | None = None
        self.votes_evaluated = 0
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run the three loops until ``stop`` is set."""
        await self.advance()
        loops = [asyncio.create_task(loop(stop)) for loop in (self._consume, self._watch_record, self._tick)]
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopping}:
                task.result()  # a loop that ended by itself crashed: let the process exit and be restarted
        finally:
            for task in (stopping, *loops):
                task.cancel()
            await asyncio.gather(stopping, *loops, return_exceptions=True)

    async def advance(self) -> None:
        """Take every step the current rollout can take now."""
        async with self.lock:
            await self._advance_locked()

    async def _advance_locked(self) -> None:
        for _ in range(8):  # requested → starting → running → deciding → finished, with room for a lost race
            record, revision = await self.store.get()
            if record is None or record.status.finished:
                return
            tally = await self._tally_for(record)
            try:
                if await self.lifecycle.step(record, revision, tally) is None:
                    return
            except Conflict as e:  # someone else wrote the record in between: read it again
                logger.info("rollout record changed under the controller (%s); reading it again", e)

    async def _tally_for(self, record: RolloutRecord) -> Tally:
        if self.tally is None or self.tally.rollout_id != record.id:
            self.tally = Tally(self.kv, record.id, self.config.max_votes_per_listener)
            await self.tally.load()
            self.probe.reset()
        return self.tally

    # --- the event consumer -------------------------------------------------------------------------------

    def consumer_config(self, start_seq: int | None, start_time: datetime.datetime | None) -> ConsumerConfig:
        """The durable consumer, starting at ``start_seq`` (or ``start_time``, or only new events).

        One consumer, one fetch loop, one message at a time: votes are counted in stream order, which the
        per-listener cap and "heard both clips" depend on.
        """
        extra: dict[str, Any]
        if start_seq is not None:
            policy, extra = DeliverPolicy.BY_START_SEQUENCE, {"opt_start_seq": start_seq}
        elif start_time is not None:
            policy, extra = DeliverPolicy.BY_START_TIME, {"opt_start_time": start_time.isoformat()}
        else:
            policy, extra = DeliverPolicy.NEW, {}
        return ConsumerConfig(
            durable_name=self.config.durable_name,
            filter_subjects=SUBJECTS,
            deliver_policy=policy,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=FETCH_BATCH * 4,
            **extra,
        )

    async def _bind(self) -> JetStreamContext.PullSubscription:
        """(Re)create the consumer just past its acknowledgement floor, and bind to it.

        JetStream re-delivers a dead controller's unacknowledged events only after the ack wait, behind newer
        ones: counted in that order, a listener's cap or a vote before its playback would come out differently
        than in an uninterrupted run. Starting again from the floor replays them in stream order instead; every
        tally write is idempotent, so events that were counted but not acknowledged count once.
        """
        stream, name = self.config.bus.stream_name, self.config.durable_name
        start_seq: int | None = None
        try:
            info = await self.js.consumer_info(stream, name)
            start_seq = int(info.ack_floor.stream_seq if info.ack_floor else 0) + 1
            await self.js.delete_consumer(stream, name)
        except nats.js.errors.NotFoundError:
            pass
        start_time = None
        record, _ = await self.store.get()
        if start_seq is None and record is not None and not record.status.finished:
            # a first start with a rollout in flight: every event since it was requested
            start_time = datetime.datetime.fromtimestamp(record.requested_at, datetime.UTC)
        await self.js.add_consumer(stream, config=self.consumer_config(start_seq, start_time))
        return await self.js.pull_subscribe_bind(name, stream)

    async def _consume(self, stop: asyncio.Event) -> None:
        try:
            await self._consume_until(stop)
        finally:
            if self._subscription is not None:  # nats-py hangs in drain() on a pull subscription still bound
                with contextlib.suppress(nats.errors.Error):
                    await self._subscription.unsubscribe()

    async def _consume_until(self, stop: asyncio.Event) -> None:
        subscription = None
        while not stop.is_set():
            try:
                if subscription is None:
                    subscription = self._subscription = await self._bind()
                msgs = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except TimeoutError:
                continue
            except TRANSIENT as e:
                logger.warning("cannot consume events yet (%s: %s); retrying", type(e).__name__, e)
                subscription = None
                await asyncio.sleep(RETRY_WAIT_S)
                continue
            await self.handle(msgs)

    async def handle(self, msgs: list[Msg]) -> None:
        """Feed a batch to the tally in stream order, judge after each counted vote, then ack the batch."""
        async with self.lock:
            record, revision = await self.store.get()
            tally = await self._tally_for(record) if record is not None else None
            for msg in msgs:
                try:
                    event = decode_event(msg.subject, msg.data)
                except InvalidEvent as e:  # the recorder dead-letters it; here it simply is not a vote
                    logger.warning("skipping an undecodable event at stream sequence %s: %s", _sequence(msg), e)
                    continue
                if record is None or tally is None or record.status is not Status.RUNNING:
                    continue
                if await self._absorb(event, record, tally):
                    self.votes_evaluated += 1
                    if await self._judge(record, revision, tally):
                        record, revision = await self.store.get()  # decided: later votes no longer count
            if tally is not None:
                await tally.flush()
            await self._advance_locked()
        for msg in msgs:
            await msg.ack()

    async def _judge(self, record: RolloutRecord, revision: int, tally: Tally) -> bool:
        try:
            return await self.lifecycle.judge(record, revision, tally) is not None
        except Conflict:
            return True  # the record moved on (a manual lever): read it again

    async def _absorb(self, event: object, record: RolloutRecord, tally: Tally) -> bool:
        """Give one event to the tally; True when it was a counted vote."""
        if isinstance(event, events_pb2.ComparisonServed):
            comparison = self._canary_comparison(event, record)
            if comparison is not None:
                await tally.add_comparison(event.comparison_id, comparison)
        elif isinstance(event, events_pb2.Playback):
            await tally.add_playback(
                event.comparison_id, event.user_id, event.clip_id, event.listened_ms, event.completed
            )
        elif isinstance(event, events_pb2.PreferenceSubmitted):
            choice = CHOICES.get(event.choice)
            outcome = await tally.add_preference(event.comparison_id, event.user_id, choice) if choice else None
            if outcome is not None:
                VOTES.labels(outcome).inc()
            return outcome is not None
        return False

    def _canary_comparison(self, event: events_pb2.ComparisonServed, record: RolloutRecord) -> CanaryComparison | None:
        """The comparison, if it pits this rollout's canary against the stable policy after the warm-up."""
        canary, stable = record.canary_endpoint(), record.stable_endpoint()
        served_at = event.header.occurred_at.ToDatetime(tzinfo=datetime.UTC).timestamp()
        if canary is None or stable is None or record.counting_from is None or served_at < record.counting_from:
            return None
        slot = {events_pb2.CANARY_SLOT_A: "a", events_pb2.CANARY_SLOT_B: "b"}.get(event.canary_slot)
        clips = (event.clip_a, event.clip_b)
        canary_clip, stable_clip = (clips[0], clips[1]) if slot == "a" else (clips[1], clips[0])
        if slot is None or _policy_of(canary_clip) != (canary.model_uri, canary.version):
            return None
        if _policy_of(stable_clip) != (stable.model_uri, stable.version):
            return None
        share = self.config.min_listened_share
        return CanaryComparison(
            slot,
            (event.clip_a.clip_id, event.clip_b.clip_id),
            (round(event.clip_a.duration_s * 1000 * share), round(event.clip_b.duration_s * 1000 * share)),
        )

    # --- the record watch and the timer -------------------------------------------------------------------

    async def _watch_record(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                watcher = await self.kv.watch(CURRENT_KEY)
                try:
                    # not `async for`: nats-py's requests can swallow a cancellation (asyncio.wait_for on 3.11),
                    # so the loop looks at `stop` itself and a SIGTERM always ends it
                    while not stop.is_set():
                        try:
                            entry = await watcher.updates(timeout=WATCH_POLL_S)
                        except nats.errors.TimeoutError:
                            continue
                        if entry is not None:
                            await self.advance()
                finally:
                    with contextlib.suppress(nats.errors.Error):
                        await watcher.stop()
            except TRANSIENT as e:
                logger.warning("watching the rollout record failed (%s); retrying", e)
                await asyncio.sleep(RETRY_WAIT_S)

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.config.check_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.check_health()
                await self.advance()
            except TRANSIENT as e:
                logger.warning(
                    "the periodic check failed (%s); trying again in %.0f s", e, self.config.check_interval_s
                )

    async def check_health(self) -> None:
        """Probe a running canary's guardrails; record a failed check on the rollout."""
        async with self.lock:
            record, revision = await self.store.get()
            if record is None or record.status is not Status.RUNNING:
                return
            if record.counting_from is not None and time.time() < record.counting_from:
                return  # warming up
            failing = await self.probe.check(record)
            if failing is None:
                return  # nothing judged yet (too few requests since the rollout began)
            changed = record.guardrails_failing != tuple(failing) or bool(failing)
            if changed:
                updated = dataclasses.replace(
                    record,
                    guardrails_failing=tuple(failing),
                    guardrail_failures=record.guardrail_failures + (1 if failing else 0),
                )
                if failing:
                    logger.warning("rollout %s: guardrails fail: %s", record.id, "; ".join(failing))
                try:
                    await self.store.replace(updated, revision)
                except Conflict:
                    return


def _policy_of(clip: events_pb2.ClipRef) -> tuple[str, str]:
    return clip.policy.model_uri, clip.policy.version


def _sequence(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except (nats.errors.Error, AttributeError):
        return None
