"""The generator's scheduler: requests join the running decode batch at the next step, not the next batch.

:class:`~musicrl.serving.batcher.MicroBatcher` runs a batch to the end of its longest clip; a request that
arrives meanwhile waits for all of it. Here one loop on the torch thread owns a
:class:`~musicrl.models.continuous.ContinuousBatch`: before every step it admits waiting rows (up to
``max_batch_size`` in flight), and after it hands each finished clip to its caller, decoded to audio. A row
whose caller went away leaves the batch at the next step.

Rows beyond ``max_queued_rows`` waiting are refused at once (503 with ``Retry-After``): an unbounded queue
turns a burst into timeouts for everyone. :meth:`ContinuousBatcher.drain` refuses new rows while the
accepted ones finish, for a graceful shutdown.
"""

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from musicrl.config import BatchingConfig
from musicrl.errors import Overloaded
from musicrl.models.continuous import ContinuousBatch, FinishedClip
from musicrl.models.engine import GeneratedClip, GenerationEngine, GenerationRequest
from musicrl.serving import metrics
from musicrl.serving.torch_thread import torch_executor


logger = logging.getLogger(__name__)

DRAINING_RETRY_AFTER_S = 5.0  # another replica is up by then, or this one has restarted


@dataclass(eq=False, slots=True)  # hashed by identity: each row is the batch's key for itself
class _Row:
    request: GenerationRequest
    future: "asyncio.Future[GeneratedClip]"
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.monotonic)

    def gone(self) -> bool:
        """Whether the caller stopped waiting (its request was cancelled or timed out)."""
        return self.future.done()

    def settle(self, result: GeneratedClip | BaseException) -> None:
        """Hand ``result`` to the caller, from any thread."""

        def set_result() -> None:
            if self.future.done():
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        self._call(set_result)

    def cancel(self) -> None:
        """Cancel the caller's wait, from any thread."""
        self._call(self.future.cancel)

    def _call(self, callback: Callable[[], object]) -> None:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the event loop has closed: the server is gone, and nobody is waiting
            pass


