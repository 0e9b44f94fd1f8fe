"""The dispatch rule under a simulated closed loop (a simulated clock: deterministic, no sleeps).

N clients each send a one-row request, wait for the answer, think for a little while and send
again. One instance runs a batch in a fixed time. The naive rule (send whatever is queued as
soon as the instance is idle) splits the clients into alternating small and large batches;
the BatchWindow rule keeps them together.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import pytest

from gateway.scheduling.window import (
    EPOCH_S,
    EXPLOIT_EPOCHS,
    MAX_EXPLOIT_EPOCHS,
    PEAK_MEMORY_S,
    BatchWindow,
    DepthChooser,
)

Rule = Callable[[float, int, int, float], float]


def simulate(clients: int, batch_time: Callable[[int], float], think: Callable[[int], float],
             rule_for: Callable[[], Rule], window: BatchWindow | None, batches_to_run: int = 200) -> list[int]:
    """Run the closed loop and return the executed batch sizes."""
    return run_loop(clients, batch_time, think, rule_for, window, batches_to_run)[0]


def run_loop(clients: int, batch_time: Callable[[int], float], think: Callable[[int], float],
             rule_for: Callable[[], Rule], window: BatchWindow | None,
             batches_to_run: int = 200) -> tuple[list[int], float]:
    """Run the closed loop: the executed batch sizes, and the simulated time it took."""
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, client)
    seq = 0
    for client in range(clients):
        heapq.heappush(events, (think(client), seq, "arrive", client))
        seq += 1
    queue: list[tuple[float, int]] = []  # (enqueued, client)
    running: list[int] = []
    busy_until = None
    sizes: list[int] = []
    rule = rule_for()
    wake_at: float | None = None
    while len(sizes) < batches_to_run:
        now, _, kind, client = heapq.heappop(events)
        if kind == "arrive":
            queue.append((now, client))
            if window is not None:
                window.arrived(now, len(queue) + len(running))
        elif kind == "done":
            if window is not None:
                window.completed(now, len(running))
            for c in running:
                heapq.heappush(events, (now + think(c), seq, "arrive", c))
                seq += 1
            running = []
            busy_until = None
        elif kind == "wake" and now != wake_at:
            continue
        if busy_until is None and queue:
            wait = rule(now, len(queue), len(running), queue[0][0])
            if wait > 0:
                wake_at = now + wait
                heapq.heappush(events, (wake_at, seq, "wake", -1))
                seq += 1
                continue
            running = [c for _, c in queue[:16]]
            queue = queue[16:]
            sizes.append(len(running))
            busy_until = now + batch_time(len(running))
            heapq.heappush(events, (busy_until, seq, "done", -1))
            seq += 1
    return sizes, now


def naive() -> Rule:
    return lambda now, queued, running, oldest: 0.0


def windowed(window: BatchWindow) -> Callable[[], Rule]:
    return lambda: lambda now, queued, running, oldest: window.decide(now, queued, running, oldest).wait


def staggered(client: int) -> float:
    """Clients return 100 µs apart, as they do when the server writes 16 responses one by one."""
    return 0.0003 + 0.0001 * client


def slow_clients(client: int) -> float:
    """A loaded client machine: 2 ms to turn around, returns 250 µs apart."""
    return 0.002 + 0.00025 * client


#: Batch cost models: per-batch overhead plus per-row compute (seconds).
COMPUTE_BOUND = {"fixed": 0.0002, "per_row": 0.0016}    # like mlp_large: ~26 ms for 16 rows
OVERHEAD_BOUND = {"fixed": 0.0010, "per_row": 0.00005}  # like mlp_small: the batch's fixed cost dominates
FIXED_COST = {"fixed": 0.0050, "per_row": 0.0}          # like the tests' delay model: 5 ms whatever the rows
MODELS = [COMPUTE_BOUND, OVERHEAD_BOUND, FIXED_COST]
MODEL_IDS = ["compute-bound", "overhead-bound", "fixed-cost"]


def cost(model: dict[str, float]) -> Callable[[int], float]:
    return lambda rows: model["fixed"] + model["per_row"] * rows


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_naive_rule_splits_a_closed_loop(model: dict[str, float]) -> None:
    steady = simulate(16, cost(model), staggered, naive, None)[20:]
    assert min(steady) <= 4
    assert sum(steady) / len(steady) < 10


class FixedDepth:
    """Stands in for the DepthChooser: always the same pipeline depth."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def completed(self, now: float, rows: int, loop_rows: int) -> None:
        pass


