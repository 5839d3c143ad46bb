"""Preferences per second end to end (REST → NATS → Parquet) and POST latency, against raw JetStream.

The baseline is nats-py publishing the same events straight to JetStream (one ``Nats-Msg-Id`` each,
waiting for every acknowledgement) with the same number of concurrent publishers, measured in the same
run on the same nats-server. The ratio says how much of the bus's speed the gateway keeps once it adds
authentication, rate limiting, idempotency, comparison lookups and HTTP.

The same clients also run against ``bench/http_floor.py``, the preference route with no work behind it,
to show how much of the machine the web framework and the load generator take before the gateway does
anything.

With ``--replicas N`` the clients are spread over N gateway processes, the way a Kubernetes Service spreads
connections over the gateway's pods (each pod runs one event loop).

    python bench/feedback_throughput.py [--preferences 3000] [--concurrency 16] [--replicas 1]
"""

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicrl.bus.connection import connect  # noqa: E402
from musicrl.bus.events import new_header  # noqa: E402
from musicrl.config import BusConfig  # noqa: E402
from musicrl.v1 import events_pb2  # noqa: E402
from tests.utils.platform import running_platform  # noqa: E402
from tests.utils.processes import free_port, stop_process  # noqa: E402
from tests.utils.recorder import RecorderProcess  # noqa: E402
from tests.utils.snapshots import wait_until_recorded  # noqa: E402


COMPARISONS = 20


async def raw_publish_rate(nats_url: str, count: int, concurrency: int) -> float:
    """Events per second that nats-py alone gets acknowledged by JetStream."""
    client, js = await connect(BusConfig(nats_url=nats_url), "bench-raw")
    payloads = [
        events_pb2.PreferenceSubmitted(
            header=new_header(), comparison_id="c" * 36, choice=events_pb2.CHOICE_A, user_id="u" * 32
        )
        for _ in range(count)
    ]
    queue: asyncio.Queue[events_pb2.PreferenceSubmitted] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)

    async def worker() -> None:
        while not queue.empty():
            event = queue.get_nowait()
            # the same subject and headers as the gateway, outside the platform's stream subjects' consumers
            await js.publish(
                "musicrl.v1.preference_submitted",
                event.SerializeToString(),
                headers={"Nats-Msg-Id": event.header.event_id},
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return count / elapsed


async def post_preferences(
    urls: list[str], headers, comparisons: list[dict], count: int, concurrency: int
) -> tuple[list[float], list[str], float]:
    """POST ``count`` preferences with ``concurrency`` clients spread over ``urls``.

    Returns:
        Latencies (s), event ids, wall time (s).
    """
    latencies: list[float] = []
    event_ids: list[str] = []
    indices: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        indices.put_nowait(index)

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        while not indices.empty():
            index = indices.get_nowait()
            comparison = comparisons[index % len(comparisons)]
            body = {"choice": "ab"[index % 2], "listener_id": f"bench-{index}"}
            request_headers = headers(**{"Idempotency-Key": f"bench-{index}"})
            started = time.perf_counter()
            async with session.post(
                f"{url}/v1/comparisons/{comparison['id']}/preference", json=body, headers=request_headers
            ) as reply:
                data = await reply.json()
                if reply.status != 201:
                    raise RuntimeError(f"{reply.status}: {data}")
            latencies.append(time.perf_counter() - started)
            event_ids.append(data["event_id"])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, urls[i % len(urls)]) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, event_ids, elapsed


async def make_comparisons(platform) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        comparisons = []
        for index in range(COMPARISONS):
            async with session.post(
                f"{platform.url}/v1/comparisons", json={"prompt": f"bench prompt {index}"}, headers=platform.headers()
            ) as reply:
                comparisons.append(await reply.json())
        return comparisons


@contextlib.contextmanager
def framework_floor() -> Iterator[str]:
    """Serve ``bench/http_floor.py`` with uvicorn as the gateway is served; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent), "http_floor:app"]
    options = ["--port", str(port), "--no-access-log", "--log-level", "warning", "--http", "httptools"]
    process = subprocess.Popen([*command, *options, "--loop", "uvloop"])
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_wait_until_up(url))
        yield url
    finally:
        stop_process(process, timeout_s=10)


async def _wait_until_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/docs"):
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the framework floor did not start at {url}")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preferences", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1, help="gateway processes the clients are spread over")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_platform(Path(tmp) / "platform", gateway_replicas=args.replicas) as platform,
    ):
        recorder = RecorderProcess(platform.nats.url, platform.dataset_dir, Path(tmp), MUSICRL_BATCH_MAX_WAIT_S="0.5")
        recorder.start()
        try:
            comparisons = asyncio.run(make_comparisons(platform))
            raw = asyncio.run(raw_publish_rate(platform.nats.url, args.preferences, args.concurrency))
            started = time.perf_counter()
            latencies, event_ids, post_s = asyncio.run(
                post_preferences(platform.urls, platform.headers, comparisons, args.preferences, args.concurrency)
            )
            wait_until_recorded(platform.dataset_dir, set(event_ids), timeout_s=300)
            end_to_end_s = time.perf_counter() - started
        finally:
            recorder.close()
    with framework_floor() as url:
        _, _, floor_s = asyncio.run(post_preferences([url], dict, comparisons, args.preferences, args.concurrency))
    accepted_rate = args.preferences / post_s
    gateways = "one gateway process" if args.replicas == 1 else f"{args.replicas} gateway processes"
    print(f"{args.preferences} preferences, {args.concurrency} concurrent clients, {gateways}, 2 cores\n")
    print(f"raw nats-py JetStream publish (baseline): {raw:8.0f} events/s")
    ratio = accepted_rate / raw
    print(f"gateway POST /preference (accepted, 2xx): {accepted_rate:8.0f} preferences/s  ratio {ratio:.3f}")
    floor_rate = args.preferences / floor_s
    print(
        f"the same route doing nothing (framework floor): {floor_rate:8.0f} requests/s     "
        f"gateway / floor {accepted_rate / floor_rate:.3f}"
    )
    print(f"end to end (REST -> NATS -> Parquet):     {args.preferences / end_to_end_s:8.0f} preferences/s")
    print(
        f"POST latency: p50 {1000 * percentile(latencies, 50):.1f} ms, p99 {1000 * percentile(latencies, 99):.1f} ms"
    )


if __name__ == "__main__":
    main()