class ContinuousBatcher:
    """Generate rows through one continuously running decode batch.

    Args:
        engine: The engine; only the batcher's loop uses it once started.
        config: ``max_batch_size`` rows in flight at most, ``max_queued_rows`` waiting at most.
        model_name: Label of the metrics.
        executor: Where the loop runs (default: the process's torch thread, which it then holds).
    """

    def __init__(
        self,
        engine: GenerationEngine,
        config: BatchingConfig,
        model_name: str,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.model_name = model_name
        self.executor = executor or torch_executor()
        self._waiting: collections.deque[_Row] = collections.deque()
        self._wake = threading.Condition()
        self._draining = False
        self._closed = False
        self._loop_future: concurrent.futures.Future[None] | None = None
        labels = {"model": model_name}
        self._queue_depth = metrics.QUEUE_DEPTH.labels(**labels)
        self._in_flight = metrics.ROWS_IN_FLIGHT.labels(**labels)
        self._time_to_first_step = metrics.TIME_TO_FIRST_STEP.labels(**labels)
        self._decode_steps = metrics.DECODE_STEPS.labels(**labels)
        self._row_steps = metrics.ROW_STEPS.labels(**labels)

    async def submit(self, requests: Sequence[GenerationRequest]) -> list[GeneratedClip]:
        """Queue the rows of one request and wait for their clips (in order).

        Raises:
            Overloaded: The queue is full or the server is shutting down; nothing was queued.
            Exception: What generating a row raised (an error of one row fails its whole request).
        """
        loop = asyncio.get_running_loop()
        with self._wake:
            if self._draining or self._closed:
                raise Overloaded(
                    f"the {self.model_name} server is shutting down; retry on another replica",
                    retry_after_s=DRAINING_RETRY_AFTER_S,
                )
            if len(self._waiting) + len(requests) > self.config.max_queued_rows:
                metrics.OVERLOADED.labels(model=self.model_name).inc()
                raise Overloaded(
                    f"{len(self._waiting)} rows are already waiting for the {self.model_name} model (at most "
                    f"{self.config.max_queued_rows}); retry shortly"
                )
            rows = [_Row(request, loop.create_future(), loop) for request in requests]
            self._waiting.extend(rows)
            self._queue_depth.set(len(self._waiting))
            self._wake.notify()
        self._ensure_running()
        return list(await asyncio.gather(*(row.future for row in rows)))

    def drain(self) -> None:
        """Refuse new rows from now on; the accepted ones (waiting or in flight) still finish."""
        with self._wake:
            self._draining = True

    def close(self) -> None:
        """Stop the loop after its current step; rows not finished by then are cancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _ensure_running(self) -> None:
        if self._loop_future is None or self._loop_future.done():
            self._loop_future = self.executor.submit(self._run)

    def _run(self) -> None:
        """The scheduler loop (on the torch thread): admit, step, deliver, until closed."""
        batch = ContinuousBatch(self.engine)
        try:
            while (admitted := self._admit(batch)) is not None:
                joined = self._join(batch, admitted) if admitted else []
                gone = [row for row in batch.keys if isinstance(row, _Row) and row.gone()]
                if gone:
                    batch.abandon(gone)
                try:
                    rows = batch.size
                    finished = batch.step()
                    self._count_pass(rows)
                except Exception as e:  # the batch's state is lost: every row in it fails, the loop goes on
                    logger.exception("a decode step of %d rows failed", batch.size)
                    self._fail([row for row in batch.keys if isinstance(row, _Row)], e)
                    batch = ContinuousBatch(self.engine)
                    self._in_flight.set(0)
                    continue
                now = time.monotonic()
                for row in joined:
                    self._time_to_first_step.observe(now - row.enqueued_at)
                self._deliver(finished)
                self._in_flight.set(batch.size)
        finally:
            for key in [*batch.keys, *self._take_all_waiting()]:
                if isinstance(key, _Row):
                    key.cancel()
            self._in_flight.set(0)

    def _admit(self, batch: ContinuousBatch) -> list[_Row] | None:
        """The waiting rows that join before the next step; blocks while there is nothing to do; None: stop."""
        with self._wake:
            while not self._closed and not self._waiting and not batch.size:
                self._wake.wait()
            if self._closed:
                return None
            admitted: list[_Row] = []
            while self._waiting and batch.size + len(admitted) < self.config.max_batch_size:
                row = self._waiting.popleft()
                if not row.gone():
                    admitted.append(row)
            self._queue_depth.set(len(self._waiting))
            return admitted

    def _join(self, batch: ContinuousBatch, rows: list[_Row]) -> list[_Row]:
        """Add ``rows`` to the batch for its next step; returns those that joined (the others have failed)."""
        try:
            batch.join([row.request for row in rows], rows)
        except Exception as e:  # refused before any state changed (e.g. too long for the model): these rows fail
            self._fail(rows, e)
            return []
        return rows

    def _count_pass(self, rows: int) -> None:
        if rows:
            self._decode_steps.inc()
            self._row_steps.inc(rows)

    def _deliver(self, finished: list[FinishedClip]) -> None:
        if not finished:
            return
        try:
            audio = self.engine.decode_audio([clip.codes for clip in finished])
        except Exception as e:
            logger.exception("decoding %d clips failed", len(finished))
            self._fail([clip.key for clip in finished if isinstance(clip.key, _Row)], e)
            return
        rate = self.engine.sample_rate
        for clip, samples in zip(finished, audio, strict=True):
            row = clip.key
            assert isinstance(row, _Row)
            row.settle(GeneratedClip(codes=clip.codes, audio=samples, sample_rate=rate, seed=row.request.seed))

    @staticmethod
    def _fail(rows: list[_Row], error: BaseException) -> None:
        for row in rows:
            row.settle(error)

    def _take_all_waiting(self) -> list[_Row]:
        with self._wake:
            rows = list(self._waiting)
            self._waiting.clear()
            self._queue_depth.set(0)
            return rows
