"""The rollout controller against a real nats-server and a real generator: counting, deciding, restarts, levers."""

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import prometheus_client
import pytest

from musicrl.bus.connection import connect, ensure_buckets, ensure_streams
from musicrl.bus.events import decode_event
from musicrl.bus.local_server import LocalNatsServer
from musicrl.bus.publisher import EventPublisher
from musicrl.bus.subjects import subject_for
from musicrl.config import BusConfig
from musicrl.errors import Conflict, InvalidRequest
from musicrl.rollout import levers
from musicrl.rollout.config import ControllerConfig, LocalTargetConfig
from musicrl.rollout.decision import Action, DecisionRule
from musicrl.rollout.record import RolloutRecord, Status
from musicrl.rollout.routing import PolicyEndpoint, RoutingStore, RoutingTable
from musicrl.rollout.service import control
from musicrl.rollout.tally import Tally
from musicrl.v1 import events_pb2
from tests.utils.processes import ServiceProcess, free_port, model_server
from tests.utils.rollout import ControllerProcess, vote_stream


pytestmark = pytest.mark.slow

DECIDED = (Status.PROMOTED, Status.ROLLED_BACK)


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One real tiny generator; the stable and the canary endpoints both point at it (their labels differ)."""
    with model_server(
        "services.generator",
        {"MUSICRL_MODEL_URI": "tiny://musicgen?seed=0"},
        tmp_path_factory.mktemp("gen"),
        "generator",
    ) as service:
        yield service


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalNatsServer]:
    with LocalNatsServer(tmp_path / "jetstream", log_path=tmp_path / "nats.log") as server:
        yield server


def endpoints(generator: ServiceProcess) -> tuple[PolicyEndpoint, PolicyEndpoint]:
    stable = PolicyEndpoint(generator.http_url, "generator", "tiny://musicgen?seed=0", "v1")
    canary = PolicyEndpoint(generator.http_url, "generator", "tiny://musicgen?seed=1", "v2")
    return stable, canary


@contextlib.asynccontextmanager
async def opened_bus(nats_url: str, stable: PolicyEndpoint) -> AsyncIterator[levers.Bus]:
    """The levers' view of the bus, with the routing table a gateway would have written."""
    async with levers.open_bus(BusConfig(nats_url=nats_url), name="test") as bus:
        await routing_store(nats_url, lambda store: store.put(RoutingTable(stable)))
        yield bus


async def routing_store(nats_url: str, use):  # type: ignore[no-untyped-def]
    config = BusConfig(nats_url=nats_url)
    client, js = await connect(config, name="test-routing")
    try:
        return await use(RoutingStore((await ensure_buckets(js, config))["routing"]))
    finally:
        await client.drain()


async def wait_status(bus: levers.Bus, statuses: tuple[Status, ...], timeout_s: float = 60) -> RolloutRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record, _ = await bus.store.get()
        if record is not None and record.status in statuses:
            return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"the rollout never reached {statuses}: {record}")


async def rollout_events(nats_url: str) -> list[events_pb2.PolicyRollout]:
    config = BusConfig(nats_url=nats_url)
    client, js = await connect(config, name="test-read")
    try:
        subscription = await js.subscribe(subject_for(events_pb2.PolicyRollout), ordered_consumer=True)
        found = []
        while True:
            try:
                msg = await subscription.next_msg(timeout=1.0)
            except TimeoutError:
                break
            found.append(decode_event(msg.subject, msg.data))
        await subscription.unsubscribe()
        return found  # type: ignore[return-value]
    finally:
        await client.drain()


async def publish_all(nats_url: str, events: list) -> None:
    config = BusConfig(nats_url=nats_url)
    client, js = await connect(config, name="test-publish")
    try:
        await ensure_streams(js, config)
        publisher = EventPublisher(js, config)
        for event in events:
            await publisher.publish(event)
    finally:
        await client.drain()


