import asyncio
import threading

import pytest

from musicrl.config import BatchingConfig
from musicrl.errors import InvalidRequest, Overloaded
from musicrl.serving.batcher import MicroBatcher


class RecordingRunner:
    """A run_batch that records the batches it saw and the thread it ran on."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise RuntimeError(f"cannot process {self.fail_on}")
        return [item * 10 for item in items]


def test_concurrent_requests_share_one_batch():
    runner = RecordingRunner()
    batcher = MicroBatcher(runner, BatchingConfig(max_batch_size=8, max_queue_delay_ms=200), "test")

    async def scenario():
        return await asyncio.gather(*(batcher.submit([i]) for i in range(5)))

    results = asyncio.run(scenario())
    batcher.close()
    assert results == [[0], [10], [20], [30], [40]]
    assert runner.batches == [[0, 1, 2, 3, 4]]
    assert runner.threads and threading.main_thread().name not in runner.threads  # torch work off the loop


def test_batches_never_exceed_max_batch_size_and_keep_row_order():
    runner = RecordingRunner()
    batcher = MicroBatcher(runner, BatchingConfig(max_batch_size=3, max_queue_delay_ms=50), "test")

    async def scenario():
        return await asyncio.gather(batcher.submit([1, 2, 3, 4, 5]), batcher.submit([6, 7]))

    first, second = asyncio.run(scenario())
    batcher.close()
    assert first == [10, 20, 30, 40, 50] and second == [60, 70]
    assert all(len(b) <= 3 for b in runner.batches)
    assert sorted(x for b in runner.batches for x in b) == [1, 2, 3, 4, 5, 6, 7]


def test_zero_delay_runs_a_lone_request_at_once():
    runner = RecordingRunner()
    batcher = MicroBatcher(runner, BatchingConfig(max_batch_size=8, max_queue_delay_ms=0), "test")

    async def scenario():
        first = await batcher.submit([1])
        second = await batcher.submit([2])
        return first, second

    assert asyncio.run(scenario()) == ([10], [20])
    batcher.close()
    assert runner.batches == [[1], [2]]


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_serving():
    runner = RecordingRunner(fail_on=13)
    batcher = MicroBatcher(runner, BatchingConfig(max_batch_size=4, max_queue_delay_ms=100), "test")

    async def scenario():
        failed = await asyncio.gather(batcher.submit([13]), batcher.submit([1]), return_exceptions=True)
        after = await batcher.submit([2])
        return failed, after

    failed, after = asyncio.run(scenario())
    batcher.close()
    assert all(isinstance(r, RuntimeError) and "cannot process 13" in str(r) for r in failed)
    assert after == [20]


def test_a_caller_that_went_away_is_skipped():
    runner = RecordingRunner()
    batcher = MicroBatcher(runner, BatchingConfig(max_batch_size=8, max_queue_delay_ms=100), "test")

    async def scenario():
        abandoned = asyncio.ensure_future(batcher.submit([99]))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        return await batcher.submit([1])

    assert asyncio.run(scenario()) == [10]
    batcher.close()
    assert [99] not in runner.batches and all(99 not in b for b in runner.batches)


def test_a_full_queue_refuses_new_rows_instead_of_growing():
    release = threading.Event()

    def blocking(items: list[int]) -> list[int]:
        release.wait(10)
        return items

    batcher = MicroBatcher(blocking, BatchingConfig(max_batch_size=2, max_queue_delay_ms=0, max_queued_rows=3), "t")

    async def scenario():
        running = asyncio.ensure_future(batcher.submit([1, 2]))  # taken by the worker: the queue is empty again
        await asyncio.sleep(0.2)
        queued = asyncio.ensure_future(batcher.submit([3, 4, 5]))  # fills the queue to its bound
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="3 rows are already waiting"):
            await batcher.submit([6])
        release.set()
        return await running, await queued

    assert asyncio.run(scenario()) == ([1, 2], [3, 4, 5])  # what was accepted still completes
    batcher.close()


def test_a_queue_bound_below_the_batch_size_is_refused():
    with pytest.raises(InvalidRequest, match="max_queued_rows"):
        BatchingConfig(max_batch_size=16, max_queued_rows=8)
