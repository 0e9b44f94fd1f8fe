"""The server's own statistics (``GET /v2/models/{m}/stats``, Triton's shape) and their change over a run."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    inference_count: int = 0
    execution_count: int = 0
    success: int = 0
    fail: int = 0
    queue_ns: int = 0
    queue_count: int = 0
    #: batch size -> (executions, compute_infer ns summed over those executions)
    batches: dict[int, tuple[int, int]] = field(default_factory=dict)

    def minus(self, before: StatsSnapshot) -> StatsDelta:
        batches = {}
        for size, (count, ns) in self.batches.items():
            old_count, old_ns = before.batches.get(size, (0, 0))
            if count > old_count:
                batches[size] = (count - old_count, ns - old_ns)
        return StatsDelta(
            inferences=self.inference_count - before.inference_count,
            executions=self.execution_count - before.execution_count,
            success=self.success - before.success,
            fail=self.fail - before.fail,
            queue_ns=self.queue_ns - before.queue_ns,
            queue_count=self.queue_count - before.queue_count,
            batches=dict(sorted(batches.items())),
        )


@dataclass(frozen=True, slots=True)
class StatsDelta:
    """What the server did during a run."""

    inferences: int
    executions: int
    success: int
    fail: int
    queue_ns: int
    queue_count: int
    batches: dict[int, tuple[int, int]]

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0

    @property
    def mean_queue_ms(self) -> float:
        return self.queue_ns / self.queue_count / 1e6 if self.queue_count else 0.0

    @property
    def mean_compute_ms(self) -> float:
        """The worker's time per executed batch, as the gateway measured it (compute_infer)."""
        count = sum(c for c, _ in self.batches.values())
        return sum(ns for _, ns in self.batches.values()) / count / 1e6 if count else 0.0

    def histogram(self) -> dict[int, int]:
        return {size: count for size, (count, _) in self.batches.items()}


def fetch(http_url: str, model: str, timeout: float = 10.0) -> StatsSnapshot:
    """The model's statistics; of its highest version when several are served (a request that names no
    version, as the harness's, goes there)."""
    with urllib.request.urlopen(f"{http_url}/v2/models/{model}/stats", timeout=timeout) as reply:
        document: dict[str, Any] = json.load(reply)
    entries = document["model_stats"]
    if not entries:
        raise RuntimeError(f"the server's statistics hold no version of {model}")
    entry = max(entries, key=lambda e: int(e["version"]) if str(e.get("version", "")).isdigit() else -1)
    stats = entry["inference_stats"]
    return StatsSnapshot(
        inference_count=int(entry["inference_count"]),
        execution_count=int(entry["execution_count"]),
        success=int(stats["success"]["count"]),
        fail=int(stats["fail"]["count"]),
        queue_ns=int(stats["queue"]["ns"]),
        queue_count=int(stats["queue"]["count"]),
        batches={int(b["batch_size"]): (int(b["compute_infer"]["count"]), int(b["compute_infer"]["ns"]))
                 for b in entry["batch_stats"]},
    )
