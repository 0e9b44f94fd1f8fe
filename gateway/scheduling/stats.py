"""Cumulative per-model-version statistics in the shape of Triton's statistics extension.

Durations are nanosecond totals with counts, so tools built for Triton (perf_analyzer's
server-side split, Model Analyzer) read ours. Updated by the scheduler once per request or
batch, in the event loop: plain integer adds, no locks.
"""

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway.histogram import BATCH_BUCKETS, Histogram
from gateway.protocol.errors import Unavailable

#: Why a request failed, with Triton's names (the ``reason`` label of ``nv_inference_request_failure``):
#: REJECTED by the scheduler (queue full, queue timeout), CANCELED, BACKEND (the model's run failed),
#: OTHER (anything else, e.g. a request the frontend refused before it reached the queue).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")



def failure_reason(exc: BaseException, executed: bool) -> str:
    """Triton's reason for a request that failed with ``exc``: the scheduler's refusals (queue full,
    queue timeout) are REJECTED; any other error is BACKEND once the request ran in a batch
    (``executed``), OTHER when it was refused before it was queued."""
    if isinstance(exc, Unavailable):
        return "REJECTED"
    return "BACKEND" if executed else "OTHER"


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """What Triton reports per model version: request outcomes, phases, and batches by size."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=lambda: defaultdict(BatchStats))
    #: ``fail.count`` split by reason (one of FAILURE_REASONS); the parts always add up to it.
    fail_reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    # Distributions for Prometheus (seconds; rows), read at scrape time.
    queue_seconds: Histogram = field(default_factory=Histogram)
    phase_seconds: dict[str, Histogram] = field(
        default_factory=lambda: {phase: Histogram() for phase in ("input", "infer", "output")})
    batch_rows: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))

    def record_failure(self, ns: int, reason: str = "OTHER") -> None:
        """One failed request, ``ns`` from its receipt to its answer."""
        self.fail.add(ns)
        self.fail_reasons[reason if reason in self.fail_reasons else "OTHER"] += 1

    def record_queue(self, ns: int) -> None:
        self.queue.add(ns)
        self.queue_seconds.observe(ns / 1e9)

    def record_batch(self, size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One executed batch of ``size`` rows made of ``requests`` requests."""
        self.batch_rows.observe(size)
        self.phase_seconds["input"].observe(input_ns / 1e9)
        self.phase_seconds["infer"].observe(infer_ns / 1e9)
        self.phase_seconds["output"].observe(output_ns / 1e9)
        self.execution_count += 1
        self.inference_count += size
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self.batches[size]
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)

    def as_dict(self) -> dict[str, Any]:
        """The Triton JSON shape (``model_stats`` entry)."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": b.compute_input.as_dict(),
                 "compute_infer": b.compute_infer.as_dict(), "compute_output": b.compute_output.as_dict()}
                for size, b in sorted(self.batches.items())
            ],
        }
