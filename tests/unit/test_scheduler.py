"""The scheduler with an in-process fake executor (no framework, no worker): batching,
priorities, timeouts, the bounded queue, cancellation and per-request output slicing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from gateway.contract import SchedulerOptions
from gateway.protocol.errors import InferenceFailed, InvalidRequest, QueueTimeout, Unavailable
from gateway.scheduling.scheduler import ExecuteResult, Inputs, Pending, Scheduler, gather
from gateway.scheduling.stats import ModelStats


class FakeModel:
    """Doubles its input; each batch waits until the test releases it, and is recorded."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.started = asyncio.Event()

    async def __call__(self, batch: list[Inputs], outputs: list[str]) -> ExecuteResult:
        inputs = gather(batch)
        self.batches.append(inputs["x"])
        self.started.set()
        await self.release.wait()
        now = time.monotonic_ns()
        return ExecuteResult({"y": inputs["x"] * 2, "z": inputs["x"] + 1}, now, now)


def make(model: FakeModel, max_batch_size: int = 8, instances: int = 1, **batching: Any) -> Scheduler:
    return Scheduler(SchedulerOptions("'fake' version 1", max_batch_size, instances, **batching), model,
                     ModelStats("fake", "1"))


def rows(value: float, n: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_requests_queued_while_busy_run_as_one_batch_and_get_their_own_rows() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model)
        first = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1))
        await model.started.wait()
        others = [asyncio.create_task(scheduler.submit(rows(i, n=1 + i % 2), ["y", "z"], 1 + i % 2))
                  for i in range(1, 5)]
        await asyncio.sleep(0)
        model.release.set()
        assert (await first)["y"].tolist() == [[0, 0]]
        for i, task in enumerate(others, start=1):
            result = await task
            assert result["y"].tolist() == [[2 * i] * 2] * (1 + i % 2)
            assert result["z"].tolist() == [[i + 1] * 2] * (1 + i % 2)
        assert [len(b) for b in model.batches] == [1, 6]
        assert scheduler.stats.execution_count == 2 and scheduler.stats.inference_count == 7
    run(scenario)


def test_batches_never_exceed_max_batch_size_nor_split_a_request() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model, max_batch_size=4)
        blocker = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1))
        await model.started.wait()
        sizes = [3, 2, 2, 1]
        tasks = [asyncio.create_task(scheduler.submit(rows(i, n), ["y"], n)) for i, n in enumerate(sizes)]
        await asyncio.sleep(0)
        model.release.set()
        await asyncio.gather(blocker, *tasks)
        assert [len(b) for b in model.batches] == [1, 3, 4, 1]  # FIFO, nothing split, nothing over 4
    run(scenario)


def test_only_matching_non_batch_dimensions_share_a_batch() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model)
        blocker = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1))
        await model.started.wait()
        tasks = [asyncio.create_task(scheduler.submit(rows(i, width=2 + i % 2), ["y"], 1)) for i in range(6)]
        await asyncio.sleep(0)
        model.release.set()
        results = await asyncio.gather(blocker, *tasks)
        assert sorted(b.shape for b in model.batches[1:]) == [(3, 2), (3, 3)]
        assert results[2]["y"].shape == (1, 3)  # results[0] is the blocker; task i=1 has width 3
    run(scenario)


def test_higher_priority_runs_first() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model, max_batch_size=1, priority_levels=3, default_priority=2)
        blocker = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1))
        await model.started.wait()
        low = asyncio.create_task(scheduler.submit(rows(3), ["y"], 1, priority=3))
        default = asyncio.create_task(scheduler.submit(rows(2), ["y"], 1))
        high = asyncio.create_task(scheduler.submit(rows(1), ["y"], 1, priority=1))
        await asyncio.sleep(0)
        model.release.set()
        await asyncio.gather(blocker, low, default, high)
        assert [float(b[0, 0]) for b in model.batches] == [0, 1, 2, 3]
    run(scenario)


def test_priority_out_of_range_is_rejected() -> None:
    async def scenario() -> None:
        scheduler = make(FakeModel(), priority_levels=2)
        with pytest.raises(InvalidRequest, match="between 1"):
            await scheduler.submit(rows(0), ["y"], 1, priority=3)
    run(scenario)


