"""Rollout decisions: the mixture SPRT against a naive peeking z-test, and the controller against raw JetStream.

Part 1 (statistics, no NATS) simulates rollouts with :mod:`musicrl.rollout.simulate` under listeners of a known
win rate: how often each test promotes and how many votes it needs. The baseline is the fixed-horizon z-test
peeked at after every vote, on the same simulated votes; its false-promotion rate at p = 0.5 is printed as a
multiple of the α it claims.

Part 2 runs a real nats-server and the controller in this process (``musicrl.rollout.service.control``, local
target, adopting a canary URL), fed by a synthetic stream of comparisons, playbacks and votes. Both baselines are
measured in the same run on the same server:

* votes/s: the controller's counted votes and events per second, from the first publish until the ``rollout``
  bucket holds every counted vote, against the raw rate at which ``EventPublisher`` gets the same events
  acknowledged (one acknowledged publish per event, as the gateway does; the fastest of one-by-one and
  concurrent chunks). The publisher and the controller share this process's event loop.
* decision latency: from the publish of the deciding vote until the ``routing`` bucket's table changes, against
  a raw KV put until its watch notification.

The canary and stable "generators" are one loopback HTTP stand-in that answers readiness and an empty Prometheus
page so the controller can start and probe a canary; it generates nothing.

    python bench/rollout_decisions.py [--events 3000] [--rollouts 5] [--quick]
"""

import argparse
import asyncio
import contextlib
import http.server
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message
from nats.js.kv import KeyValue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tqdm import tqdm


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vote_streams import comparison_events, vote_stream  # noqa: E402  (bench/ is on sys.path: the script's folder)

from musicrl.bus.connection import connect, ensure_buckets, ensure_streams  # noqa: E402
from musicrl.bus.events import new_header  # noqa: E402
from musicrl.bus.local_server import LocalNatsServer  # noqa: E402
from musicrl.bus.publisher import EventPublisher  # noqa: E402
from musicrl.config import BusConfig  # noqa: E402
from musicrl.rollout import levers  # noqa: E402
from musicrl.rollout.config import ControllerConfig, LocalTargetConfig  # noqa: E402
from musicrl.rollout.decision import Action, DecisionRule  # noqa: E402
from musicrl.rollout.record import RolloutRecord, RolloutStore, Status  # noqa: E402
from musicrl.rollout.routing import ROUTING_KEY, PolicyEndpoint, RoutingStore, RoutingTable  # noqa: E402
from musicrl.rollout.service import control  # noqa: E402
from musicrl.rollout.simulate import simulate, simulate_naive_z_test  # noqa: E402
from musicrl.rollout.tally import Tally, listener_key  # noqa: E402
from musicrl.v1 import events_pb2  # noqa: E402


RULE = DecisionRule(alpha=0.05, beta=0.05, min_votes=50, max_votes=2000)
WIN_RATES = (0.5, 0.55, 0.6, 0.65)
MODEL = "generator"
PUBLISH_CHUNKS = (1, 64, 256)  # 1: one awaited publish after another; else that many in flight at once
BASELINE_ROUNDS = 2  # each way of publishing is tried this often and its best round counts (a shared machine)
DECIDING_MIN_VOTES = 10  # all-canary votes reach 1/α = 20 at the 7th vote: the 10th decides
WAIT_S = 60.0  # anything slower than this is a hang, not a measurement
STOP_S = 5.0  # the controller stops in milliseconds when its loops end on cancellation
SLOW_STOPS: list[str] = []  # controllers that had not stopped STOP_S after stop was set (reported at the end)


# --- part 1: the statistics ---------------------------------------------------------------------------------