def rows_per_second(model: dict[str, float], turnaround: Callable[[int], float], depth: int | None) -> float:
    """Rows served per simulated second over 2000 batches, by the chosen depth or a fixed one."""
    window = BatchWindow(max_batch_size=16, max_delay_s=0.005, preferred=[])
    if depth is not None:
        window.depth = FixedDepth(depth)  # type: ignore[assignment]
    sizes, seconds = run_loop(16, cost(model), turnaround, windowed(window), window, batches_to_run=2000)
    return sum(sizes) / seconds


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
@pytest.mark.parametrize("turnaround", [staggered, slow_clients], ids=["fast-clients", "slow-clients"])
def test_window_keeps_a_closed_loop_in_whole_or_half_batches(model: dict[str, float],
                                                             turnaround: Callable[[int], float]) -> None:
    window = BatchWindow(max_batch_size=16, max_delay_s=0.005, preferred=[])
    steady = simulate(16, cost(model), turnaround, windowed(window), window, batches_to_run=600)[20:]
    # Whole loops of 16, or halves of about 8 (a few odd ones while a depth is being measured):
    # never the naive rule's 1-and-15 split.
    assert min(steady) >= 3, sorted(steady)
    regular = steady.count(16) + sum(1 for size in steady if 6 <= size <= 10)
    assert regular >= 0.95 * len(steady), sorted(steady)


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
@pytest.mark.parametrize("turnaround", [staggered, slow_clients], ids=["fast-clients", "slow-clients"])
def test_the_chosen_depth_serves_about_as_much_as_the_better_fixed_one(model: dict[str, float],
                                                                        turnaround: Callable[[int], float]) -> None:
    """Measuring both depths now and then costs a little; choosing wrong would cost much more."""
    chosen = rows_per_second(model, turnaround, None)
    whole, halves = rows_per_second(model, turnaround, 1), rows_per_second(model, turnaround, 2)
    assert chosen >= 0.95 * max(whole, halves), (chosen, whole, halves)


def test_splitting_wins_when_the_turnaround_is_long_next_to_the_run() -> None:
    """Compute-bound, slow clients: one half computes while the other turns around."""
    window = BatchWindow(max_batch_size=16, max_delay_s=0.005, preferred=[])
    steady = simulate(16, cost(COMPUTE_BOUND), slow_clients, windowed(window), window, batches_to_run=600)[200:]
    assert steady.count(8) > steady.count(16)


def test_one_batch_wins_when_rows_cost_nothing_extra() -> None:
    """A fixed cost per batch whatever its rows: splitting would halve the rows per run."""
    window = BatchWindow(max_batch_size=16, max_delay_s=0.005, preferred=[])
    steady = simulate(16, cost(FIXED_COST), staggered, windowed(window), window, batches_to_run=600)[200:]
    assert steady.count(16) > steady.count(8)


def test_the_losing_depth_is_measured_ever_more_rarely_while_it_keeps_losing_clearly() -> None:
    """A fixed cost per batch: halves serve half as much. Measuring them one epoch in nine (as at
    first) would put about one batch in seven at half size; backing off makes it a few in a hundred."""
    window = BatchWindow(max_batch_size=16, max_delay_s=0.005, preferred=[])
    later = simulate(16, cost(FIXED_COST), staggered, windowed(window), window, batches_to_run=20000)[10000:]
    halves = sum(1 for size in later if 6 <= size <= 10)
    assert later.count(16) + halves == len(later)
    assert halves < 0.04 * len(later), halves


def serve_epochs(chooser: DepthChooser, now: float, epochs: int, loop_rows: int,
                 rows_per_s: dict[int, float]) -> tuple[float, list[int]]:
    """Feed ``chooser`` batches of 8 rows at each depth's rate for about ``epochs`` epochs: the time
    reached, and the depth each batch ran at."""
    depths = []
    for _ in range(epochs * 25):
        now += 8 / rows_per_s[chooser.depth]
        depths.append(chooser.depth)
        chooser.completed(now, 8, loop_rows)
    return now, depths


def test_a_new_load_is_measured_at_both_depths_at_once() -> None:
    """After a long run where depth 1 wins, the loop quadruples and now depth 2 serves more: the
    chooser does not wait out its plan of many epochs, it measures depth 2 within the next two."""
    chooser = DepthChooser()
    now, _ = serve_epochs(chooser, 0.0, 300, 16, {1: 400.0, 2: 200.0})
    assert chooser.depth == 1
    assert chooser._exploit == MAX_EXPLOIT_EPOCHS  # the plan is long by now
    batches_per_epoch = int(EPOCH_S * 400 / 8) + 1
    now, depths = serve_epochs(chooser, now, 8, 64, {1: 400.0, 2: 800.0})
    assert 2 in depths[: 3 * batches_per_epoch]
    assert depths[-batches_per_epoch:] == [2] * batches_per_epoch


