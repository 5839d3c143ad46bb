"""The recorder: a durable JetStream pull consumer that writes events in batches to Parquet.

Delivery is at least once, on purpose. A batch is acknowledged only after every one of its Parquet files
is durable (see ``musicrl.data.dataset``). A crash before the acknowledgement makes JetStream re-deliver
the batch after ``ack_wait_s`` (a few seconds, so a restarted recorder soon catches up); if the crash came
after the write, the batch is written a second time: the dataset may hold duplicate rows, which every
reader (the snapshot) drops by ``event_id``. What the recorder never does is acknowledge an event that is
not on disk. While a batch is being written, in-progress acks renew its ack wait, so a write slower than
``ack_wait_s`` is not re-delivered (to another replica) while it is still running.

Undecodable messages (garbage bytes, an unknown kind, an invalid header) are published, bytes unchanged,
to ``musicrl.dlq.v1.<kind>`` with the reason in the ``Musicrl-Dlq-Reason`` header and the message id
``dlq-<stream sequence>`` (a re-delivery does not add a second dead letter), and acknowledged only once the
dead-letter stream has stored them.

The connection reconnects forever (``musicrl.bus.connection.connect``); while the server is away a fetch
times out and the loop tries again. SIGTERM or SIGINT finishes the batch in hand (write and ack), removes
the pull subscription (nats-py's ``drain()`` waits 30 s on a live one) and drains the connection.
"""

import asyncio
import contextlib
import datetime
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Sequence

import nats.errors
import nats.js.errors
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import start_http_server

from musicrl.bus.connection import connect, ensure_streams
from musicrl.bus.publisher import RETRIABLE, EventPublisher
from musicrl.bus.subjects import SUBJECT_PREFIX, dlq_subject_for
from musicrl.errors import BusUnavailable, InvalidRequest
from musicrl.recorder import metrics
from musicrl.recorder.batch import Batch, DeadLetter, sort_batch, stream_sequence, write_batch
from musicrl.recorder.config import RecorderConfig


logger = logging.getLogger(__name__)

MIN_FETCH_S = 0.05  # a shorter pull request would expire before the server answers it
RETRY_WAIT_S = 1.0  # pause after the server refused a request (restarting, no JetStream leader yet)
NAK_DELAY_S = 5.0  # re-delivery delay of a batch whose write failed, so a broken store is not hammered
MAX_HEADER_CHARS = 1000  # NATS headers are one line each; long decode errors are cut
# What a fetch or a consumer request raises while the server restarts or the consumer is being recreated.
TRANSIENT = (*RETRIABLE, nats.js.errors.APIError, nats.errors.SlowConsumerError)


