"""When to send a batch: the dispatch rule, kept free of asyncio so it can be tested alone.

The naive rule — send whatever is queued the moment an instance is idle — breaks under a
closed loop: N clients that all got their answers back send their next requests over a
millisecond or so; the first one finds an idle instance and goes alone, the other N-1 pile
up behind it, and batches alternate 1, N-1, 1, N-1 at a third of the throughput.

This rule learns how many rows are *in the loop*: the peak of (queued + executing) rows over
the recent past. When an instance is idle and fewer rows are queued than the loop holds
(minus those still executing elsewhere, whose clients cannot come back yet), it waits for
them — but only while they can be expected (within a few recent inter-arrival gaps of the
last arrival, or a couple of client turnaround times of the last completed batch, whose
clients are on their way back) and never holds the oldest queued request back by more than
the max queue delay. At concurrency 1 the loop holds one row, so a lone request is sent at once.

Keeping the loop in one batch leaves the model idle while that batch's answers go out and the
next requests come in (lockstep). When that turnaround is long next to the model's run, splitting
the loop in two pays: one half computes while the other half turns around, at the price of a
smaller batch. Which is better depends on the model and the machine, so ``DepthChooser`` measures
it: it serves rows at pipeline depth 1 (one batch per loop) and 2 (two), compares the rows served
per second over epochs of ``EPOCH_S``, keeps the better and tries the other again now and then:
ever more rarely while the same depth keeps winning clearly, and at once when the load changes.

The max queue delay bounds the delay the batcher *chooses*: it counts from when the oldest
request could first have been sent — its arrival, or the moment an instance came free while it
waited — not the time it spent behind a busy instance, which any rule would have cost it.
Counting that time too would lock a closed loop into the split it exists to prevent: the one
client that missed a batch waits a whole batch for the next, so its budget is always spent
when the instance frees, and it leaves alone again.
"""

from dataclasses import dataclass, field

#: How long a peak of in-system rows is remembered once the load drops below it. A steady
#: loop refreshes its peak every batch; after the load drops, requests may be held for the old
#: peak (within the delay budget) this long.
PEAK_MEMORY_S = 0.2
#: Arrivals have stalled when none came for this many recent inter-arrival gaps.
STALL_GAPS = 4.0
#: Clients of a finished batch are expected back within this many recent turnaround times.
RETURN_TURNAROUNDS = 2.0
#: The shortest stall time, so one tiny gap does not end the wait at once.
MIN_STALL_S = 50e-6


#: Throughput at each pipeline depth is compared over epochs this long (seconds of serving).
EPOCH_S = 0.5
#: The better depth is kept this many epochs before the other one is measured again...
EXPLOIT_EPOCHS = 8
#: ...twice as many each time the other one is measured and loses again by CLEAR_WIN, up to this many.
#: Each measurement of the worse depth costs an epoch of its rate: when one depth serves far more (a
#: model whose batch of 16 costs what a batch of 8 does), measuring the other one in every ninth epoch
#: cost several percent of the throughput for nothing.
MAX_EXPLOIT_EPOCHS = 64
CLEAR_WIN = 1.20
#: An epoch whose loop (its largest) differs by more than this fraction from the last epoch at the same
#: depth is a new load: the other depth's rate no longer applies, so it is measured next, and the plan starts over.
NEW_LOAD = 0.25
#: Depth 2 must serve this much more than depth 1 to be kept: its batches cost more per row.
DEPTH_2_MARGIN = 1.03
#: A loop of fewer rows is never split.
MIN_SPLIT_ROWS = 4
#: An epoch also spans at least this many batches, so a slow model's is not decided by a handful.
EPOCH_BATCHES = 20