async def counted_votes(bus: levers.Bus, rollout_id: str) -> Counter[str]:
    tally = Tally(bus.kv, rollout_id, max_votes_per_listener=1 << 30)
    await tally.load()
    return tally.outcomes


def controller(nats_server: LocalNatsServer, tmp_path: Path, **settings: str) -> ControllerProcess:
    fast = {"MUSICRL_WARMUP_S": "0", "MUSICRL_CHECK_INTERVAL_S": "0.5", "MUSICRL_READY_TIMEOUT_S": "30"}
    return ControllerProcess(nats_server.url, tmp_path / "state", **{**fast, **settings})


def test_killed_mid_rollout_and_restarted_counts_what_an_uninterrupted_run_counts(
    nats_server: LocalNatsServer, generator: ServiceProcess, tmp_path: Path
) -> None:
    stable, canary = endpoints(generator)
    planned = vote_stream(stable, canary, comparisons=160, canary_win_rate=0.8, cap=12, seed=3)
    votes = sum(planned.expected.values())  # every counted vote, ties and "neither" included
    wins = planned.expected["canary"] + planned.expected["stable"]
    assert planned.ignored["over the listener's cap"] > 0 and planned.ignored["repeated"] > 0  # the faults are there
    # promotion waits for the last counted win: every counted vote is in by then, interrupted or not
    (tmp_path / "state").mkdir()
    process = controller(
        nats_server,
        tmp_path,
        MUSICRL_MIN_VOTES=str(wins),
        MUSICRL_MAX_VOTES=str(wins + 1000),
        MUSICRL_MAX_VOTES_PER_LISTENER="12",
    )

    async def scenario() -> tuple[RolloutRecord, RolloutRecord, Counter[str], int]:
        async with opened_bus(nats_server.url, stable) as bus:
            process.start()
            record = await levers.start(bus, canary.model_uri, canary.version, 1.0, "test", canary_url=canary.url)
            await wait_status(bus, (Status.RUNNING,))
            # the same stream, served now: comparisons served before the canary was ready do not count
            stream = vote_stream(stable, canary, comparisons=160, canary_win_rate=0.8, cap=12, seed=3)
            half = len(stream.events) // 2
            await publish_all(nats_server.url, stream.events[:half])
            deadline = time.monotonic() + 30
            while sum((await counted_votes(bus, record.id)).values()) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            process.kill()  # mid-stream: some events counted, some fetched but not acknowledged, some not yet read
            counted_before_kill = sum((await counted_votes(bus, record.id)).values())
            await publish_all(nats_server.url, stream.events[half:])
            process.start()
            final = await wait_status(bus, DECIDED, timeout_s=60)
            return record, final, await counted_votes(bus, record.id), counted_before_kill

    try:
        record, final, counted, counted_before_kill = asyncio.run(scenario())
    finally:
        process.stop()
    assert 0 < counted_before_kill < votes
    assert final.status is Status.PROMOTED, process.logs()
    assert counted == planned.expected
    announced = asyncio.run(rollout_events(nats_server.url))
    decisions = [e for e in announced if e.action == events_pb2.ROLLOUT_ACTION_PROMOTED]
    assert len(decisions) == 1
    started = [e for e in announced if e.action == events_pb2.ROLLOUT_ACTION_CANARY_STARTED]
    assert len(started) == 1
    (decision,) = decisions
    assert decision.rollout_id == record.id and decision.actor == "controller"
    evidence = decision.evidence
    assert (evidence.canary_wins, evidence.stable_wins) == (planned.expected["canary"], planned.expected["stable"])
    assert evidence.log_e_promote >= -math.log(0.05)
    routing = asyncio.run(routing_store(nats_server.url, lambda store: store.get()))
    assert routing.canary is None and routing.stable.model_uri == canary.model_uri


