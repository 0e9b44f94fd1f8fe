"""The models' lifecycle: load every configured version into its framework's worker,
track each version's state, and reload them when their worker has to be restarted.
"""

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gateway.histogram import Histogram
from gateway.logs import log_event
from gateway.protocol.errors import NotFound, Unavailable
from gateway.repository.config import ModelConfig
from gateway.repository.layout import ModelEntry, scan_repository
from gateway.repository.signature import Signature, SignatureMismatch, resolve_signature
from gateway.scheduling.scheduler import Scheduler
from gateway.scheduling.stats import ModelStats
from gateway.workers.ipc import Execute, ExecuteResult, LoadModel
from gateway.workers.process import WorkerCallFailed, WorkerProcess, client_error

log = logging.getLogger("tensorgate.repository")

#: Waits before restarting a worker that keeps dying (the first restart is immediate).
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that stayed up this long is healthy again: its next death restarts it at once.
_STABLE_AFTER_S = 60.0


class State(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelVersion:
    """One version of one model, as served. ``version`` is None for a model whose config is unusable."""

    name: str
    version: int | None
    entry: ModelEntry
    state: State = State.LOADING
    reason: str = ""
    signature: Signature | None = None
    load_seconds: float | None = None
    versions: tuple[str, ...] = field(default=())
    scheduler: Scheduler | None = None
    loads_succeeded: int = 0
    loads_failed: int = 0
    load_time: Histogram = field(default_factory=Histogram)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def config(self) -> ModelConfig:
        assert self.entry.config is not None, "only loadable versions have a config"
        return self.entry.config

    @property
    def label(self) -> str:
        return f"'{self.name}'" + (f" version {self.version}" if self.version is not None else "")


class ModelManager:
    """Owns the repository's models and the worker processes that run them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[str, list[ModelVersion]] = {}
        self._workers: dict[str, WorkerProcess] = {}
        self._starts: dict[str, asyncio.Task[WorkerProcess]] = {}
        self._restarts: dict[str, int] = {}
        self._crash_streak: dict[str, tuple[int, float]] = {}
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    async def load_all(self) -> None:
        """Scan the repository and load every version; failures are recorded, never raised."""
        loads = []
        for entry in scan_repository(self.root):
            versions = [ModelVersion(entry.name, v, entry) for v in entry.versions] or [
                ModelVersion(entry.name, None, entry, State.UNAVAILABLE, entry.error or "no versions")
            ]
            names = tuple(str(v) for v in entry.versions)
            for mv in versions:
                mv.versions = names
                if mv.state is State.UNAVAILABLE:
                    log_event(log, "model_load_failed", level=logging.ERROR, model=mv.name, reason=mv.reason)
                else:
                    loads.append(self._load(mv))
            self._models[entry.name] = versions
        await asyncio.gather(*loads)

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a request names, or the highest served version; NotFound otherwise."""
        versions = self._models.get(name)
        if versions is None:
            raise NotFound(f"unknown model '{name}'")
        if not version:
            return versions[-1]
        for mv in versions:
            if str(mv.version) == version:
                return mv
        served = ", ".join(str(mv.version) for mv in versions if mv.version is not None) or "none"
        raise NotFound(f"model '{name}' has no version '{version}' (served versions: {served})")

    def versions_of(self, name: str) -> list[ModelVersion]:
        self.get(name)  # NotFound for an unknown model
        return list(self._models[name])

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in sorted(self._models) for mv in self._models[name]]

    def all_ready(self) -> bool:
        return bool(self._models) and all(mv.state is State.READY for mv in self.all_versions())

    async def execute(self, mv: ModelVersion, inputs: dict[str, np.ndarray], outputs: list[str]) -> ExecuteResult:
        """Run one batch of ``mv`` in its worker; errors come back as client-facing errors."""
        if self._closing:
            raise Unavailable(f"model '{mv.name}': the server is shutting down")
        worker = self._workers.get(mv.config.framework)
        if worker is None:
            raise Unavailable(f"model '{mv.name}': its runtime worker is not running")
        try:
            result: ExecuteResult = await worker.call(Execute(mv.key, inputs, outputs), mv.name)
            return result
        except WorkerCallFailed as exc:
            raise client_error(exc, mv.name) from None

    async def close(self) -> None:
        self._closing = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in self._workers.values()))

    def worker_pids(self) -> dict[str, int | None]:
        return {framework: w.pid for framework, w in self._workers.items()}

    def worker_alive(self, framework: str) -> bool:
        worker = self._workers.get(framework)
        return worker is not None and worker.alive

    async def _worker(self, framework: str) -> WorkerProcess:
        """The framework's worker, started on first use (concurrent callers share one start)."""
        start = self._starts.get(framework)
        if start is None:
            start = asyncio.ensure_future(self._start_worker(framework))
            self._starts[framework] = start
        return await start

    async def _start_worker(self, framework: str) -> WorkerProcess:
        worker = WorkerProcess(framework, self._worker_exited)
        await worker.start()
        self._workers[framework] = worker
        return worker

    async def _load(self, mv: ModelVersion) -> None:
        config = mv.config
        path = mv.entry.path / str(mv.version)
        spec = LoadModel(
            key=mv.key, model_name=mv.name, path=str(path), platform=config.platform,
            max_batch_size=config.max_batch_size, device=config.instances.device,
            instances=config.instances.count, parameters=dict(config.parameters),
            inputs=[(t.name, t.datatype) for t in config.inputs] if config.inputs else None,
            outputs=[(t.name, t.datatype) for t in config.outputs] if config.outputs else None,
            preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_sizes)
            if config.dynamic_batching else (),
            filename=config.default_model_filename,
        )
        mv.state, mv.reason = State.LOADING, ""
        started = time.perf_counter()
        try:
            worker = await self._worker(config.framework)
            model_signature = await worker.call(spec, mv.name)
            mv.signature = resolve_signature(config, model_signature, str(path))
        except (WorkerCallFailed, SignatureMismatch) as exc:
            mv.state, mv.reason = State.UNAVAILABLE, str(exc)
        except Exception as exc:
            mv.state, mv.reason = State.UNAVAILABLE, f"{path}: {exc}"
        else:
            mv.state = State.READY
            if mv.scheduler is None:
                mv.scheduler = self._scheduler(mv)
        mv.load_seconds = time.perf_counter() - started
        mv.load_time.observe(mv.load_seconds)
        if mv.state is State.READY:
            mv.loads_succeeded += 1
        else:
            mv.loads_failed += 1
        if mv.state is State.READY:
            log_event(log, "model_loaded", model=mv.name, version=mv.version, platform=config.platform,
                      seconds=mv.load_seconds)
        else:
            log_event(log, "model_load_failed", level=logging.ERROR, model=mv.name, version=mv.version,
                      reason=mv.reason)

    def _scheduler(self, mv: ModelVersion) -> Scheduler:
        config = mv.config

        async def execute(inputs: dict[str, np.ndarray], outputs: list[str]) -> ExecuteResult:
            return await self.execute(mv, inputs, outputs)

        return Scheduler(mv.label, config.max_batch_size, config.instances.count, config.dynamic_batching,
                         execute, ModelStats(mv.name, str(mv.version)))

    def _worker_exited(self, worker: WorkerProcess) -> None:
        if self._closing:
            return
        task = asyncio.get_running_loop().create_task(self._restart(worker.framework))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self, framework: str) -> None:
        affected = [mv for mv in self.all_versions()
                    if mv.version is not None and mv.config.framework == framework]
        for mv in affected:
            mv.state, mv.reason = State.LOADING, f"the {framework} runtime worker is restarting"
        self._restarts[framework] = self._restarts.get(framework, 0) + 1
        streak, last = self._crash_streak.get(framework, (0, 0.0))
        now = time.monotonic()
        streak = 0 if now - last > _STABLE_AFTER_S else streak
        self._crash_streak[framework] = (streak + 1, now)
        if streak:
            await asyncio.sleep(_RESTART_BACKOFF_S[min(streak - 1, len(_RESTART_BACKOFF_S) - 1)])
        self._workers.pop(framework, None)
        self._starts.pop(framework, None)
        log_event(log, "worker_restarting", framework=framework, restarts=self._restarts[framework])
        await asyncio.gather(*(self._load(mv) for mv in affected))

    @property
    def restarts(self) -> dict[str, int]:
        return dict(self._restarts)