class Recorder:
    """Consumes the event stream with a durable pull consumer and writes it to the dataset.

    Args:
        config: Dataset URL, batching, the consumer's name and the bus.
        js: The JetStream context of a connected client.
    """

    def __init__(self, config: RecorderConfig, js: JetStreamContext) -> None:
        self.config = config
        self.js = js
        self.publisher = EventPublisher(js, config.bus)
        self.subscription: JetStreamContext.PullSubscription | None = None

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer: explicit acks, every event from the stream's start, two batches in flight."""
        return ConsumerConfig(
            name=self.config.durable_name,
            durable_name=self.config.durable_name,
            deliver_policy=DeliverPolicy.ALL,  # a fresh recorder backfills everything the stream still holds
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.config.ack_wait_s,
            max_ack_pending=self.config.max_ack_pending,
            filter_subject=f"{SUBJECT_PREFIX}.>",
        )

    async def subscribe(self) -> None:
        """Create (or update) the streams and the durable consumer, then bind a pull subscription to it."""
        await self.unsubscribe()
        await ensure_streams(self.js, self.config.bus)
        # add_consumer creates the consumer or updates its settings (so a consumer left with an older, longer
        # ack wait takes the new one); pull_subscribe would mutate our config.
        await self.js.add_consumer(self.config.bus.stream_name, config=self.consumer_config())
        self.subscription = await self.js.pull_subscribe_bind(
            durable=self.config.durable_name, stream=self.config.bus.stream_name
        )
        logger.info(
            "consuming %s.> from stream %s as %s into %s (ack wait %.1f s)",
            SUBJECT_PREFIX,
            self.config.bus.stream_name,
            self.config.durable_name,
            self.config.dataset_url,
            self.config.ack_wait_s,
        )

    async def unsubscribe(self) -> None:
        """Remove the pull subscription (the durable consumer stays on the server)."""
        subscription, self.subscription = self.subscription, None
        if subscription is None:
            return
        try:
            await subscription.unsubscribe()
        except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError) as e:
            logger.debug("pull subscription already gone: %s", e)

    async def run(self, stop: asyncio.Event) -> None:
        """Record batches until ``stop`` is set; the batch in hand when it is set is still written and acked.

        Args:
            stop: Set it to stop after the current batch.

        Raises:
            InvalidRequest: The durable consumer exists with settings that cannot be changed to ours.
        """
        while not stop.is_set():
            if self.subscription is None:
                try:
                    await self.subscribe()
                except nats.js.errors.BadRequestError as e:  # retrying cannot help: the settings conflict
                    raise InvalidRequest(
                        f"the consumer {self.config.durable_name!r} on stream {self.config.bus.stream_name} refuses "
                        f"these settings ({e}); delete the consumer or choose another durable_name"
                    ) from e
                except TRANSIENT as e:
                    logger.warning("cannot set up the consumer yet (%s: %s); retrying", type(e).__name__, e)
                    await _sleep_unless(stop, RETRY_WAIT_S)
                    continue
            msgs = await self.collect(stop)
            if msgs:
                await self.process(msgs)
            await self.refresh_lag()

    async def collect(self, stop: asyncio.Event) -> list[Msg]:
        """Fetch until ``batch_max_events`` messages are in hand or ``batch_max_wait_s`` has passed.

        Args:
            stop: When set, return what has been fetched so far.

        Returns:
            The fetched messages (possibly none).
        """
        assert self.subscription is not None  # run() subscribes first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.batch_max_wait_s
        msgs: list[Msg] = []
        while len(msgs) < self.config.batch_max_events and not stop.is_set():
            remaining = deadline - loop.time()
            if remaining < MIN_FETCH_S:
                break
            try:
                msgs += await self.subscription.fetch(self.config.batch_max_events - len(msgs), timeout=remaining)
            except TimeoutError:  # nothing arrived in time, or the server is away; the deadline ends the loop
                continue
            except nats.js.errors.APIError as e:  # e.g. the consumer was deleted: set it up again
                logger.warning("fetch refused (%s); setting up the consumer again", e)
                self.subscription = None
                break
            except TRANSIENT as e:
                logger.warning("fetch failed (%s: %s); retrying", type(e).__name__, e)
                await _sleep_unless(stop, min(RETRY_WAIT_S, max(remaining, 0)))
        return msgs

    async def process(self, msgs: list[Msg]) -> None:
        """Write the valid events of ``msgs`` and ack them; dead-letter the others and ack those."""
        batch = sort_batch(msgs, datetime.datetime.now(datetime.UTC))
        if batch.recorded:
            # Renewals stop before the ack or nak below, so none is sent for a settled message.
            async with _kept_in_progress(msgs, self.config.progress_interval_s):
                written = await self.write(batch)
            if written:
                await _ack_all(batch.recorded)
                metrics.LAST_WRITE.set(time.time())
            else:
                await asyncio.gather(*(_settle(m, m.nak(delay=NAK_DELAY_S)) for m in batch.recorded))
        for dead in batch.dead:
            await self.dead_letter(dead)

    async def write(self, batch: Batch) -> bool:
        """Write the batch's files durably (in a worker thread).

        Args:
            batch: The sorted batch.

        Returns:
            True once every file is durable; False if a write failed (the caller naks the batch).
        """
        started = time.monotonic()
        try:
            written = await asyncio.to_thread(write_batch, self.config.dataset_url, batch)
        except OSError:
            metrics.WRITE_FAILURES.inc()
            logger.exception(
                "writing %d events to %s failed; they will be re-delivered",
                len(batch.recorded),
                self.config.dataset_url,
            )
            return False
        elapsed = time.monotonic() - started
        metrics.BATCH_WRITE_SECONDS.observe(elapsed)
        for file in written:
            metrics.EVENTS_WRITTEN.labels(kind=file.kind).inc(file.rows)
            metrics.FILES_WRITTEN.labels(kind=file.kind).inc()
        logger.info("wrote %d events in %d files in %.3f s", len(batch.recorded), len(written), elapsed)
        return True

    async def dead_letter(self, dead: DeadLetter) -> None:
        """Publish an undecodable message to its dead-letter subject, then ack the original."""
        sequence = stream_sequence(dead.msg)
        headers = {
            "Musicrl-Dlq-Reason": _one_line(dead.reason),
            "Musicrl-Original-Subject": dead.msg.subject,
            "Musicrl-Original-Sequence": str(sequence),
        }
        try:
            await self.publisher.publish_raw(
                dlq_subject_for(dead.msg.subject), dead.msg.data, f"dlq-{sequence}", "dead_letter", headers
            )
        except BusUnavailable as e:
            logger.error("dead letter %d not stored (%s); the original will be re-delivered", sequence, e)
            return
        metrics.DEAD_LETTERS.inc()
        await _settle(dead.msg, dead.msg.ack())

    async def refresh_lag(self) -> None:
        """Update the lag gauges from the consumer's info; skipped while the server is away."""
        if self.subscription is None:
            return
        try:
            info = await self.subscription.consumer_info()
        except TRANSIENT as e:
            logger.debug("no consumer info (%s)", type(e).__name__)
            return
        metrics.CONSUMER_PENDING.set(info.num_pending or 0)
        metrics.CONSUMER_ACK_PENDING.set(info.num_ack_pending or 0)