@dataclass(slots=True)
class DepthChooser:
    """Picks the pipeline depth (1 or 2 batches per loop) that serves the most rows per second."""

    depth: int = 1
    _epoch_start: float | None = None
    _last: float = 0.0
    _rows: int = 0
    _batches: int = 0
    _served: dict[int, float] = field(default_factory=dict)
    _plan: list[int] = field(default_factory=list)
    #: The depth that won the last comparison, and how many epochs it is kept for now.
    _best: int = 0
    _exploit: int = EXPLOIT_EPOCHS
    #: The largest loop of the epoch under way, and of the last epoch measured at each depth.
    _loop: int = 0
    _loops: dict[int, int] = field(default_factory=dict)

    def completed(self, now: float, rows: int, loop_rows: int) -> None:
        """A batch of ``rows`` finished while the loop held ``loop_rows``."""
        if loop_rows < MIN_SPLIT_ROWS:
            self.depth, self._epoch_start = 1, None
            return
        if self._epoch_start is None or now - self._last > EPOCH_S:
            self._epoch_start, self._rows, self._batches, self._loop = now, 0, 0, 0  # a pause in it: measures nothing
        else:
            self._rows += rows
            self._batches += 1
        self._last = now
        self._loop = max(self._loop, loop_rows)
        if now - self._epoch_start >= EPOCH_S and self._batches >= EPOCH_BATCHES:
            before = self._loops.get(self.depth)
            if before and abs(self._loop - before) > NEW_LOAD * before:
                self._served.clear()  # a new load: the other depth is measured next, against it
                self._loops.clear()
                self._plan.clear()
                self._best, self._exploit = 0, EXPLOIT_EPOCHS
            self._served[self.depth] = self._rows / (now - self._epoch_start)
            self._loops[self.depth] = self._loop
            self._epoch_start, self._rows, self._batches, self._loop = now, 0, 0, 0
            self.depth = self._next()

    def _next(self) -> int:
        if not self._plan:
            if len(self._served) < 2:
                return 2 if self.depth == 1 else 1
            one, two = self._served[1], self._served[2]
            best = 2 if two > DEPTH_2_MARGIN * one else 1
            clear = max(one, two) >= CLEAR_WIN * min(one, two)
            again = best == self._best and clear
            self._exploit = min(2 * self._exploit, MAX_EXPLOIT_EPOCHS) if again else EXPLOIT_EPOCHS
            self._best = best
            self._plan = [best] * self._exploit + [3 - best]
        return self._plan.pop(0)


@dataclass(slots=True)
class Decision:
    """``wait`` seconds before looking again; 0 means send a batch now."""

    wait: float


class BatchWindow:
    """Arrival statistics of one queue, and the rule that reads them."""

    def __init__(self, max_batch_size: int, max_delay_s: float, preferred: list[int]) -> None:
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max_delay_s
        self.preferred = sorted(p for p in preferred if p <= self.max_batch_size)
        self._last_arrival = 0.0
        self._gap = 0.0
        self._last_completion = 0.0
        self._turnaround = 0.0
        self._awaiting_return = False
        self._peak = 0
        self._peak_at = 0.0
        self.depth = DepthChooser()

    def arrived(self, now: float, in_system_rows: int) -> None:
        """Record an arrival; ``in_system_rows`` counts queued and executing rows, this one included."""
        if self._last_arrival:
            gap = now - self._last_arrival
            if gap < self.max_delay_s or not self._gap:
                self._gap = gap if not self._gap else 0.8 * self._gap + 0.2 * gap
        self._last_arrival = now
        if self._awaiting_return:
            sample = now - self._last_completion
            if sample < self.max_delay_s:
                self._turnaround = sample if not self._turnaround else 0.8 * self._turnaround + 0.2 * sample
            self._awaiting_return = False
        if in_system_rows >= self._peak or now - self._peak_at > PEAK_MEMORY_S:
            self._peak, self._peak_at = in_system_rows, now

    def completed(self, now: float, rows: int = 1) -> None:
        """Record a finished batch of ``rows``: its clients will send again after their turnaround time."""
        self._last_completion = now
        self._awaiting_return = True
        if self.max_delay_s > 0:
            self.depth.completed(now, rows, self._peak)

    def target(self, running_rows: int) -> int:
        """The batch worth waiting for: the rows in the loop that are not executing (split in two at
        pipeline depth 2), within limits."""
        depth = self.depth.depth
        target = min(self.max_batch_size, -(-(self._peak - running_rows) // depth))
        if self.preferred:
            fitting = [p for p in self.preferred if p <= target]
            target = fitting[-1] if fitting else self.preferred[0]
        return max(1, target)

    def decide(self, now: float, queued_rows: int, running_rows: int, oldest_enqueued: float) -> Decision:
        """Send now, or how long to wait for more rows, given an idle instance and a non-empty queue."""
        if queued_rows >= self.max_batch_size or self.max_delay_s <= 0:
            return Decision(0.0)
        budget_end = max(oldest_enqueued, self._last_completion) + self.max_delay_s
        if now >= budget_end or queued_rows >= self.target(running_rows):
            return Decision(0.0)
        stall_end = max(self._last_arrival + max(MIN_STALL_S, STALL_GAPS * self._gap),
                        self._last_completion + max(MIN_STALL_S, RETURN_TURNAROUNDS * self._turnaround))
        if now >= stall_end:
            return Decision(0.0)
        return Decision(min(budget_end, stall_end) - now)