def test_timed_out_requests_fail_and_are_never_executed() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model)
        blocker = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1))
        await model.started.wait()
        doomed = asyncio.create_task(scheduler.submit(rows(7), ["y"], 1, timeout_s=0.001))
        with pytest.raises(QueueTimeout, match="timed out"):
            await doomed
        model.release.set()
        await blocker
        assert [float(b[0, 0]) for b in model.batches] == [0]
        assert scheduler.queued_requests == 0
    run(scenario)


def test_a_full_queue_rejects_at_once() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model, max_batch_size=1, max_queue_size=2)
        blocker = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1))
        await model.started.wait()
        queued = [asyncio.create_task(scheduler.submit(rows(i), ["y"], 1)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="queue is full"):
            await scheduler.submit(rows(3), ["y"], 1)
        model.release.set()
        await asyncio.gather(blocker, *queued)
    run(scenario)


def test_a_cancelled_request_leaves_the_queue_unexecuted() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model)
        blocker = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1))
        await model.started.wait()
        gone = asyncio.create_task(scheduler.submit(rows(9), ["y"], 1))
        stays = asyncio.create_task(scheduler.submit(rows(4), ["y"], 1))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert scheduler.queued_requests == 1
        model.release.set()
        await asyncio.gather(blocker, stays)
        assert [b[:, 0].tolist() for b in model.batches] == [[0], [4]]
    run(scenario)


def test_unbatched_models_run_each_request_alone() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model, max_batch_size=0)
        tasks = [asyncio.create_task(scheduler.submit({"x": np.full(3, i, np.float32)}, ["y"], 1)) for i in range(3)]
        await asyncio.sleep(0)
        model.release.set()
        results = await asyncio.gather(*tasks)
        assert [len(b) for b in model.batches] == [3, 3, 3]
        assert results[2]["y"].tolist() == [4, 4, 4]
    run(scenario)


def test_instances_run_batches_in_parallel() -> None:
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model, max_batch_size=1, instances=3)
        tasks = [asyncio.create_task(scheduler.submit(rows(i), ["y"], 1)) for i in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(model.batches) == 3  # all three started before any finished
        model.release.set()
        await asyncio.gather(*tasks)
    run(scenario)


def test_wrong_number_of_output_rows_fails_the_whole_batch() -> None:
    async def broken(batch: list[Inputs], outputs: list[str]) -> ExecuteResult:
        return ExecuteResult({"y": gather(batch)["x"][:1]}, 0, 0)

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerOptions("'broken' version 1", 8), broken, ModelStats("broken", "1"))
        with pytest.raises(InferenceFailed, match="for a batch of 2"):
            await scheduler.submit(rows(0, n=2), ["y"], 2)
    run(scenario)


def test_traced_requests_learn_their_batch_and_who_shared_it() -> None:
    """Each traced request of a batch gets its queue and batch times and every traced request's context;
    an untraced one gets nothing, and is not among the links."""
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model)
        blocker = asyncio.create_task(scheduler.submit(rows(0), ["y"], 1, trace=(1, 10, 1)))
        await model.started.wait()
        traced = [scheduler.enqueue(rows(i, n=i), ["y"], i, trace=(i, 100 + i, 1)) for i in (1, 2)]
        untraced = scheduler.enqueue(rows(3), ["y"], 1)
        model.release.set()
        await blocker
        await asyncio.gather(*(p.future for p in [*traced, untraced]))
        assert untraced.traced is None
        first, second = (p.traced for p in traced)
        assert first is not None and second is not None
        assert first.batch is second.batch
        assert first.batch.links == ((1, 101, 1), (2, 102, 1))
        assert (first.batch.requests, first.batch.rows, first.rows, second.rows) == (3, 4, 1, 2)
        assert first.enqueued_ns <= second.enqueued_ns <= first.batch.dispatched_ns
        assert first.batch.dispatched_ns <= first.batch.started_ns <= first.batch.finished_ns
    run(scenario)


