"""The rollout's levers for people and pipelines: start, promote, roll back, wait for the decision, analyse.

They change the rollout record (by compare-and-set) and leave the acting to the controller, the one writer of
the routing table and the InferenceService: a lever pulled while the controller is restarting takes effect
when it is back, and two levers can never act at once.
"""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import fsspec
from nats.js.kv import KeyValue

from musicrl.bus.connection import connect, ensure_buckets, ensure_streams
from musicrl.bus.events import new_header
from musicrl.bus.publisher import EventPublisher
from musicrl.config import BusConfig
from musicrl.errors import Conflict, IncompatibleModel, InvalidRequest, ModelNotFound, NotFound
from musicrl.models.resolver import resolve_local_dir
from musicrl.models.uri import ModelURI, Scheme
from musicrl.rollout.decision import Action, Decision, DecisionRule, decide
from musicrl.rollout.record import RolloutRecord, RolloutStore, Status, Verdict
from musicrl.rollout.routing import PolicyEndpoint, RoutingStore
from musicrl.rollout.tally import Tally
from musicrl.v1 import events_pb2


POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class Bus:
    """What a lever needs from NATS."""

    kv: KeyValue
    store: RolloutStore
    publisher: EventPublisher


@asynccontextmanager
async def open_bus(config: BusConfig, name: str = "rollout-cli") -> AsyncIterator[Bus]:
    client, js = await connect(config, name=name)
    try:
        await ensure_streams(js, config)
        buckets = await ensure_buckets(js, config)
        yield Bus(buckets["rollout"], RolloutStore(buckets["rollout"]), EventPublisher(js, config))
    finally:
        await client.drain()


async def serving_policy(config: BusConfig, name: str = "rollout-cli") -> PolicyEndpoint:
    """The stable policy the platform serves now: the routing table's, which the controller moves on a promotion.

    Raises:
        NotFound: The bus holds no routing table yet (no gateway has started on it).
    """
    client, js = await connect(config, name=name)
    try:
        buckets = await ensure_buckets(js, config)
        return (await RoutingStore(buckets["routing"]).get()).stable
    finally:
        await client.drain()


def check_checkpoint(model_uri: str) -> None:
    """Refuse a checkpoint that cannot load, cheaply: the URI parses and its folder holds a MusicGen config.

    The canary's readiness (its model loaded) is the full check; this one answers at once for a typo.

    Raises:
        InvalidRequest: A malformed URI.
        ModelNotFound: Nothing at the URI.
        IncompatibleModel: A folder that holds another kind of model.
    """
    uri = ModelURI.parse(model_uri)
    if uri.scheme is Scheme.TINY or uri.scheme is Scheme.HF:
        return  # built in memory / fetched by the generator from the hub: nothing to look at here
    if uri.scheme in (Scheme.LOCAL, Scheme.TOY):
        config_path = str(resolve_local_dir(uri) / "config.json")
    else:
        config_path = uri.raw.rstrip("/") + "/config.json"
    try:
        with fsspec.open(config_path, "rb") as f:
            text = f.read().decode()
    except FileNotFoundError as e:
        raise ModelNotFound(f"{model_uri} holds no config.json: it is not a save_pretrained checkpoint") from e
    if '"musicgen"' not in text:
        raise IncompatibleModel(f"{model_uri} is not a MusicGen checkpoint (its config.json names another model)")


async def start(
    bus: Bus, model_uri: str, version: str, canary_share: float, requested_by: str, canary_url: str = ""
) -> RolloutRecord:
    """Ask the controller to serve ``model_uri`` as the canary; announce the request.

    Raises:
        InvalidRequest: A share outside [0, 1].
        Conflict: A rollout is in flight.
    """
    record = RolloutRecord.new(model_uri, version, canary_share, requested_by, canary_url)
    await bus.store.begin(record)
    await bus.publisher.publish(
        events_pb2.PolicyRollout(
            header=new_header(),
            action=events_pb2.ROLLOUT_ACTION_CANARY_REQUESTED,
            canary_model_uri=model_uri,
            canary_percent=100.0 * canary_share,
            reason=f"{version} requested as the canary by {requested_by}",
            rollout_id=record.id,
            canary_version=version,
            actor=requested_by,
        )
    )
    return record


async def pull(bus: Bus, action: Action, actor: str, reason: str) -> RolloutRecord:
    """A person's promote or rollback of the current rollout, for the controller to carry out.

    Raises:
        InvalidRequest: No actor or no reason (a lever pulled by hand is recorded with who and why).
        Conflict: No rollout in flight, or one that cannot take this lever now.
    """
    if not actor.strip() or not reason.strip():
        raise InvalidRequest("a promote or rollback by hand needs --by (who) and --reason (why)")
    for _ in range(10):  # the controller may write the record at the same moment: read and try again
        record, revision = await bus.store.get()
        _check_lever(record, action)
        assert record is not None
        lever = Verdict(action.value, reason, actor, {}, time.time())
        if record.status is Status.REQUESTED:  # nothing is served yet: the rollout just ends
            changed = dataclasses.replace(record, status=Status.DECIDING, verdict=lever)
        else:
            changed = dataclasses.replace(record, manual=lever)
        try:
            await bus.store.replace(changed, revision)
            return changed
        except Conflict:
            await asyncio.sleep(POLL_S)
    raise Conflict("the rollout record kept changing; try again", retry_after_s=1.0)


def _check_lever(record: RolloutRecord | None, action: Action) -> None:
    if record is None or record.status.finished:
        raise Conflict("no rollout is in flight")
    if record.status is Status.DECIDING:
        raise Conflict(
            f"rollout {record.id} is already being decided: {record.verdict.reason if record.verdict else ''}"
        )
    if action is Action.PROMOTE and record.status is not Status.RUNNING:
        raise Conflict(f"rollout {record.id} is {record.status.value}: only a canary that is serving can be promoted")


async def wait_until(bus: Bus, rollout_id: str, done: tuple[Status, ...], timeout_s: float) -> RolloutRecord:
    """The record once it reaches one of ``done``, or as it stands when ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        record, _ = await bus.store.get()
        if record is None or record.id != rollout_id:
            raise NotFound(f"rollout {rollout_id} is no longer the current one")
        if record.status in done or time.monotonic() >= deadline:
            return record
        await asyncio.sleep(POLL_S)


async def analyse(bus: Bus, rule: DecisionRule) -> tuple[RolloutRecord, Tally, Decision]:
    """The current (or last) rollout's evidence and what the rule makes of it now.

    Raises:
        NotFound: No rollout was ever started.
    """
    record, _ = await bus.store.get()
    if record is None:
        raise NotFound("no rollout has been started yet")
    tally = Tally(bus.kv, record.id, max_votes_per_listener=1 << 30)  # caps were applied when votes were counted
    await tally.load()
    elapsed = time.time() - record.counting_from if record.counting_from else 0.0
    evidence = tally.evidence(
        elapsed_s=max(elapsed, 0.0),
        guardrail_failures=record.guardrail_failures,
        guardrails_failing=record.guardrails_failing,
        promote_crossed=record.promote_crossed,
    )
    return record, tally, decide(evidence, rule)