def statistics_part(runs: int) -> tuple[float, float]:
    """Print the table of both tests per win rate; returns each one's false-promotion rate over α (SPRT, naive)."""
    rows = []
    for p in tqdm(WIN_RATES, desc="simulating rollouts", leave=False):
        sprt, naive = simulate(p, RULE, runs, seed=1), simulate_naive_z_test(p, RULE, runs, seed=1)
        rows.append((p, sprt, naive))
    print(f"Part 1: {runs} simulated rollouts per win rate, alpha = beta = {RULE.alpha}, ", end="")
    print(f"min_votes = {RULE.min_votes}, max_votes = {RULE.max_votes}, the rule looked at after every vote\n")
    print("               mixture SPRT               naive z-test (peeked, baseline)")
    print("   p     promoted  median votes       promoted  median votes")
    for p, sprt, naive in rows:
        print(
            f"  {p:4.2f}   {sprt.share(Action.PROMOTE):8.1%}  {sprt.median_votes():12.0f}       "
            f"{naive.share(Action.PROMOTE):8.1%}  {naive.median_votes():12.0f}"
        )
    false_sprt, false_naive = rows[0][1].share(Action.PROMOTE), rows[0][2].share(Action.PROMOTE)
    error = (RULE.alpha * (1 - RULE.alpha) / runs) ** 0.5  # binomial standard error of a share of runs near alpha
    print(f"\nfalse promotions at p = 0.5 (standard error about {error:.1%} at {runs} runs): ", end="")
    print(f"SPRT {false_sprt:.1%} ({false_sprt / RULE.alpha:.2f} x alpha), ", end="")
    print(f"naive z-test {false_naive:.1%} ({false_naive / RULE.alpha:.2f} x alpha)\n")
    return false_sprt / RULE.alpha, false_naive / RULE.alpha


# --- the stand-in canary, the controller, and waiting on the buckets --------------------------------------------


class StandIn(http.server.BaseHTTPRequestHandler):
    """Readiness (``/v2/models/<model>/ready``) and an empty Prometheus page (``/metrics``): nothing else."""

    def do_GET(self) -> None:
        if self.path == f"/v2/models/{MODEL}/ready":
            self._answer(json.dumps({"name": MODEL, "ready": True}).encode(), "application/json")
        elif self.path == "/metrics":
            self._answer(generate_latest(CollectorRegistry()), CONTENT_TYPE_LATEST)
        else:
            self.send_error(404)

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per probe would bury the bench's output


