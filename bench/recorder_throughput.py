"""Events per second the recorder drains from a backlog into Parquet, against draining it without writing.

A backlog of preference events is published to JetStream first. The baseline is nats-py alone draining a copy
of that backlog the way the recorder fetches it: a durable pull consumer with the recorder's batch size,
acknowledging every message, and nothing else. It runs in the same run on the same nats-server, so the ratio
says how much of the bus's own drain speed the recorder keeps once it decodes, sorts, writes Parquet durably
and acknowledges.

The recorder's rate is taken between its first and its last batch written (read from its metrics), so its
start-up does not count.

    python bench/recorder_throughput.py [--events 30000] [--batch 1000]
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.feedback_throughput import raw_publish_rate  # noqa: E402
from musicrl.bus.connection import connect, ensure_streams  # noqa: E402
from musicrl.bus.local_server import LocalNatsServer  # noqa: E402
from musicrl.config import BusConfig  # noqa: E402
from tests.utils.recorder import RecorderProcess  # noqa: E402


WRITTEN = "musicrl_recorder_events_written_total"


async def drain_rate(bus: BusConfig, count: int, batch: int) -> float:
    """Messages per second a bare durable pull consumer fetches and acknowledges, ``batch`` per fetch."""
    client, js = await connect(bus, "bench-drain")
    config = ConsumerConfig(
        durable_name="bench-drain", ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        filter_subject="musicrl.v1.>", max_ack_pending=2 * batch,
    )  # fmt: skip
    subscription = await js.pull_subscribe(
        "musicrl.v1.>", durable="bench-drain", stream=bus.stream_name, config=config
    )
    drained = 0
    started = time.perf_counter()
    while drained < count:
        msgs = await subscription.fetch(min(batch, count - drained), timeout=10)
        await asyncio.gather(*(m.ack() for m in msgs))
        drained += len(msgs)
    elapsed = time.perf_counter() - started
    await client.close()
    return count / elapsed


def written(recorder: RecorderProcess) -> float:
    text = recorder.metrics() or ""
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(WRITTEN + "{"))


def recorder_rate(recorder: RecorderProcess, count: int, timeout_s: float = 600) -> float:
    """Events per second between the recorder's first batch written and the one that completes ``count``."""
    recorder.start()
    deadline = time.monotonic() + timeout_s
    first: tuple[float, float] | None = None
    while time.monotonic() < deadline:
        done = written(recorder)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done)
        if done >= count:
            assert first is not None
            return (done - first[1]) / (now - first[0])
        time.sleep(0.02)
    raise TimeoutError(f"the recorder wrote {written(recorder):.0f} of {count} events in {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=1000, help="the recorder's batch_max_events, and the baseline's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        nats = LocalNatsServer(Path(tmp) / "nats").start()
        try:
            bus = BusConfig(nats_url=nats.url)

            async def provision() -> None:
                client, js = await connect(bus, "bench-provision")
                await ensure_streams(js, bus)
                await client.close()

            asyncio.run(provision())
            asyncio.run(raw_publish_rate(nats.url, args.events, 16))
            baseline = asyncio.run(drain_rate(bus, args.events, args.batch))
            recorder = RecorderProcess(
                nats.url, Path(tmp) / "dataset", Path(tmp), MUSICRL_BATCH_MAX_EVENTS=str(args.batch)
            )
            try:
                rate = recorder_rate(recorder, args.events)
            finally:
                recorder.close()
        finally:
            nats.stop()
    print(f"a backlog of {args.events} preference events, batches of {args.batch}, 2 cores\n")
    print(f"bare pull consumer, fetch and ack (baseline): {baseline:8.0f} events/s")
    print(f"recorder, to durable Parquet:                 {rate:8.0f} events/s  ratio {rate / baseline:.3f}")


if __name__ == "__main__":
    main()