class LoopModel:
    """Doubles its input right on the loop: returns the result instead of an awaitable (as a worker does
    for a model whose batches are very fast), or raises what it is told to."""

    def __init__(self, raises: Exception | None = None) -> None:
        self.batches: list[int] = []
        self.raises = raises

    def __call__(self, batch: list[Inputs], outputs: list[str]) -> ExecuteResult:
        self.batches.append(len(batch))
        if self.raises is not None:
            raise self.raises
        now = time.monotonic_ns()
        return ExecuteResult({"y": gather(batch)["x"] * 2}, now, now)


def test_a_batch_that_runs_on_the_loop_is_answered_before_enqueue_returns() -> None:
    async def scenario() -> None:
        model = LoopModel()
        scheduler = Scheduler(SchedulerOptions("'loop' version 1", 8), model, ModelStats("loop", "1"))
        settled: list[Pending] = []
        pending = scheduler.enqueue(rows(3), ["y"], 1, on_settled=settled.append)
        assert settled == [pending] and pending.future.done()
        assert pending.future.result()["y"].tolist() == [[6, 6]]
        assert scheduler.stats.execution_count == 1 and scheduler.stats.queue.count == 1
        again = scheduler.enqueue(rows(4), ["y"], 1, on_settled=settled.append)  # the instance is free again
        assert settled == [pending, again] and again.future.result()["y"].tolist() == [[8, 8]]
        assert not scheduler.busy and scheduler.queued_requests == 0
        await asyncio.sleep(0)
        assert scheduler.inflight_requests == 0
    run(scenario)


@pytest.mark.parametrize("error", [InferenceFailed("model 'loop' failed while executing: boom"),
                                   RuntimeError("boom")], ids=["runtime-error", "unexpected"])
def test_a_batch_that_fails_on_the_loop_fails_its_requests_and_frees_the_instance(error: Exception) -> None:
    async def scenario() -> None:
        model = LoopModel(raises=error)
        scheduler = Scheduler(SchedulerOptions("'loop' version 1", 8), model, ModelStats("loop", "1"))
        settled: list[Pending] = []
        pending = scheduler.enqueue(rows(1), ["y"], 1, on_settled=settled.append)
        assert settled == [pending]
        with pytest.raises(InferenceFailed, match="boom"):
            pending.future.result()
        model.raises = None
        assert (await scheduler.submit(rows(2), ["y"], 1))["y"].tolist() == [[4, 4]]
    run(scenario)


def test_on_settled_is_told_once_whatever_ends_the_request() -> None:
    """Answered after a thread-like wait, timed out in the queue, cancelled in the queue: one call each."""
    async def scenario() -> None:
        model = FakeModel(hold=True)
        scheduler = make(model)
        settled: list[Pending] = []
        running = scheduler.enqueue(rows(1), ["y"], 1, on_settled=settled.append)
        await model.started.wait()
        expiring = scheduler.enqueue(rows(2), ["y"], 1, timeout_s=0.001, on_settled=settled.append)
        cancelled = scheduler.enqueue(rows(3), ["y"], 1, on_settled=settled.append)
        scheduler.cancel(cancelled)
        assert settled == [cancelled] and cancelled.future.cancelled()
        await asyncio.sleep(0.01)
        assert settled == [cancelled, expiring]
        assert isinstance(expiring.future.exception(), QueueTimeout)
        model.release.set()
        await running.future
        assert settled == [cancelled, expiring, running]
        assert [len(b) for b in model.batches] == [1]  # neither of the others ran
    run(scenario)


def test_a_batch_cut_short_by_the_worker_stopping_answers_503_not_500() -> None:
    async def stopping(batch: list[Inputs], outputs: list[str]) -> ExecuteResult:
        raise asyncio.CancelledError  # what awaiting an instance thread raises when the loop is closing

    async def scenario() -> None:
        scheduler = Scheduler(SchedulerOptions("'fake' version 1", 8, 1), stopping, ModelStats("fake", "1"))
        pending = scheduler.enqueue(rows(0), ["y"], 1)
        with pytest.raises(Unavailable, match="the worker stopped before the batch finished"):
            await pending.future
    run(scenario)