@contextlib.asynccontextmanager
async def running_controller(nats_url: str, tmp_path: Path, **overrides) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    """The controller in this event loop (the levers' tests need no process to kill)."""
    settings = {"warmup_s": 0.0, "check_interval_s": 0.3, "ready_timeout_s": 30.0, "metrics_port": 0, **overrides}
    config = ControllerConfig(
        bus=BusConfig(nats_url=nats_url), local=LocalTargetConfig(state_dir=str(tmp_path / "state")), **settings
    )
    stop = asyncio.Event()
    task = asyncio.create_task(control(config, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_a_worse_canary_is_rolled_back_and_the_stable_policy_serves_everything_again(
    nats_server: LocalNatsServer, generator: ServiceProcess, tmp_path: Path
) -> None:
    stable, canary = endpoints(generator)

    async def scenario() -> tuple[RolloutRecord, RoutingTable]:
        async with opened_bus(nats_server.url, stable) as bus, running_controller(nats_server.url, tmp_path):
            await levers.start(bus, canary.model_uri, canary.version, 0.5, "test", canary_url=canary.url)
            await wait_status(bus, (Status.RUNNING,))
            table = await routing_store(nats_server.url, lambda store: store.get())
            assert table.canary == canary and table.canary_share == 0.5  # comparisons now include the canary
            stream = vote_stream(stable, canary, comparisons=120, canary_win_rate=0.2, seed=4)
            await publish_all(nats_server.url, stream.events)
            final = await wait_status(bus, DECIDED)
            return final, await routing_store(nats_server.url, lambda store: store.get())

    def rolled_back_count() -> float:
        return (
            prometheus_client.REGISTRY.get_sample_value("musicrl_rollout_actions_total", {"action": "rolled_back"})
            or 0
        )

    before = rolled_back_count()
    final, table = asyncio.run(scenario())
    assert rolled_back_count() == before + 1  # what the chart's MusicRLCanaryRolledBack alert watches
    assert final.status is Status.ROLLED_BACK and final.verdict is not None
    assert "listeners prefer the stable policy" in final.verdict.reason
    assert table == RoutingTable(stable)
    (rolled_back,) = [
        e for e in asyncio.run(rollout_events(nats_server.url)) if e.action == events_pb2.ROLLOUT_ACTION_ROLLED_BACK
    ]
    assert rolled_back.evidence.stable_wins > rolled_back.evidence.canary_wins
    assert rolled_back.evidence.log_e_rollback >= -math.log(0.05)


def test_a_second_rollout_is_refused_while_one_is_in_flight_and_a_person_can_promote_with_a_reason(
    nats_server: LocalNatsServer, generator: ServiceProcess, tmp_path: Path
) -> None:
    stable, canary = endpoints(generator)

    async def scenario() -> RolloutRecord:
        async with opened_bus(nats_server.url, stable) as bus, running_controller(nats_server.url, tmp_path):
            await levers.start(bus, canary.model_uri, canary.version, 0.5, "test", canary_url=canary.url)
            with pytest.raises(Conflict, match="promote or roll it back before starting another"):
                await levers.start(bus, "tiny://musicgen?seed=2", "v3", 0.5, "test", canary_url=canary.url)
            with pytest.raises(InvalidRequest, match="--by"):
                await levers.pull(bus, Action.PROMOTE, "ops", "  ")
            await wait_status(bus, (Status.RUNNING,))
            # no vote yet: the rule says wait, never promote
            _record, _tally, decision = await levers.analyse(bus, DecisionRule())
            assert decision.action is Action.WAIT
            await levers.pull(bus, Action.PROMOTE, "ops on call", "the listening panel approved it")
            return await wait_status(bus, DECIDED)

    final = asyncio.run(scenario())
    assert final.status is Status.PROMOTED and final.verdict is not None
    assert final.verdict.actor == "ops on call"
    assert "the listening panel approved it" in final.verdict.reason
    (promoted,) = [
        e for e in asyncio.run(rollout_events(nats_server.url)) if e.action == events_pb2.ROLLOUT_ACTION_PROMOTED
    ]
    assert promoted.actor == "ops on call"
    table = asyncio.run(routing_store(nats_server.url, lambda store: store.get()))
    assert table.stable.model_uri == canary.model_uri and table.canary is None


def test_a_canary_that_never_becomes_ready_is_rolled_back_and_never_enters_the_routing_table(
    nats_server: LocalNatsServer, generator: ServiceProcess, tmp_path: Path
) -> None:
    stable, _canary = endpoints(generator)
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def scenario() -> RolloutRecord:
        async with (
            opened_bus(nats_server.url, stable) as bus,
            running_controller(nats_server.url, tmp_path, ready_timeout_s=1.0),
        ):
            await levers.start(bus, "tiny://musicgen?seed=9", "v9", 0.5, "test", canary_url=closed)
            return await wait_status(bus, DECIDED)

    final = asyncio.run(scenario())
    assert final.status is Status.ROLLED_BACK and final.verdict is not None
    assert "did not become ready within 1 s" in final.verdict.reason
    assert asyncio.run(routing_store(nats_server.url, lambda store: store.get())) == RoutingTable(stable)


@pytest.mark.parametrize("share", [-0.1, 1.5, math.nan])
def test_a_canary_share_outside_0_to_1_is_refused_with_a_sentence(share: float) -> None:
    with pytest.raises(InvalidRequest, match="between 0 and 1"):
        RolloutRecord.new("tiny://musicgen?seed=1", "v2", share, "test")


def test_comparisons_served_during_the_warm_up_do_not_count(
    nats_server: LocalNatsServer, generator: ServiceProcess, tmp_path: Path
) -> None:
    stable, canary = endpoints(generator)

    async def scenario() -> tuple[RolloutRecord, Counter[str], Counter[str]]:
        async with (
            opened_bus(nats_server.url, stable) as bus,
            running_controller(nats_server.url, tmp_path, warmup_s=3.0),
        ):
            started = await levers.start(bus, canary.model_uri, canary.version, 1.0, "test", canary_url=canary.url)
            record = await wait_status(bus, (Status.RUNNING,))
            early = vote_stream(stable, canary, comparisons=20, canary_win_rate=0.9, seed=5)
            await publish_all(nats_server.url, early.events)
            assert record.counting_from is not None
            await asyncio.sleep(max(0.0, record.counting_from - time.time()) + 0.1)
            late = vote_stream(stable, canary, comparisons=20, canary_win_rate=0.9, seed=6)
            await publish_all(nats_server.url, late.events)
            deadline = time.monotonic() + 20
            while (counted := await counted_votes(bus, started.id)) != late.expected and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return record, counted, late.expected

    record, counted, expected = asyncio.run(scenario())
    assert record.counting_from is not None and record.ready_at is not None
    assert record.counting_from - record.ready_at == pytest.approx(3.0)
    assert counted == expected  # the warm-up's votes, though heard and valid, are not among them


def test_an_undecodable_event_is_skipped_and_the_votes_after_it_count(
    nats_server: LocalNatsServer, generator: ServiceProcess, tmp_path: Path
) -> None:
    stable, canary = endpoints(generator)

    async def scenario() -> tuple[Counter[str], Counter[str]]:
        async with opened_bus(nats_server.url, stable) as bus, running_controller(nats_server.url, tmp_path):
            started = await levers.start(bus, canary.model_uri, canary.version, 1.0, "test", canary_url=canary.url)
            await wait_status(bus, (Status.RUNNING,))
            client, js = await connect(BusConfig(nats_url=nats_server.url), name="test-garbage")
            await js.publish(
                subject_for(events_pb2.PreferenceSubmitted), b"\xff not protobuf", headers={"Nats-Msg-Id": "x"}
            )
            await client.drain()
            stream = vote_stream(stable, canary, comparisons=20, canary_win_rate=0.7, seed=8)
            await publish_all(nats_server.url, stream.events)
            deadline = time.monotonic() + 20
            while (counted := await counted_votes(bus, started.id)) != stream.expected and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return counted, stream.expected

    counted, expected = asyncio.run(scenario())
    assert counted == expected and sum(expected.values()) > 0
