"""The whole rollout controller with the ``kserve`` target, against a Kubernetes API stand-in and a real nats-server.

The controller runs in this event loop through ``musicrl.rollout.service.control``, as ``python -m services.rollout``
runs it, and finds the stand-in (``tests/utils/kube_standin.py``) as a workstation finds a cluster: through the
kubeconfig that ``KUBECONFIG`` names. The test plays KServe's controller (it writes the InferenceService's status)
and the gateway (it writes the first routing table and publishes what listeners did).

The guardrail probe scrapes ``/metrics`` at the endpoints' in-cluster names, which do not resolve here, so every
periodic check fails and three of them roll the canary back (the last test shows it). The other tests set a timer
longer than they run, so only the votes decide; the controller then takes its next step when an event arrives.
"""

import asyncio
import contextlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from google.protobuf.message import Message
from nats.js import JetStreamContext

from musicrl.bus.connection import connect, ensure_buckets, ensure_streams
from musicrl.bus.events import decode_event, new_header
from musicrl.bus.local_server import LocalNatsServer
from musicrl.bus.publisher import EventPublisher
from musicrl.bus.subjects import subject_for
from musicrl.config import BusConfig
from musicrl.rollout import levers
from musicrl.rollout.config import ControllerConfig
from musicrl.rollout.decision import DecisionRule
from musicrl.rollout.record import RolloutRecord, RolloutStore, Status
from musicrl.rollout.routing import PolicyEndpoint, RoutingStore, RoutingTable
from musicrl.rollout.service import control
from musicrl.rollout.tally import Tally
from musicrl.v1 import events_pb2
from tests.utils.kserve_expectations import (
    BASE_REVISION,
    CANARY_URI,
    MODEL,
    NAME,
    NS,
    STABLE,
    STABLE_URI,
    canary_endpoint,
    canary_name,
    canary_status,
    promote_patch,
    promoted_endpoint,
    rollback_patch,
    stable_during_canary,
    start_patch,
)
from tests.utils.kube_standin import (
    KubeStandIn,
    inference_service,
    isvc_path,
    serverless_predictor_status,
)
from tests.utils.recording_http import Recorded, recording_server
from tests.utils.rollout import CLIP_S, vote_stream


pytestmark = pytest.mark.slow

CANARY_SHARE = 0.1  # of comparisons; the patches carry it as trafficPercent 10
TOKEN = "stand-in-token"
RULE = DecisionRule(min_votes=10, max_votes=500)  # one stream of 120 comparisons decides either way
QUIET_TIMER_S = 3600.0  # no periodic check, hence no guardrail probe, while a test runs
MODES = ["standard", "serverless"]
DECIDED = (Status.PROMOTED, Status.ROLLED_BACK)


# --- the stand-in, reached through a kubeconfig ----------------------------------------------------------------


@dataclass
class Kube:
    """The stand-in and every request it received."""

    stand_in: KubeStandIn
    recorded: list[Recorded]

    def seed(self, mode: str, **spec: Any) -> None:
        """The generator InferenceService as deployed; in Serverless mode, its one revision reported ready."""
        self.stand_in.add(
            inference_service(NS, NAME, "Standard" if mode == "standard" else "Serverless", STABLE_URI, **spec)
        )
        if mode == "serverless":
            self.set_status(serverless_predictor_status(BASE_REVISION, BASE_REVISION, BASE_REVISION))

    def isvc(self) -> dict[str, Any]:
        return self.stand_in.get(NS, NAME)

    def resource_version(self) -> str:
        return str(self.isvc()["metadata"]["resourceVersion"])

    def set_status(self, status: dict[str, Any]) -> None:
        self.stand_in.set_status(NS, NAME, status)

    def patches(self) -> list[Recorded]:
        return [r for r in self.recorded if r.method == "PATCH"]


def kubeconfig(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": server}}],
        "users": [{"name": "controller", "user": {"token": TOKEN}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "controller"}}],
        "current-context": "stand-in",
    }


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    stand_in = KubeStandIn()
    with recording_server(stand_in) as (url, recorded):
        path = tmp_path / "kubeconfig"
        path.write_text(json.dumps(kubeconfig(url)))  # JSON is YAML
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # in a CI pod its own credentials would win
        yield Kube(stand_in, recorded)


