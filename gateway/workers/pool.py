"""The runtime worker processes: one per framework in use, started on first use, restarted when they die.

A worker that dies is restarted at once the first time and with a growing back-off while it
keeps dying; ``on_restarted`` then tells the owner to load its models again. Every worker gets
a fresh data address per start, so a frontend never mistakes a new worker for the old one.
"""

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from gateway.contract import LoadModel, ModelGauges, Signature, UnloadModel, WarmUp, WorkerSnapshot
from gateway.logs import log_event
from gateway.workers.process import ChildProcess

log = logging.getLogger("tensorgate.workers")

#: Waits before restarting a worker that keeps dying (the first restart is immediate).
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that stayed up this long is healthy again: its next death restarts it at once.
STABLE_AFTER_S = 60.0
#: A scrape gives up on a worker that does not answer its snapshot within this long.
SNAPSHOT_TIMEOUT_S = 10.0


class WorkerPool:
    """Starts, supervises and calls the runtime workers of one server."""

    def __init__(self, on_restarted: Callable[[str], Awaitable[None]], on_change: Callable[[], None],
                 log_level: str = "info", log_format: str = "text") -> None:
        self._log = [log_level, log_format]
        self._on_restarted = on_restarted
        self._on_change = on_change
        self._workers: dict[str, ChildProcess] = {}
        self._addresses: dict[str, str] = {}
        self._starts: dict[str, asyncio.Task[ChildProcess]] = {}
        self._generation = itertools.count()
        self.restarts: dict[str, int] = {}
        self._crash_streak: dict[str, tuple[int, float]] = {}
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def addresses(self) -> dict[str, str]:
        """Where each running worker takes data connections."""
        return {framework: self._addresses[framework] for framework, w in self._workers.items() if w.alive}

    def children(self) -> list[ChildProcess]:
        return list(self._workers.values())

    def frameworks(self) -> list[str]:
        return list(self._workers)

    def alive(self, framework: str) -> bool:
        worker = self._workers.get(framework)
        return worker is not None and worker.alive

    async def load(self, framework: str, spec: LoadModel) -> Signature | None:
        """Load a model version into its framework's worker (``CallFailed`` names the cause)."""
        worker = await self._worker(framework)
        signature: Signature | None = await worker.call(spec)
        return signature

    async def warm_up(self, framework: str, body: WarmUp) -> None:
        """Run a loaded instance's warm-up samples (``CallFailed`` names the sample and the cause)."""
        worker = await self._worker(framework)
        await worker.call(body)

    async def unload(self, framework: str, key: str, after_generation: int = 0) -> None:
        """Free instance ``key`` once every frontend has fenced table ``after_generation`` and its requests are done."""
        worker = self._workers.get(framework)
        if worker is not None and worker.alive:
            await worker.call(UnloadModel(key, after_generation))

    async def snapshot(self) -> dict[str, ModelGauges]:
        """Every hosted model version's statistics and queue gauges, from every live worker."""
        live = [w for w in self._workers.values() if w.alive]
        replies = await asyncio.gather(*(asyncio.wait_for(w.call(WorkerSnapshot()), SNAPSHOT_TIMEOUT_S)
                                         for w in live), return_exceptions=True)
        merged: dict[str, ModelGauges] = {}
        for reply in replies:
            if isinstance(reply, dict):
                merged.update(reply)
        return merged

    async def close(self) -> None:
        self._closing = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in self._workers.values()))

    async def _worker(self, framework: str) -> ChildProcess:
        """The framework's worker, started on first use (concurrent callers share one start)."""
        start = self._starts.get(framework)
        if start is None:
            start = asyncio.ensure_future(self._start(framework))
            self._starts[framework] = start
        return await start

    async def _start(self, framework: str) -> ChildProcess:
        address = f"tensorgate-{os.getpid()}-{framework}-{next(self._generation)}"
        worker = ChildProcess("worker", framework, "runtimes.worker", [framework, address, *self._log],
                             self._exited)
        await worker.start()
        self._workers[framework] = worker
        self._addresses[framework] = address
        self._on_change()
        return worker

    def _exited(self, worker: ChildProcess) -> None:
        if self._closing:
            return
        self._on_change()
        task = asyncio.get_running_loop().create_task(self._restart(worker.role))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self, framework: str) -> None:
        self.restarts[framework] = self.restarts.get(framework, 0) + 1
        streak, last = self._crash_streak.get(framework, (0, 0.0))
        now = time.monotonic()
        streak = 0 if now - last > STABLE_AFTER_S else streak
        self._crash_streak[framework] = (streak + 1, now)
        if streak:
            await asyncio.sleep(RESTART_BACKOFF_S[min(streak - 1, len(RESTART_BACKOFF_S) - 1)])
        self._workers.pop(framework, None)
        self._starts.pop(framework, None)
        log_event(log, "worker_restarting", framework=framework, restarts=self.restarts[framework])
        await self._on_restarted(framework)