def test_a_new_load_is_decided_after_one_epoch_at_each_depth() -> None:
    """The epoch that finds the new load and the one at the other depth decide it: the other depth's loop,
    recorded under the old load, does not make its epoch look like yet another new load."""
    chooser = DepthChooser()
    now, _ = serve_epochs(chooser, 0.0, 300, 16, {1: 400.0, 2: 200.0})
    _, depths = serve_epochs(chooser, now, 8, 64, {1: 400.0, 2: 800.0})
    first_at_2 = depths.index(2)
    assert 1 not in depths[first_at_2:], "depth 1 was measured again after the new load's comparison"


def test_a_close_contest_is_measured_as_often_as_at_first() -> None:
    """Depths within CLEAR_WIN of each other: each comparison may go either way, so neither earns a longer plan."""
    chooser = DepthChooser()
    serve_epochs(chooser, 0.0, 200, 16, {1: 400.0, 2: 420.0})
    assert chooser._exploit == EXPLOIT_EPOCHS


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_window_never_waits_past_the_oldest_requests_delay(clients: int) -> None:
    window = BatchWindow(max_batch_size=16, max_delay_s=0.002, preferred=[])
    for i in range(clients):
        window.arrived(i * 0.0001, i + 1)
    decision = window.decide(0.0100, 1, 0, oldest_enqueued=0.0085)
    assert decision.wait == 0  # the oldest request's 2 ms budget is spent


def test_time_behind_a_busy_instance_does_not_count_against_the_delay() -> None:
    window = BatchWindow(max_batch_size=16, max_delay_s=0.002, preferred=[])
    window.arrived(0.000, 16)   # sixteen rows in the loop
    window.arrived(0.001, 1)    # one request arrives while the instance runs a batch
    window.completed(0.030)     # the batch ends 29 ms later; its 15 clients are on their way back
    decision = window.decide(0.030, 1, 0, oldest_enqueued=0.001)
    assert 0 < decision.wait <= 0.002  # waits for them, at most 2 ms from the instance coming free
    assert window.decide(0.0321, 1, 0, oldest_enqueued=0.001).wait == 0


def test_a_lone_client_is_never_delayed() -> None:
    window = BatchWindow(max_batch_size=16, max_delay_s=0.010, preferred=[])
    for i in range(50):
        now = i * 0.003
        window.arrived(now, 1)
        assert window.decide(now, 1, 0, now).wait == 0


def test_waits_for_the_rest_of_the_loop_while_it_keeps_arriving() -> None:
    window = BatchWindow(max_batch_size=16, max_delay_s=0.010, preferred=[])
    window.arrived(0.0, 8)  # eight rows were in the system: the loop holds eight
    for i in range(3):
        window.arrived(0.001 + i * 0.0001, i + 1)
    decision = window.decide(0.0012, 3, 0, oldest_enqueued=0.001)
    assert 0 < decision.wait <= 0.010
    assert window.decide(0.0050, 3, 0, oldest_enqueued=0.001).wait == 0  # arrivals stalled: send


def test_rows_still_executing_are_not_waited_for() -> None:
    window = BatchWindow(max_batch_size=32, max_delay_s=0.010, preferred=[])
    window.arrived(0.0, 16)
    assert window.target(running_rows=8) == 8
    assert window.decide(0.0, 8, 8, 0.0).wait == 0


def test_preferred_sizes_snap_the_target_down() -> None:
    window = BatchWindow(max_batch_size=32, max_delay_s=0.010, preferred=[4, 8, 32])
    window.arrived(0.0, 13)
    assert window.target(0) == 8


def test_zero_delay_is_the_naive_rule() -> None:
    window = BatchWindow(max_batch_size=16, max_delay_s=0.0, preferred=[])
    window.arrived(0.0, 16)
    assert window.decide(0.0, 1, 0, 0.0).wait == 0


def test_a_shrunken_loop_is_forgotten_after_the_peak_memory() -> None:
    """Two clients, then one: within PEAK_MEMORY_S the lone client may wait for its partner;
    after it, it is sent at once."""
    window = BatchWindow(max_batch_size=16, max_delay_s=0.005, preferred=[])
    now = 0.0
    for _ in range(20):  # two clients in lockstep
        window.arrived(now, 1)
        window.arrived(now + 0.0001, 2)
        window.completed(now + 0.001)
        now += 0.0013
    later = now + PEAK_MEMORY_S + 0.001
    window.completed(later - 0.0003)
    window.arrived(later, 1)
    assert window.decide(later, 1, 0, later).wait == 0