def assert_merge_patch(request: Recorded, body: dict[str, Any]) -> None:
    assert (request.method, request.path) == ("PATCH", isvc_path(NS, NAME))
    assert request.headers["content-type"] == "application/merge-patch+json"
    assert request.param("fieldManager") == "musicrl-rollout"
    assert request.json == body


# --- the bus and the controller --------------------------------------------------------------------------------


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalNatsServer]:
    with LocalNatsServer(tmp_path / "jetstream", log_path=tmp_path / "nats.log") as server:
        yield server


@dataclass
class Platform:
    """The bus as the gateway and the levers see it, and the controller running next to them."""

    config: ControllerConfig
    js: JetStreamContext
    bus: levers.Bus
    routing: RoutingStore
    controller: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop_controller(self) -> None:
        """Stop the controller and wait for it: whatever it was announcing is on the stream afterwards."""
        self.stop.set()
        await asyncio.wait_for(self.controller, 30)

    async def wait_status(self, *statuses: Status, timeout_s: float = 30.0) -> RolloutRecord:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.controller.done():
                self.controller.result()  # raises what stopped it
                raise AssertionError("the controller stopped by itself")
            record, _ = await self.bus.store.get()
            if record is not None and record.status in statuses:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"the rollout never reached {statuses}: {record}")
            await asyncio.sleep(0.05)

    async def handled(self, timeout_s: float = 30.0) -> None:
        """Wait until the controller's consumer exists and has acknowledged every event published so far."""
        stream, durable = self.config.bus.stream_name, self.config.durable_name
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info = await self.js.consumer_info(stream, durable)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
            except nats.js.errors.NotFoundError:
                pass  # not bound yet
            if time.monotonic() > deadline:
                raise AssertionError("the controller did not acknowledge the events in time")
            await asyncio.sleep(0.05)

    async def publish(self, events: list[Message]) -> None:
        for event in events:
            await self.bus.publisher.publish(event)

    async def counted(self, rollout_id: str) -> Counter[str]:
        tally = Tally(self.bus.kv, rollout_id, max_votes_per_listener=1 << 30)
        await tally.load()
        return tally.outcomes

    async def rollout_events(self) -> list[events_pb2.PolicyRollout]:
        subscription = await self.js.subscribe(subject_for(events_pb2.PolicyRollout), ordered_consumer=True)
        found: list[events_pb2.PolicyRollout] = []
        try:
            while True:
                msg = await subscription.next_msg(timeout=0.5)
                event = decode_event(msg.subject, msg.data)
                assert isinstance(event, events_pb2.PolicyRollout)
                found.append(event)
        except TimeoutError:
            return found
        finally:
            await subscription.unsubscribe()


@contextlib.asynccontextmanager
async def platform(nats_url: str, mode: str, **settings: Any) -> AsyncIterator[Platform]:
    """The routing table a gateway would have written, and the controller with the ``kserve`` target running."""
    bus_config = BusConfig(nats_url=nats_url)
    defaults: dict[str, Any] = {
        "warmup_s": 0.0,  # the stand-in has no lazy first clips to wait out
        "check_interval_s": QUIET_TIMER_S,
        "ready_timeout_s": 60.0,
        "metrics_port": 0,
    }
    config = ControllerConfig(
        bus=bus_config,
        target="kserve",
        kserve_namespace=NS,
        kserve_inference_service=NAME,
        kserve_mode=mode,
        generator_model_name=MODEL,
        rule=RULE,
        **(defaults | settings),
    )
    client, js = await connect(bus_config, name="test")
    try:
        await ensure_streams(js, bus_config)
        buckets = await ensure_buckets(js, bus_config)
        routing = RoutingStore(buckets["routing"])
        await routing.put(RoutingTable(STABLE))
        bus = levers.Bus(buckets["rollout"], RolloutStore(buckets["rollout"]), EventPublisher(js, bus_config))
        stop = asyncio.Event()
        running = Platform(config, js, bus, routing, asyncio.create_task(control(config, stop)), stop)
        try:
            await running.handled()  # its consumer is bound: it sees every event published from now on
            yield running
        finally:
            await running.stop_controller()
    finally:
        await client.drain()


