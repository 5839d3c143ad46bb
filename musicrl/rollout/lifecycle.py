"""The steps of a rollout: serve the canary, wait for it to be ready, decide, carry the decision out.

Each step reads the record, does one idempotent thing, and writes the next status by compare-and-set, so a
step interrupted by a crash is simply taken again by the restarted controller. The events it publishes have
ids derived from the rollout and the action: JetStream's duplicate window drops a repeat, and the last rollout
event on the stream is checked before a decision is announced, so each decision is published once.
"""

import dataclasses
import logging
import math
import time
import uuid

import nats.js.errors
from nats.js import JetStreamContext
from prometheus_client import Counter

from musicrl.bus.events import new_header
from musicrl.bus.publisher import EventPublisher
from musicrl.bus.subjects import subject_for
from musicrl.errors import MusicRLError
from musicrl.rollout.config import ControllerConfig
from musicrl.rollout.decision import Action, Decision, decide
from musicrl.rollout.record import RolloutRecord, RolloutStore, Status, Verdict
from musicrl.rollout.routing import RoutingStore, RoutingTable
from musicrl.rollout.tally import Tally
from musicrl.rollout.target import CanarySpec, RolloutTarget
from musicrl.v1 import events_pb2


logger = logging.getLogger(__name__)

_EVENT_IDS = uuid.UUID("6f1d3c1e-8f43-4a57-9d2a-1b0c6a7e5d21")  # namespace of the rollout events' ids
CONTROLLER = "controller"
ACTIONS_TAKEN = Counter(
    "musicrl_rollout_actions_total", "Rollout actions carried out: canary_started, promoted, rolled_back.", ["action"]
)
ACTIONS = {
    Status.STARTING: events_pb2.ROLLOUT_ACTION_CANARY_STARTED,
    Status.PROMOTED: events_pb2.ROLLOUT_ACTION_PROMOTED,
    Status.ROLLED_BACK: events_pb2.ROLLOUT_ACTION_ROLLED_BACK,
}


def event_id(rollout_id: str, what: str) -> str:
    return str(uuid.uuid5(_EVENT_IDS, f"{rollout_id}\x00{what}"))


def verdict_of(decision: Decision, tally: Tally, actor: str = CONTROLLER, reason: str | None = None) -> Verdict:
    """The decision with its evidence in numbers, as recorded and announced."""
    o = tally.outcomes
    evidence = {
        "canary_wins": o["canary"],
        "stable_wins": o["stable"],
        "ties": o["tie"],
        "nones": o["none"],
        "log_e_promote": _finite(decision.log_e_promote),
        "log_e_rollback": _finite(decision.log_e_rollback),
        "win_rate_low": decision.interval[0],
        "win_rate_high": decision.interval[1],
    }
    return Verdict(decision.action.value, reason or decision.reason, actor, evidence, time.time())


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -1e300  # JSON has no -inf; "no evidence at all" reads the same


