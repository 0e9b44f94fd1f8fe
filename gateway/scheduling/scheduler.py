"""One model version's queue and dynamic batcher.

It lives in the runtime worker, beside the model, and is fed by every frontend, so a batch
is never split by frontend. Requests arrive validated, wait in a queue per priority level (1
is the highest; FIFO within a level), and leave in batches when an instance is free and
``BatchWindow`` says the batch is worth sending. A batch never exceeds ``max_batch_size``,
never splits a request, and only joins requests whose non-batch dimensions match; the execute
port gets the requests' inputs as they are and gathers them (``gather``: one copy, on the
instance's thread, so the event loop never copies a batch). The outputs are sliced back so
each request sees only its own rows.

Everything here runs on the event loop, so the queue needs no locks. A full queue rejects
at once; a request whose timeout expires in the queue fails and is never executed; a
request that is cancelled (client gone) leaves the queue if it has not run yet.
"""

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.contract import BatchTrace, RequestTrace, SchedulerOptions, SpanRef
from gateway.protocol.errors import InferenceFailed, InvalidRequest, QueueTimeout, TensorGateError, Unavailable
from gateway.scheduling.stats import ModelStats
from gateway.scheduling.window import BatchWindow

Outputs = dict[str, np.ndarray]
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """A batch's outputs, and when execution started and finished (``time.monotonic_ns``,
    a clock shared by every process on the machine)."""

    outputs: Outputs
    started_ns: int
    finished_ns: int


#: Run one batch: the requests' inputs (gather them with ``gather``) and the outputs wanted. A port that
#: ran the batch at once returns its result (the answers then leave in the same turn of the loop);
#: one that hands it to a thread returns an awaitable of it. Either may raise ``TensorGateError``.
ExecuteBatch = Callable[[list[Inputs], list[str]], ExecuteResult | Awaitable[ExecuteResult]]

#: Queue one batch on the instances behind the ones running (a thread pool's queue): it starts the moment
#: an instance finishes, without waiting for the loop. Returns an awaitable of its result.
StageBatch = Callable[[list[Inputs], list[str]], Awaitable[ExecuteResult]]

#: Told, as soon as the scheduler settles it, that a request's future is done (answered, failed, or
#: cancelled): before the loop's next turn, unlike a future's own done-callbacks.
Settled = Callable[["Pending"], None]


def gather(batch: list[Inputs]) -> Inputs:
    """The batch's inputs concatenated along the batch dimension (a lone request as it is)."""
    if len(batch) == 1:
        return batch[0]
    return {name: np.concatenate([inputs[name] for inputs in batch]) for name in batch[0]}

#: Queue bound when the config sets none: enough for any sane concurrency, never unbounded memory.
DEFAULT_MAX_QUEUE_SIZE = 1024

_QUEUED, _RUNNING, _GONE = 0, 1, 2