@contextlib.contextmanager
def stand_in_generator() -> Iterator[str]:
    """The stand-in on a free loopback port, in a thread; yields its ``host:port``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.asynccontextmanager
async def running_controller(
    nats_url: str, state_dir: Path, rule: DecisionRule, part: str
) -> AsyncIterator[asyncio.Task]:
    """The controller in this event loop, as ``musicrl serve rollout`` runs it, with no warm-up."""
    config = ControllerConfig(
        bus=BusConfig(nats_url=nats_url),
        rule=rule,
        local=LocalTargetConfig(state_dir=str(state_dir)),
        warmup_s=0.0,  # votes count at once: the bench's comparisons are served after the canary is ready
        max_votes_per_listener=1 << 30,  # out of reach: the stream's expected count applies no cap
        metrics_port=0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(control(config, stop))
    try:
        yield task
    finally:
        stop.set()
        done, _ = await asyncio.wait([task], timeout=STOP_S)
        if not done:  # a loop that lost its cancellation keeps waiting: note it, and cancel it again
            SLOW_STOPS.append(part)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_status(bus: levers.Bus, controller: asyncio.Task, rollout_id: str, *statuses: Status) -> RolloutRecord:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if controller.done():
            controller.result()  # a crashed controller raises here
            raise RuntimeError("the controller stopped")
        record, _ = await bus.store.get()
        if record is not None and record.id == rollout_id and record.status in statuses:
            return record
        await asyncio.sleep(0.005)
    raise TimeoutError(f"rollout {rollout_id} did not reach {statuses} within {WAIT_S:.0f} s")


async def start_rollout(bus: levers.Bus, controller: asyncio.Task, canary_url: str, index: int) -> RolloutRecord:
    """A rollout of version ``v<index + 2>`` adopting the stand-in; returns its record once it is running."""
    record = await levers.start(
        bus, f"tiny://musicgen?seed={index + 1}", f"v{index + 2}", 1.0, "bench", canary_url=canary_url
    )
    return await wait_status(bus, controller, record.id, Status.RUNNING)


def endpoints(record: RolloutRecord) -> tuple[PolicyEndpoint, PolicyEndpoint]:
    stable, canary = record.stable_endpoint(), record.canary_endpoint()
    if stable is None or canary is None:
        raise RuntimeError(f"rollout {record.id} is running without both endpoints")
    return stable, canary


@contextlib.asynccontextmanager
async def watching(kv: KeyValue, keys: str) -> AsyncIterator[KeyValue.KeyWatcher]:
    """A watch of ``keys`` in ``kv`` (their current values first, then None, then every change)."""
    watcher = await kv.watch(keys, ignore_deletes=True)
    try:
        yield watcher
    finally:
        await watcher.stop()


async def count_entries(
    watcher: KeyValue.KeyWatcher, count: int, progress: tqdm | None = None, accept: bytes | None = None
) -> float:
    """Wait for ``count`` entries (of value ``accept``, if given); returns when (perf_counter) the last came."""
    seen = 0
    while seen < count:
        try:
            entry = await watcher.updates(timeout=WAIT_S)
        except TimeoutError as e:
            raise TimeoutError(f"{seen} of {count} entries, then none for {WAIT_S:.0f} s") from e
        if entry is None or (accept is not None and entry.value != accept):
            continue
        seen += 1
        if progress is not None:
            progress.update()
    return time.perf_counter()


# --- part 2: throughput ----------------------------------------------------------------------------------------


async def publish_all(publisher: EventPublisher, events: list[Message], chunk: int) -> None:
    """Each event acknowledged; ``chunk`` publishes in flight at a time, written in order on one connection."""
    for start in range(0, len(events), chunk):
        batch = events[start : start + chunk]
        if chunk == 1:
            await publisher.publish(batch[0])
        else:
            await asyncio.gather(*(publisher.publish(event) for event in batch))


async def raw_publish_rates(
    publisher: EventPublisher, stable: PolicyEndpoint, canary: PolicyEndpoint, events: int
) -> dict[int, float]:
    """Best events/s at which JetStream acknowledges the same kind of events, no consumer, by publishes in flight."""
    rates = dict.fromkeys(PUBLISH_CHUNKS, 0.0)
    tries = [(round_, chunk) for round_ in range(BASELINE_ROUNDS) for chunk in PUBLISH_CHUNKS]
    for round_, chunk in tqdm(tries, desc="raw publish baseline", leave=False):
        stream = vote_stream(stable, canary, events, win_rate=0.6, seed=1 + round_ * 1000 + chunk)  # fresh ids
        started = time.perf_counter()
        await publish_all(publisher, stream.events, chunk)
        rates[chunk] = max(rates[chunk], len(stream.events) / (time.perf_counter() - started))
    return rates


@dataclass(frozen=True, slots=True)
class Throughput:
    events: int
    votes: int
    elapsed_s: float
    published_s: float

    @property
    def votes_per_s(self) -> float:
        return self.votes / self.elapsed_s

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s


async def controller_throughput(
    bus: levers.Bus, nats_url: str, state: Path, url: str, events: int, chunk: int
) -> Throughput:
    """Publish ``events`` into a running rollout that never decides; time until every counted vote is stored."""
    never = DecisionRule(alpha=RULE.alpha, beta=RULE.beta, min_votes=10**9, max_votes=10**9)
    async with running_controller(nats_url, state, never, "throughput") as controller:
        record = await start_rollout(bus, controller, url, 0)
        stable, canary = endpoints(record)
        stream = vote_stream(stable, canary, events, win_rate=0.6, seed=0)  # served now: after counting_from
        votes = sum(stream.expected.values())
        with tqdm(total=votes, desc="votes counted by the controller", leave=False) as progress:
            async with watching(bus.kv, f"r.{record.id}.vote.>") as watcher:
                counted = asyncio.create_task(count_entries(watcher, votes, progress))
                started = time.perf_counter()
                await publish_all(bus.publisher, stream.events, chunk)
                published = time.perf_counter()
                done = await counted
        tally = Tally(bus.kv, record.id, max_votes_per_listener=1 << 30)
        await tally.load()
        if tally.outcomes != stream.expected:
            raise RuntimeError(f"the controller counted {dict(tally.outcomes)}, expected {dict(stream.expected)}")
        await levers.pull(bus, Action.ROLL_BACK, "bench", "throughput measured")
        await wait_status(bus, controller, record.id, Status.ROLLED_BACK)
    return Throughput(len(stream.events), votes, done - started, published - started)


# --- part 2: decision latency ----------------------------------------------------------------------------------


async def kv_watch_latency(kv: KeyValue, samples: int) -> list[float]:
    """Seconds from a KV put (awaited, as the controller's are) until a watcher of the key is told of it."""
    latencies = []
    async with watching(kv, "bench.probe") as watcher:
        await watcher.updates(timeout=WAIT_S)  # the "nothing stored yet" marker
        for index in range(samples):
            started = time.perf_counter()
            await kv.put("bench.probe", str(index).encode())
            await watcher.updates(timeout=WAIT_S)
            latencies.append(time.perf_counter() - started)
    return latencies


async def routing_changed(watcher: KeyValue.KeyWatcher) -> float:
    """When (perf_counter) the watched routing table is next written."""
    await watcher.updates(timeout=WAIT_S)
    return time.perf_counter()


async def one_decision(bus: levers.Bus, routing: KeyValue, controller: asyncio.Task, url: str, index: int) -> float:
    """Seconds from publishing the vote that decides a rollout until the routing table changes."""
    record = await start_rollout(bus, controller, url, index)
    stable, canary = endpoints(record)
    rng = random.Random(index)
    for n in range(DECIDING_MIN_VOTES):  # every one a canary win, each from its own listener, in order
        user = f"listener-{index}-{n}"
        comparison_id, served = comparison_events(stable, canary, "a", user, rng, heard=True)
        vote = events_pb2.PreferenceSubmitted(
            header=new_header(), comparison_id=comparison_id, choice=events_pb2.CHOICE_A, user_id=user
        )
        await publish_all(bus.publisher, served if n == DECIDING_MIN_VOTES - 1 else [*served, vote], 1)
    # the deciding vote alone: the earlier votes counted, its comparison and playbacks stored, the watch in place
    async with watching(bus.kv, f"r.{record.id}.vote.>") as watcher:
        await count_entries(watcher, DECIDING_MIN_VOTES - 1)
    heard = f"r.{record.id}.heard.{comparison_id}.{listener_key(user)}"
    async with watching(bus.kv, heard) as watcher:
        await count_entries(watcher, 1, accept=json.dumps([True, True]).encode())
    async with watching(routing, ROUTING_KEY) as watcher:
        while await watcher.updates(timeout=WAIT_S) is not None:  # the current table, then the end marker
            pass
        changed = asyncio.create_task(routing_changed(watcher))
        started = time.perf_counter()
        await bus.publisher.publish(vote)
        latency = await changed - started
    await wait_status(bus, controller, record.id, Status.PROMOTED)
    return latency


async def decision_latencies(
    bus: levers.Bus, routing: KeyValue, nats_url: str, state: Path, url: str, rollouts: int
) -> list[float]:
    rule = DecisionRule(alpha=RULE.alpha, beta=RULE.beta, min_votes=DECIDING_MIN_VOTES, max_votes=RULE.max_votes)
    async with running_controller(nats_url, state, rule, "decision latency") as controller:
        return [
            await one_decision(bus, routing, controller, url, index)
            for index in tqdm(range(1, rollouts + 1), desc="rollouts decided", leave=False)
        ]


# --- the run ---------------------------------------------------------------------------------------------------


async def controller_part(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    with LocalNatsServer(tmp / "jetstream", log_path=tmp / "nats.log") as server, stand_in_generator() as url:
        config = BusConfig(nats_url=server.url)
        client, js = await connect(config, "bench")
        try:
            await ensure_streams(js, config)
            buckets = await ensure_buckets(js, config)
            bus = levers.Bus(buckets["rollout"], RolloutStore(buckets["rollout"]), EventPublisher(js, config))
            stable = PolicyEndpoint(url, MODEL, "tiny://musicgen?seed=0", "v1")
            await RoutingStore(buckets["routing"]).put(RoutingTable(stable))  # what the gateway writes at start
            probe = PolicyEndpoint(url, MODEL, "tiny://musicgen?seed=1", "v2")
            rates = await raw_publish_rates(bus.publisher, stable, probe, args.events)
            chunk = max(rates, key=rates.__getitem__)  # the controller is fed as fast as the bus takes events
            done = await controller_throughput(bus, server.url, tmp / "state", url, args.events, chunk)
            kv = await kv_watch_latency(buckets["routing"], args.kv_samples)
            decisions = await decision_latencies(
                bus, buckets["routing"], server.url, tmp / "state", url, args.rollouts
            )
        finally:
            await client.drain()
    return report_controller(rates, done, kv, decisions)


def report_controller(
    rates: dict[int, float], done: Throughput, kv: list[float], decisions: list[float]
) -> dict[str, float]:
    chunk = max(rates, key=rates.__getitem__)
    raw = rates[chunk]
    how = "one by one" if chunk == 1 else f"{chunk} in flight"
    tried = ", ".join(f"{'one by one' if c == 1 else f'{c} in flight'} {r:.0f}" for c, r in rates.items())
    print("Part 2: real nats-server, the controller in this process (local target; the canary is a loopback")
    print("stand-in that answers readiness and an empty metrics page, for readiness only; it generates nothing)\n")
    print(f"raw EventPublisher -> JetStream (baseline, best: {how}): {raw:8.0f} events/s")
    print(f"  (tried, events/s: {tried}; the controller is fed {how})")
    ratio = done.events_per_s / raw
    print(
        f"controller, {done.events} events -> {done.votes} counted votes: {done.events_per_s:8.0f} events/s  "
        f"{done.votes_per_s:6.0f} votes/s  ratio {ratio:.3f}"
    )
    print(f"  (publishing took {done.published_s:.2f} s of the {done.elapsed_s:.2f} s until the last vote was stored)")
    kv_ms, decide_ms = 1000 * statistics.median(kv), 1000 * statistics.median(decisions)
    print(f"\nraw KV put -> watch notification (baseline, median of {len(kv)}): {kv_ms:7.2f} ms")
    each = ", ".join(f"{1000 * s:.1f}" for s in decisions)
    print(f"deciding vote published -> routing table changed (median of {len(decisions)}): {decide_ms:7.2f} ms")
    print(f"  (each rollout, ms: {each}; ratio to the raw KV notification {decide_ms / kv_ms:.1f})\n")
    for part in SLOW_STOPS:
        print(f"note: the {part} controller had not stopped {STOP_S:.0f} s after stop was set; cancelled again\n")
    return {"throughput": ratio, "latency": decide_ms / kv_ms, "votes_per_s": done.votes_per_s, "decide_ms": decide_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=3000, help="events fed to the controller (and the baseline)")
    parser.add_argument("--rollouts", type=int, default=5, help="rollouts decided for the latency")
    parser.add_argument("--quick", action="store_true", help="fewer simulations, events and rollouts (a smoke run)")
    args = parser.parse_args()
    runs = 2000
    args.kv_samples = 50
    if args.quick:
        runs, args.events, args.rollouts, args.kv_samples = 300, min(args.events, 800), min(args.rollouts, 2), 20
    sprt, naive = statistics_part(runs)
    with tempfile.TemporaryDirectory() as tmp:
        part2 = asyncio.run(controller_part(args, Path(tmp)))
    print("Summary")
    print(f"  false promotions at p = 0.5 / alpha: naive peeked z-test {naive:.2f}, mixture SPRT {sprt:.2f}")
    print(f"  controller events/s / raw JetStream publish events/s: {part2['throughput']:.3f}", end="")
    print(f" ({part2['votes_per_s']:.0f} counted votes/s)")
    print(
        f"  decision latency / raw KV put -> watch notification: {part2['latency']:.1f} ({part2['decide_ms']:.1f} ms)"
    )


if __name__ == "__main__":
    main()