class OneInstance:
    """One instance behind a FIFO queue, as the worker's thread pool is: a batch handed over while
    another runs (``stage``) starts the moment that one finishes. Each batch runs until released."""

    def __init__(self) -> None:
        self._instance = asyncio.Lock()  # FIFO: waiters acquire in the order they asked
        self.handed: list[list[float]] = []  # each batch's first column, in the order it was handed over
        self.releases: list[asyncio.Event] = []
        self.started_ns: list[int] = []

    async def __call__(self, batch: list[Inputs], outputs: list[str]) -> ExecuteResult:
        inputs = gather(batch)
        self.handed.append(inputs["x"][:, 0].tolist())
        release = asyncio.Event()
        self.releases.append(release)
        async with self._instance:
            self.started_ns.append(time.monotonic_ns())
            await release.wait()
            return ExecuteResult({"y": inputs["x"] * 2}, self.started_ns[-1], time.monotonic_ns())


def _split_pipeline(instance: OneInstance, **batching: Any) -> Scheduler:
    """A scheduler whose window has chosen the split pipeline (depth 2), as ``DepthChooser`` does
    after measuring it faster; the depth is set here rather than measured."""
    options = SchedulerOptions("'fake' version 1", 8, 1, max_queue_delay_s=0.05, **batching)
    scheduler = Scheduler(options, instance, ModelStats("fake", "1"), stage=instance)
    scheduler._window.depth.depth = 2
    return scheduler


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_complete_batch_is_staged_behind_the_busy_instance_and_its_queue_time_lasts_until_it_starts() -> None:
    async def scenario() -> None:
        instance = OneInstance()
        scheduler = _split_pipeline(instance)
        first = asyncio.create_task(scheduler.submit(rows(0, n=4), ["y"], 4))
        await _turns()
        others = [asyncio.create_task(scheduler.submit(rows(i), ["y"], 1)) for i in (1, 2, 3, 4)]
        await _turns()
        # The loop holds 8 rows: at depth 2 the next batch is complete at 4, and it is handed over
        # while the first runs.
        assert instance.handed == [[0] * 4, [1, 2, 3, 4]]
        assert scheduler.queued_requests == 0
        time.sleep(0.02)  # the instance stays busy: the staged requests' queue time goes on
        instance.releases[0].set()
        assert (await first)["y"].tolist() == [[0, 0]] * 4
        await _turns()
        instance.releases[1].set()
        assert [(await t)["y"][0, 0] for t in others] == [2, 4, 6, 8]
        stats = scheduler.stats.as_dict()["inference_stats"]
        assert isinstance(stats, dict) and stats["queue"]["count"] == 5
        assert stats["queue"]["ns"] >= 4 * 20_000_000  # the four staged requests waited out the first batch
        # Both batches are done: the instance is idle again, and a new request runs at once.
        late = asyncio.create_task(scheduler.submit(rows(5), ["y"], 1))
        await asyncio.sleep(0.1)  # the window may wait (within its 50 ms) for the loop it remembers
        assert instance.handed[-1] == [5]
        instance.releases[-1].set()
        await late
        assert scheduler.stats.execution_count == 3
    run(scenario)


@pytest.mark.parametrize("case", ["depth 1", "a request with a timeout", "several priority levels"])
def test_nothing_is_staged_that_could_still_time_out_be_overtaken_or_join_a_whole_loop_batch(case: str) -> None:
    async def scenario() -> None:
        instance = OneInstance()
        scheduler = _split_pipeline(instance, priority_levels=2 if case == "several priority levels" else 1)
        if case == "depth 1":
            scheduler._window.depth.depth = 1
        first = asyncio.create_task(scheduler.submit(rows(0, n=4), ["y"], 4))
        await _turns()
        timeout = 5.0 if case == "a request with a timeout" else None
        others = [asyncio.create_task(scheduler.submit(rows(i), ["y"], 1, timeout_s=timeout if i == 2 else None))
                  for i in (1, 2, 3, 4)]
        await _turns()
        assert instance.handed == [[0] * 4] and scheduler.queued_requests == 4
        instance.releases[0].set()
        await first
        await asyncio.sleep(0.1)  # the window may wait (within its 50 ms) for the rest of the loop
        assert instance.handed == [[0] * 4, [1, 2, 3, 4]]
        instance.releases[1].set()
        await asyncio.gather(*others)
    run(scenario)