def stable_vs_stable(stable: PolicyEndpoint) -> events_pb2.ComparisonServed:
    """A comparison the gateway serves without the canary: ordinary traffic, which never counts."""
    clip = events_pb2.ClipRef(
        clip_id="stable-clip",
        policy=events_pb2.PolicyRef(model_uri=stable.model_uri, version=stable.version),
        duration_s=CLIP_S,
    )
    return events_pb2.ComparisonServed(
        header=new_header(),
        comparison_id="stable-vs-stable",
        prompt="warm rain on a tin roof",
        clip_a=clip,
        clip_b=clip,
        user_id="listener-0",
        canary_slot=events_pb2.CANARY_SLOT_NONE,
    )


@dataclass(frozen=True)
class Running:
    """A rollout the controller reached RUNNING with, and the object's resourceVersion from then on."""

    record: RolloutRecord
    canary_name: str
    resource_version: str


async def start_until_running(p: Platform, kube: Kube, mode: str) -> Running:
    """Start a rollout with the lever; check the start patch, that nothing counts before the canary is ready, and
    the routing table once it is."""
    rv = kube.resource_version()
    requested = await levers.start(p.bus, CANARY_URI, "v4", CANARY_SHARE, "test")
    starting = await p.wait_status(Status.STARTING)
    name = canary_name(requested)
    (start,) = kube.patches()
    assert_merge_patch(start, start_patch(mode, rv, name))
    canary, stable = starting.canary_endpoint(), starting.stable_endpoint()
    assert canary == canary_endpoint(mode, name) and stable == STABLE

    kube.set_status(canary_status(mode, name, ready=False))  # KServe reconciled the patch; the pods are starting
    reads_before = sum(r.method == "GET" for r in kube.recorded)
    early = vote_stream(stable, canary, comparisons=40, canary_win_rate=0.9, seed=1)
    assert sum(early.expected.values()) > 0  # they would count, were the canary ready
    await p.publish(early.events)
    await p.handled()
    record, _ = await p.bus.store.get()
    assert record is not None and record.status is Status.STARTING
    assert sum(r.method == "GET" for r in kube.recorded) > reads_before  # it looked, and saw it not ready
    assert sum((await p.counted(requested.id)).values()) == 0
    assert await p.routing.get() == RoutingTable(STABLE)  # the gateway does not call a canary that is not ready

    kube.set_status(canary_status(mode, name, ready=True))
    rv_ready = kube.resource_version()
    await p.publish([stable_vs_stable(STABLE)])  # the timer is off: the gateway's next event makes it look again
    running = await p.wait_status(Status.RUNNING)
    assert running.counting_from is not None and running.counting_from <= time.time()
    table = await p.routing.get()
    assert table == RoutingTable(stable_during_canary(mode), canary_endpoint(mode, name), CANARY_SHARE)
    assert [r.method for r in kube.recorded].count("PATCH") == 1  # readiness is read, never written
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kube.recorded)  # the kubeconfig's
    return Running(running, name, rv_ready)


def only(events: list[events_pb2.PolicyRollout], action: int) -> events_pb2.PolicyRollout:
    found = [e for e in events if e.action == action]
    assert len(found) == 1, found
    return found[0]


