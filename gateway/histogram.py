"""A lock-free histogram for the event loop: one bisect and two adds per observation.

prometheus_client's own Histogram takes a lock and a label lookup per observation; ours are
plain attributes updated on the event loop and turned into Prometheus families only when
Prometheus scrapes (see gateway/metrics.py).
"""

from bisect import bisect_left

#: Seconds, from 100 µs to 60 s, about x2.5 apart.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Rows per executed batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, counts: list[int], total: float) -> None:
        """Merge another histogram's bucket counts and sum (same bounds) into this one."""
        for i, count in enumerate(counts):
            self.counts[i] += count
        self.sum += total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (upper bound, observations <= bound), ending with +Inf."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(total)))
        return out