class Lifecycle:
    """Moves the current rollout on by one step at a time.

    Args:
        config: The controller's settings.
        store: The rollout record.
        routing: The gateway's routing table.
        target: The serving side.
        js: The JetStream context (to check what was announced).
        publisher: Publishes PolicyRollout events.
    """

    def __init__(
        self,
        config: ControllerConfig,
        store: RolloutStore,
        routing: RoutingStore,
        target: RolloutTarget,
        js: JetStreamContext,
        publisher: EventPublisher,
    ) -> None:
        self.config = config
        self.store = store
        self.routing = routing
        self.target = target
        self.js = js
        self.publisher = publisher

    async def step(self, record: RolloutRecord, revision: int, tally: Tally | None) -> RolloutRecord | None:
        """Take the next step; returns the record written (None when there was nothing to do)."""
        if record.status is Status.REQUESTED:
            return await self._start(record, revision)
        if record.status is Status.STARTING:
            return await self._await_ready(record, revision)
        if record.status is Status.RUNNING and tally is not None:
            return await self.judge(record, revision, tally)
        if record.status is Status.DECIDING:
            return await self._carry_out(record, revision)
        return None

    async def _start(self, record: RolloutRecord, revision: int) -> RolloutRecord:
        try:
            await self.target.check_idle()
            stable = (await self.routing.get()).stable
            spec = CanarySpec(
                record.id, record.model_uri, record.version, round(100 * record.canary_share), record.canary_url
            )
            canary = await self.target.start_canary(spec, stable)
        except MusicRLError as e:  # nothing was started: the rollout ends here, and says why
            verdict = Verdict(
                Action.ROLL_BACK.value, f"the canary could not be started: {e}", CONTROLLER, {}, time.time()
            )
            return await self._write(dataclasses.replace(record, status=Status.DECIDING, verdict=verdict), revision)
        started = dataclasses.replace(record, status=Status.STARTING, stable=stable.to_wire(), canary=canary.to_wire())
        logger.info(
            "rollout %s: serving %s (%s) as the canary at %s", record.id, record.version, record.model_uri, canary.url
        )
        return await self._write(started, revision)

    async def _await_ready(self, record: RolloutRecord, revision: int) -> RolloutRecord | None:
        canary, stable = record.canary_endpoint(), record.stable_endpoint()
        assert canary is not None and stable is not None  # STARTING records both
        if record.manual is not None and record.manual.action == Action.ROLL_BACK.value:
            return await self._write(
                dataclasses.replace(record, status=Status.DECIDING, verdict=record.manual), revision
            )
        if not await self.target.canary_ready(canary):
            if time.time() - record.requested_at < self.config.ready_timeout_s:
                return None
            reason = f"the canary did not become ready within {self.config.ready_timeout_s:.0f} s"
            verdict = Verdict(Action.ROLL_BACK.value, reason, CONTROLLER, {}, time.time())
            return await self._write(dataclasses.replace(record, status=Status.DECIDING, verdict=verdict), revision)
        now = time.time()
        running = dataclasses.replace(
            record, status=Status.RUNNING, ready_at=now, counting_from=now + self.config.warmup_s
        )
        # the gateway starts pitting the canary against the stable policy; votes count after the warm-up
        await self.routing.put(RoutingTable(self.target.stable_during_canary(stable), canary, record.canary_share))
        written = await self._write(running, revision)
        await self._announce(running, Status.STARTING, "the canary is ready and takes part in comparisons")
        return written

    async def judge(self, record: RolloutRecord, revision: int, tally: Tally) -> RolloutRecord | None:
        """Apply the decision rule (or a person's lever) to a running rollout."""
        elapsed = time.time() - (record.counting_from or time.time())
        evidence = tally.evidence(
            elapsed_s=max(elapsed, 0.0),
            guardrail_failures=record.guardrail_failures,
            guardrails_failing=record.guardrails_failing,
            promote_crossed=record.promote_crossed,
        )
        decision = decide(evidence, self.config.rule)
        if record.manual is not None:
            manual = record.manual
            verdict = verdict_of(decision, tally, manual.actor, f"{manual.action} by {manual.actor}: {manual.reason}")
            verdict = dataclasses.replace(verdict, action=manual.action)
            return await self._write(dataclasses.replace(record, status=Status.DECIDING, verdict=verdict), revision)
        if decision.action is Action.WAIT:
            if decision.promote_crossed and not record.promote_crossed:  # remembered: the test may stop there
                return await self._write(dataclasses.replace(record, promote_crossed=True), revision)
            return None
        logger.info("rollout %s: %s (%s)", record.id, decision.action.value, decision.reason)
        deciding = dataclasses.replace(
            record,
            status=Status.DECIDING,
            promote_crossed=decision.promote_crossed,
            verdict=verdict_of(decision, tally),
        )
        return await self._write(deciding, revision)

    async def _carry_out(self, record: RolloutRecord, revision: int) -> RolloutRecord:
        verdict = record.verdict
        assert verdict is not None  # DECIDING records one
        canary, stable = record.canary_endpoint(), record.stable_endpoint()
        promote = verdict.action == Action.PROMOTE.value
        if canary is not None and stable is not None:  # else nothing was served: nothing to undo
            if promote:
                await self.routing.put(RoutingTable(await self.target.promote(canary, stable)))
            else:
                await self.routing.put(RoutingTable(stable))  # the gateway stops calling the canary first
                await self.target.rollback(canary, stable)
        final = dataclasses.replace(record, status=Status.PROMOTED if promote else Status.ROLLED_BACK)
        written = await self._write(final, revision)
        await self._announce(final, final.status, verdict.reason)
        logger.info("rollout %s %s: %s", record.id, final.status.value, verdict.reason)
        return written

    async def _write(self, record: RolloutRecord, revision: int) -> RolloutRecord:
        await self.store.replace(record, revision)
        return record

    async def _announce(self, record: RolloutRecord, status: Status, reason: str) -> None:
        """Publish the PolicyRollout event of ``status`` once, however often a restart repeats this step."""
        the_id = event_id(record.id, status.value)
        if await self._last_announced() == the_id:
            return
        ACTIONS_TAKEN.labels("canary_started" if status is Status.STARTING else status.value).inc()
        table = await self.routing.get()
        verdict = record.verdict if status.finished else None
        numbers = dict(verdict.evidence) if verdict else {}
        evidence = events_pb2.RolloutEvidence(
            canary_wins=int(numbers.get("canary_wins", 0)),
            stable_wins=int(numbers.get("stable_wins", 0)),
            ties=int(numbers.get("ties", 0)),
            nones=int(numbers.get("nones", 0)),
            log_e_promote=float(numbers.get("log_e_promote", 0.0)),
            log_e_rollback=float(numbers.get("log_e_rollback", 0.0)),
            win_rate_low=float(numbers.get("win_rate_low", 0.0)),
            win_rate_high=float(numbers.get("win_rate_high", 1.0)),
            guardrail_failures=record.guardrail_failures,
        )
        await self.publisher.publish(
            events_pb2.PolicyRollout(
                header=new_header(the_id),
                action=ACTIONS[status],
                stable_model_uri=table.stable.model_uri,
                canary_model_uri=table.canary.model_uri if table.canary else "",
                canary_percent=100.0 * table.canary_share,
                reason=reason,
                rollout_id=record.id,
                canary_version=record.version,
                actor=verdict.actor if verdict else CONTROLLER,
                evidence=evidence,
            )
        )

    async def _last_announced(self) -> str | None:
        """The event id of the stream's latest PolicyRollout event (None when there is none)."""
        try:
            msg = await self.js.get_last_msg(self.config.bus.stream_name, subject_for(events_pb2.PolicyRollout))
        except nats.js.errors.NotFoundError:
            return None
        return (msg.headers or {}).get("Nats-Msg-Id")