# --- the tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_listeners_who_prefer_the_canary_get_it_promoted_on_the_inference_service(
    nats_server: LocalNatsServer, kube: Kube, mode: str
) -> None:
    kube.seed(mode)

    async def scenario() -> tuple[Running, RolloutRecord, RoutingTable, Counter[str], list[events_pb2.PolicyRollout]]:
        async with platform(nats_server.url, mode) as p:
            running = await start_until_running(p, kube, mode)
            canary, stable = running.record.canary_endpoint(), running.record.stable_endpoint()
            assert canary is not None and stable is not None
            await p.publish(vote_stream(stable, canary, comparisons=120, canary_win_rate=0.9, seed=2).events)
            final = await p.wait_status(*DECIDED)
            await p.stop_controller()
            return running, final, await p.routing.get(), await p.counted(final.id), await p.rollout_events()

    running, final, table, counted, events = asyncio.run(scenario())
    assert final.status is Status.PROMOTED and final.verdict is not None, final
    assert final.verdict.actor == "controller" and "listeners prefer the canary" in final.verdict.reason
    start, promote = kube.patches()
    assert_merge_patch(promote, promote_patch(mode, running.resource_version, running.canary_name))
    predictor = kube.isvc()["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == CANARY_URI and predictor["maxReplicas"] == 3
    if mode == "standard":
        assert kube.isvc()["spec"]["canary"] == [] and predictor["name"] == running.canary_name
    else:
        assert "canaryTrafficPercent" not in predictor
    assert table == RoutingTable(promoted_endpoint(mode, running.canary_name))
    promoted = only(events, events_pb2.ROLLOUT_ACTION_PROMOTED)
    assert promoted.rollout_id == final.id and promoted.actor == "controller"
    assert (promoted.stable_model_uri, promoted.canary_model_uri) == (CANARY_URI, "")
    evidence = final.verdict.evidence
    # the votes up to the decision, and none after it (nor the ones cast before the canary was ready)
    assert (promoted.evidence.canary_wins, promoted.evidence.stable_wins) == (counted["canary"], counted["stable"])
    assert (evidence["canary_wins"], evidence["stable_wins"]) == (counted["canary"], counted["stable"])
    assert counted["canary"] + counted["stable"] >= RULE.min_votes
    assert promoted.evidence.log_e_promote >= -math.log(RULE.alpha)
    started = only(events, events_pb2.ROLLOUT_ACTION_CANARY_STARTED)
    assert started.canary_model_uri == CANARY_URI and started.canary_percent == pytest.approx(10.0)


@pytest.mark.parametrize("mode", MODES)
def test_listeners_who_prefer_the_stable_policy_get_the_canary_rolled_back_on_the_inference_service(
    nats_server: LocalNatsServer, kube: Kube, mode: str
) -> None:
    kube.seed(mode)
    deployed = kube.isvc()["spec"]

    async def scenario() -> tuple[Running, RolloutRecord, RoutingTable, list[events_pb2.PolicyRollout]]:
        async with platform(nats_server.url, mode) as p:
            running = await start_until_running(p, kube, mode)
            canary, stable = running.record.canary_endpoint(), running.record.stable_endpoint()
            assert canary is not None and stable is not None
            await p.publish(vote_stream(stable, canary, comparisons=120, canary_win_rate=0.1, seed=3).events)
            final = await p.wait_status(*DECIDED)
            await p.stop_controller()
            return running, final, await p.routing.get(), await p.rollout_events()

    running, final, table, events = asyncio.run(scenario())
    assert final.status is Status.ROLLED_BACK and final.verdict is not None, final
    assert "listeners prefer the stable policy" in final.verdict.reason
    _start, rollback = kube.patches()
    assert_merge_patch(rollback, rollback_patch(mode, running.resource_version))
    spec = kube.isvc()["spec"]
    if mode == "standard":
        assert spec == deployed | {"canary": []}
    else:
        assert spec["predictor"]["model"] == deployed["predictor"]["model"]  # the stable model is back in the spec
        assert spec["predictor"]["canaryTrafficPercent"] == 0  # all traffic pinned to the revision before the canary
    assert table == RoutingTable(STABLE)
    rolled_back = only(events, events_pb2.ROLLOUT_ACTION_ROLLED_BACK)
    assert rolled_back.rollout_id == final.id and rolled_back.stable_model_uri == STABLE_URI
    assert rolled_back.evidence.stable_wins > rolled_back.evidence.canary_wins
    assert rolled_back.evidence.log_e_rollback >= -math.log(RULE.beta)


IN_FLIGHT = {
    "standard": (
        {
            "canary": [
                {
                    "trafficPercent": 5,
                    "predictor": {
                        "name": "v9",
                        "model": {"modelFormat": {"name": "musicgen"}, "storageUri": "s3://models/policy/v9"},
                    },
                }
            ]
        },
        "already runs the canary 'v9' in spec.canary",
    ),
    "serverless": ({}, "already splits traffic to a canary revision (spec.predictor.canaryTrafficPercent=30"),
}


@pytest.mark.parametrize("mode", MODES)
def test_a_canary_already_in_flight_on_the_inference_service_ends_the_rollout_before_any_patch(
    nats_server: LocalNatsServer, kube: Kube, mode: str
) -> None:
    spec, busy = IN_FLIGHT[mode]
    kube.seed(mode, **spec)
    if mode == "serverless":  # someone else's canary: a traffic split this controller did not start
        kube.stand_in.edit(NS, NAME, lambda obj: obj["spec"]["predictor"].update(canaryTrafficPercent=30))
    deployed = kube.isvc()["spec"]

    async def scenario() -> tuple[RolloutRecord, RoutingTable, list[events_pb2.PolicyRollout]]:
        async with platform(nats_server.url, mode) as p:
            await levers.start(p.bus, CANARY_URI, "v4", CANARY_SHARE, "test")
            final = await p.wait_status(*DECIDED)
            await p.stop_controller()
            return final, await p.routing.get(), await p.rollout_events()

    final, table, events = asyncio.run(scenario())
    assert final.status is Status.ROLLED_BACK and final.verdict is not None, final
    assert final.verdict.reason.startswith(f"the canary could not be started: InferenceService {NS}/{NAME} {busy}"), (
        final.verdict.reason
    )
    assert "KServe issue 2130" in final.verdict.reason
    assert final.canary is None and final.stable is None  # nothing was served, so nothing was undone
    assert [r.method for r in kube.recorded] == ["GET"]  # check_idle read the object; no patch followed
    assert kube.isvc()["spec"] == deployed
    assert table == RoutingTable(STABLE)
    assert only(events, events_pb2.ROLLOUT_ACTION_ROLLED_BACK).reason == final.verdict.reason
    assert not [e for e in events if e.action == events_pb2.ROLLOUT_ACTION_CANARY_STARTED]


@pytest.mark.parametrize("mode", MODES)
def test_the_guardrail_probe_cannot_read_in_cluster_metrics_here_and_three_failed_checks_roll_back(
    nats_server: LocalNatsServer, kube: Kube, mode: str
) -> None:
    """What the other tests avoid with their quiet timer: the probe's failure path, end to end."""
    kube.seed(mode)

    async def scenario() -> tuple[RolloutRecord, str, RoutingTable, list[events_pb2.PolicyRollout]]:
        async with platform(nats_server.url, mode, check_interval_s=0.2) as p:
            requested = await levers.start(p.bus, CANARY_URI, "v4", CANARY_SHARE, "test")
            await p.wait_status(Status.STARTING)
            kube.set_status(canary_status(mode, canary_name(requested), ready=True))
            rv = kube.resource_version()
            final = await p.wait_status(*DECIDED)  # the timer sees it ready, then probes it
            await p.stop_controller()
            return final, rv, await p.routing.get(), await p.rollout_events()

    final, rv, table, events = asyncio.run(scenario())
    assert final.status is Status.ROLLED_BACK and final.verdict is not None, final
    canary = final.canary_endpoint()
    assert canary is not None
    pattern = (
        rf"guardrails failed {RULE.failure_limit} times \(the generators' metrics cannot be read: "
        rf"the metrics page http://{re.escape(canary.url)}/metrics is unreachable"
    )
    assert re.match(pattern, final.verdict.reason), final.verdict.reason
    assert final.guardrail_failures == RULE.failure_limit
    _start, rollback = kube.patches()
    assert_merge_patch(rollback, rollback_patch(mode, rv))
    assert table == RoutingTable(STABLE)
    assert only(events, events_pb2.ROLLOUT_ACTION_ROLLED_BACK).evidence.guardrail_failures == RULE.failure_limit