@contextlib.asynccontextmanager
async def _kept_in_progress(msgs: Sequence[Msg], interval_s: float) -> AsyncIterator[None]:
    """Send an in-progress ack (``+WPI``) for every one of ``msgs`` each ``interval_s`` until the block exits.

    Each one restarts the message's ack wait, so a write slower than ``ack_wait_s`` keeps its batch instead
    of JetStream handing the batch to another replica (a duplicate) while it is still being written.
    """
    started = time.monotonic()

    async def renew() -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.gather(*(_settle(m, m.in_progress()) for m in msgs))
            metrics.BATCH_RENEWALS.inc()
            logger.info(
                "batch of %d events still being written after %.1f s; renewed its ack wait",
                len(msgs),
                time.monotonic() - started,
            )

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _ack_all(msgs: list[Msg]) -> None:
    await asyncio.gather(*(_settle(m, m.ack()) for m in msgs))


async def _settle(msg: Msg, reply: Awaitable[None]) -> None:
    """Await an ack, nak or in-progress ack; a lost one only means a re-delivery (a duplicate row), so it is
    logged, not raised."""
    try:
        await reply
    except nats.errors.Error as e:
        logger.warning("acknowledging message %d failed (%s); it will be re-delivered", stream_sequence(msg), e)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_HEADER_CHARS]


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def record(config: RecorderConfig, stop: asyncio.Event) -> None:
    """Connect, record until ``stop`` is set, then close the subscription and drain the connection.

    Args:
        config: The recorder's settings.
        stop: Set it to finish the batch in hand and return.
    """
    nc, js = await connect(config.bus, name="musicrl-recorder")
    recorder = Recorder(config, js)
    try:
        await recorder.run(stop)
    finally:
        await recorder.unsubscribe()  # before drain(): a live pull subscription makes drain() wait 30 s
        await _close(nc)
    logger.info("recorder stopped")


async def _close(nc: NATS) -> None:
    """Drain the connection (flushing pending acks); if the server is away, just close it."""
    try:
        await nc.drain()
        return
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError, TimeoutError) as e:
        logger.warning("cannot drain the NATS connection (%s); closing it", type(e).__name__)
    try:
        await nc.close()
    # nats-py flushes a socket the server already dropped: asyncio's transport raises ConnectionError there,
    # uvloop's a RuntimeError ("the handler is closed")
    except (ConnectionError, RuntimeError) as e:
        logger.warning("the NATS connection was already lost (%s); unsent acks mean re-deliveries", e)


def run_recorder(config: RecorderConfig) -> None:
    """Serve metrics, record until SIGTERM or SIGINT, and return (the process then exits 0).

    Args:
        config: The recorder's settings.
    """
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host)
        logger.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await record(config, stop)

    uvloop.run(main())
