"""Server-side micro-batching of concurrent requests.

KServe's own batcher does not cover the V2 protocol, and a generation step costs nearly the same for one
clip as for sixteen, so concurrent requests are merged here: rows wait at most ``max_queue_delay_ms`` for
company, then run together in one engine call on a dedicated worker thread, keeping torch work off the
event loop. A request with more rows than ``max_batch_size`` is split across batches.
"""

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from musicrl.config import BatchingConfig
from musicrl.errors import Overloaded
from musicrl.serving import metrics
from musicrl.serving.torch_thread import torch_executor


logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(slots=True)
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: "asyncio.Future[ResultT]"
    enqueued_at: float


class MicroBatcher(Generic[ItemT, ResultT]):
    """Collect rows from concurrent callers and run them through ``run_batch`` in batches.

    Args:
        run_batch: Blocking function from a list of rows to one result per row, in order; a row's result
            may be an exception, which is raised to that row's caller only.
        config: Batch size and queue delay limits.
        model_name: Label for the batch metrics.
        executor: Where ``run_batch`` runs; one thread, since the engine is not re-entrant and a batch
            already uses every core (default: the process's torch thread).
    """

    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], Sequence[ResultT | BaseException]],
        config: BatchingConfig,
        model_name: str,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.config = config
        self.model_name = model_name
        self.executor = executor or torch_executor()
        self._queue: asyncio.Queue[_Pending[ItemT, ResultT]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[ItemT]) -> list[ResultT]:
        """Queue ``items`` and wait for their results.

        Args:
            items: The rows of one request.

        Returns:
            One result per row, in order.

        Raises:
            Overloaded: Queueing these rows would exceed ``max_queued_rows``; nothing was queued.
            Exception: Whatever ``run_batch`` raised for a batch holding one of these rows.
        """
        queue = self._ensure_started()
        if queue.qsize() + len(items) > self.config.max_queued_rows:
            metrics.OVERLOADED.labels(model=self.model_name).inc()
            raise Overloaded(
                f"{queue.qsize()} rows are already waiting for the {self.model_name} model (at most "
                f"{self.config.max_queued_rows}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future(), time.monotonic()) for item in items]
        for p in pending:
            queue.put_nowait(p)
        return list(await asyncio.gather(*(p.future for p in pending)))

    def close(self) -> None:
        """Stop collecting batches; callers still waiting get ``CancelledError``."""
        if self._worker is not None:
            self._worker.cancel()

    def _ensure_started(self) -> "asyncio.Queue[_Pending[ItemT, ResultT]]":
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run_forever(self._queue))
        return self._queue

    async def _run_forever(self, queue: "asyncio.Queue[_Pending[ItemT, ResultT]]") -> None:
        while True:
            batch = await self._collect(queue)
            await self._run(batch)

    async def _collect(self, queue: "asyncio.Queue[_Pending[ItemT, ResultT]]") -> list[_Pending[ItemT, ResultT]]:
        """Wait for one row, then gather more until the batch is full or the queue delay has passed."""
        batch = [await queue.get()]
        deadline = time.monotonic() + self.config.max_queue_delay_ms / 1000
        while len(batch) < self.config.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), timeout=remaining))
            except TimeoutError:
                break
        return [p for p in batch if not p.future.done()]  # callers that went away are skipped

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        if not batch:
            return
        started = time.monotonic()
        labels = {"model": self.model_name}
        for p in batch:
            metrics.QUEUE_WAIT.labels(**labels).observe(started - p.enqueued_at)
        metrics.BATCH_SIZE.labels(**labels).observe(len(batch))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [p.item for p in batch])
        except Exception as e:  # handed to every caller of this batch; the server maps it to a status
            logger.exception("batch of %d rows failed", len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        finally:
            metrics.BATCH_LATENCY.labels(**labels).observe(time.monotonic() - started)
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):  # this row alone failed; its batch-mates did not
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