@dataclass(eq=False, slots=True)
class Pending:
    """A queued request; ``future`` resolves to its own outputs. A traced request (``trace``: its span's
    context) gets ``traced`` once its batch has run."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]
    rows: int
    shape_key: tuple[tuple[int, ...], ...]
    enqueued: float
    enqueued_ns: int
    future: asyncio.Future[Outputs]
    state: int = _QUEUED
    timer: asyncio.TimerHandle | None = field(default=None)
    trace: SpanRef | None = None
    traced: RequestTrace | None = None
    on_settled: Settled | None = None


class Scheduler:
    """Queues requests for one model version and runs them in batches on ``instances`` instances."""

    def __init__(self, options: SchedulerOptions, execute: ExecuteBatch, stats: ModelStats,
                 stage: StageBatch | None = None) -> None:
        self.label = options.label
        self.max_batch_size = max_batch_size = options.max_batch_size
        self.stats = stats
        self._execute = execute
        self._levels = options.priority_levels
        self._default_priority = min(options.default_priority, self._levels)
        self._default_timeout_s = options.default_timeout_s
        self.max_queue_size = options.max_queue_size or DEFAULT_MAX_QUEUE_SIZE
        self._queues: list[deque[Pending]] = [deque() for _ in range(self._levels)]
        self._window = BatchWindow(max_batch_size, options.max_queue_delay_s, list(options.preferred_batch_sizes))
        self._idle = options.instances
        self._stage = stage
        #: Batches handed to the instances while all were busy (at most one: see ``_may_stage``).
        self._staged = 0
        #: Queued requests with a timeout: never staged, so a timeout still means "waited too long in the queue".
        self._queued_with_timeout = 0
        self.queued_requests = 0
        self.inflight_requests = 0
        self._queued_rows = 0
        self._running_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._batches: set[asyncio.Task[None]] = set()

    async def submit(self, inputs: Inputs, outputs: list[str], rows: int,
                     priority: int | None = None, timeout_s: float | None = None,
                     trace: SpanRef | None = None) -> Outputs:
        """Queue one request and wait for its own outputs (cancelling the wait cancels the request)."""
        pending = self.enqueue(inputs, outputs, rows, priority, timeout_s, trace)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self.cancel(pending)
            raise

    def enqueue(self, inputs: Inputs, outputs: list[str], rows: int,
                priority: int | None = None, timeout_s: float | None = None,
                trace: SpanRef | None = None, on_settled: Settled | None = None) -> Pending:
        """Queue one request; its ``future`` resolves to its outputs, and ``on_settled`` is called with
        the request the moment it does (one that runs at once is answered before this returns). Raises
        at once if refused."""
        level = priority or self._default_priority
        if not 1 <= level <= self._levels:
            raise InvalidRequest(f"priority must be between 1 (highest) and {self._levels} for model {self.label}")
        if self.queued_requests >= self.max_queue_size:
            raise Unavailable(f"model {self.label}: the queue is full ({self.max_queue_size} requests); retry later")
        loop = asyncio.get_running_loop()
        pending = Pending(inputs, outputs, rows, _shape_key(inputs, self.max_batch_size), loop.time(),
                           time.monotonic_ns(), loop.create_future(), trace=trace, on_settled=on_settled)
        self._queues[level - 1].append(pending)
        self.queued_requests += 1
        self._queued_rows += rows
        self._window.arrived(pending.enqueued, self._queued_rows + self._running_rows)
        timeout = timeout_s if timeout_s is not None else self._default_timeout_s
        if timeout > 0:
            pending.timer = loop.call_later(timeout, self._expire, pending)
            self._queued_with_timeout += 1
        self.inflight_requests += 1
        pending.future.add_done_callback(self._answered)
        self._dispatch()
        return pending

    def cancel(self, pending: Pending) -> None:
        """Drop a request whose client has gone, unless it is already running (then it just finishes)."""
        if pending.state == _QUEUED:
            self._leave(pending)
            pending.future.cancel()
            _settled(pending)

    def _answered(self, _: "asyncio.Future[Outputs]") -> None:
        self.inflight_requests -= 1

    @property
    def busy(self) -> bool:
        return bool(self.queued_requests or self._batches)

    def _leave(self, pending: Pending) -> None:
        """Take a queued request out of the counts (it is dropped from its deque lazily)."""
        pending.state = _GONE
        self.queued_requests -= 1
        self._queued_rows -= pending.rows
        if pending.timer is not None:
            pending.timer.cancel()
            self._queued_with_timeout -= 1

    def _expire(self, pending: Pending) -> None:
        if pending.state != _QUEUED:
            return
        self._leave(pending)
        waited_ms = (time.monotonic_ns() - pending.enqueued_ns) / 1e6
        pending.future.set_exception(
            QueueTimeout(f"model {self.label}: the request timed out after {waited_ms:.1f} ms in the queue")
        )
        _settled(pending)

    def _head(self) -> Pending | None:
        for queue in self._queues:
            while queue and queue[0].state != _QUEUED:
                queue.popleft()
            if queue:
                return queue[0]
        return None

    def _oldest_enqueued(self) -> float:
        return min(q[0].enqueued for q in self._queues if q)

    def _dispatch(self) -> None:
        """Start as many batches as there are idle instances and ready requests, and stage the next one
        behind busy instances when it is complete already (``_may_stage``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while True:
            head = self._head()
            if head is None:
                return
            staged = self._idle == 0
            if staged:
                if not self._may_stage():
                    return
            else:
                decision = self._window.decide(loop.time(), self._queued_rows, self._running_rows,
                                               self._oldest_enqueued())
                if decision.wait > 0:
                    self._timer = loop.call_later(decision.wait, self._dispatch)
                    return
            batch = self._take_batch(head)
            rows = sum(p.rows for p in batch)
            self._running_rows += rows
            dispatched_ns = time.monotonic_ns()
            inputs, outputs = [p.inputs for p in batch], _union(batch)
            run: ExecuteResult | Awaitable[ExecuteResult]
            if staged:
                assert self._stage is not None
                self._staged += 1
                run = self._stage(inputs, outputs)
            else:
                self._idle -= 1
                for pending in batch:
                    self.stats.record_queue(dispatched_ns - pending.enqueued_ns)
                try:
                    run = self._execute(inputs, outputs)
                except Exception as exc:
                    self._finish(batch, rows, dispatched_ns, _failure(self.label, exc))
                    continue
                if isinstance(run, ExecuteResult):  # ran on the loop: answered now, and the instance is idle again
                    self._finish(batch, rows, dispatched_ns, run)
                    continue
            task = loop.create_task(self._run(batch, rows, dispatched_ns, run, staged))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _may_stage(self) -> bool:
        """Whether to hand the next batch to the instances while they are all busy.

        A batch that waits on the loop for an instance starts only after the finished batch's
        completion has reached the loop and the instance's thread has been woken again: ~0.2-0.4 ms
        each on two busy cores, against ~3 ms for a batch of 8 of the anchors' MLP. Staged in the
        instances' queue, it starts the moment the instance is free. This is the split pipeline
        (depth 2) only, and only for a batch that is complete (the rows the window would wait for
        when the instance frees), never for requests with a timeout or of several priority levels:
        a staged request has left the queue, so it can no longer time out, be cancelled or be
        overtaken. At depth 1 nothing is ever staged, so its batches are exactly as before.
        """
        if self._stage is None or self._staged or self._levels > 1 or self._queued_with_timeout:
            return False
        window = self._window
        if window.max_delay_s <= 0 or window.depth.depth != 2:
            return False
        return self._queued_rows >= window.target(0)

    def _take_batch(self, head: Pending) -> list[Pending]:
        """The head request plus, in priority then arrival order, the compatible ones that fit."""
        if self.max_batch_size == 0:
            batch = [head]
        else:
            batch, rows, full = [], 0, False
            for level, queue in enumerate(self._queues):
                kept: deque[Pending] = deque()
                for pending in queue:
                    if pending.state != _QUEUED:
                        continue
                    if full or pending.shape_key != head.shape_key:
                        kept.append(pending)
                    elif rows + pending.rows > self.max_batch_size:
                        full = True  # never reorder past a request that does not fit
                        kept.append(pending)
                    else:
                        batch.append(pending)
                        rows += pending.rows
                self._queues[level] = kept
        for pending in batch:
            pending.state = _RUNNING
            self.queued_requests -= 1
            self._queued_rows -= pending.rows
            if pending.timer is not None:
                pending.timer.cancel()
                self._queued_with_timeout -= 1
        return batch

    async def _run(self, batch: list[Pending], rows: int, dispatched_ns: int,
                   run: Awaitable[ExecuteResult], staged: bool) -> None:
        """Wait for a batch that runs elsewhere (an instance thread), then answer it. A staged batch's
        queue time lasts until it started (it waited for an instance in the instances' queue)."""
        outcome: ExecuteResult | TensorGateError
        try:
            outcome = await run
        except Exception as exc:
            outcome = _failure(self.label, exc)
        except BaseException:  # the loop is closing under it (the worker is stopping): retry elsewhere, 503
            self._finish(batch, rows, dispatched_ns,
                         Unavailable(f"model {self.label}: the worker stopped before the batch finished"))
            raise
        if staged:
            dispatched_ns = outcome.started_ns if isinstance(outcome, ExecuteResult) else time.monotonic_ns()
            for pending in batch:
                self.stats.record_queue(dispatched_ns - pending.enqueued_ns)
        self._finish(batch, rows, dispatched_ns, outcome)
        self._dispatch()

    def _finish(self, batch: list[Pending], rows: int, dispatched_ns: int,
                outcome: ExecuteResult | TensorGateError) -> None:
        """Answer a batch's requests (or fail them) and give its instance back."""
        try:
            if isinstance(outcome, TensorGateError):
                raise outcome
            if any(p.trace is not None for p in batch):
                _trace(batch, rows, dispatched_ns, outcome)
            self._deliver(batch, rows, outcome.outputs)
            done_ns = time.monotonic_ns()
            self.stats.record_batch(rows, len(batch), outcome.started_ns - dispatched_ns,
                                    outcome.finished_ns - outcome.started_ns, done_ns - outcome.finished_ns)
        except TensorGateError as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(type(exc)(exc.message))
                    _settled(pending)
        finally:
            # A staged batch took over the instance the moment this one finished (the instances' queue is FIFO).
            if self._staged:
                self._staged -= 1
            else:
                self._idle += 1
            self._running_rows -= rows
            self._window.completed(asyncio.get_running_loop().time(), rows)

    def _deliver(self, batch: list[Pending], rows: int, outputs: Outputs) -> None:
        if self.max_batch_size > 0:
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InferenceFailed(f"model {self.label} returned output '{name}' with shape "
                                          f"{list(array.shape)} for a batch of {rows}")
        offset = 0
        for pending in batch:
            if not pending.future.done():
                if self.max_batch_size == 0:
                    pending.future.set_result({name: outputs[name] for name in pending.outputs})
                else:
                    pending.future.set_result(
                        {name: outputs[name][offset : offset + pending.rows] for name in pending.outputs})
                _settled(pending)
            offset += pending.rows


def _failure(label: str, exc: Exception) -> TensorGateError:
    """What a batch's requests fail with when it raised (the runtime's own errors pass as they are)."""
    if isinstance(exc, TensorGateError):
        return exc
    return InferenceFailed(f"model {label} failed while executing: {type(exc).__name__}: {exc}")


def _settled(pending: Pending) -> None:
    if pending.on_settled is not None:
        pending.on_settled(pending)


def _trace(batch: list[Pending], rows: int, dispatched_ns: int, result: ExecuteResult) -> None:
    """Tell each traced request of the batch what the batch did, and which traced requests shared it."""
    links = tuple(p.trace for p in batch if p.trace is not None)
    shared = BatchTrace(dispatched_ns, result.started_ns, result.finished_ns, len(batch), rows, links)
    for pending in batch:
        if pending.trace is not None:
            pending.traced = RequestTrace(pending.enqueued_ns, pending.rows, shared)


def _shape_key(inputs: Inputs, max_batch_size: int) -> tuple[tuple[int, ...], ...]:
    """Requests batch together only when every input matches in its non-batch dimensions."""
    skip = 1 if max_batch_size > 0 else 0
    return tuple(tuple(inputs[name].shape[skip:]) for name in sorted(inputs))


def _union(batch: list[Pending]) -> list[str]:
    names: list[str] = []
    for pending in batch:
        names.extend(n for n in pending.outputs if n not in names)
    return names
