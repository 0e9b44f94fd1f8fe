"""Model versions through their lifecycle: configured, loading in a worker, ready or unavailable.

The one place that turns a repository entry into a loaded model: it builds the worker's
``LoadModel`` (with the scheduler's options from the config), checks the model's own
signature against the config, and records the outcome in the repository. When a worker has
to be restarted, its models go back to LOADING and are loaded into the new one.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.contract import LoadModel, SchedulerOptions
from gateway.logs import log_event
from gateway.repository.config import DynamicBatchingConfig, ModelConfig
from gateway.repository.repository import ModelVersion, Repository, State
from gateway.repository.signature import SignatureMismatch, resolve_signature
from gateway.workers.ipc import CallFailed, ConnectionGone
from gateway.workers.pool import WorkerPool

log = logging.getLogger("tensorgate.repository")


class ModelLifecycle:
    """Loads the repository's versions into the pool and keeps their states current."""

    def __init__(self, repository: Repository, pool: WorkerPool, on_change: Callable[[], None]) -> None:
        self.repository = repository
        self.pool = pool
        self._on_change = on_change

    async def load_all(self) -> None:
        """Scan the repository and load every version; failures are recorded, never raised."""
        to_load = self.repository.scan()
        for mv in self.repository.all_versions():
            if mv.state is State.UNAVAILABLE:
                log_event(log, "model_load_failed", level=logging.ERROR, model=mv.name, reason=mv.reason)
        self._on_change()
        await asyncio.gather(*(self._load(mv) for mv in to_load))

    async def reload_framework(self, framework: str) -> None:
        """The framework's worker died: load its models into a new one."""
        affected = [mv for mv in self.repository.all_versions()
                    if mv.version is not None and mv.config.framework == framework]
        for mv in affected:
            mv.state, mv.reason = State.LOADING, f"the {framework} runtime worker is restarting"
        self._on_change()
        await asyncio.gather(*(self._load(mv) for mv in affected))

    async def _load(self, mv: ModelVersion) -> None:
        config = mv.config
        mv.state, mv.reason = State.LOADING, ""
        started = time.perf_counter()
        try:
            model_signature = await self.pool.load(config.framework, load_spec(mv))
            mv.signature = resolve_signature(config, model_signature, str(mv.path))
        except (CallFailed, SignatureMismatch) as exc:
            mv.state, mv.reason = State.UNAVAILABLE, str(exc)
        except ConnectionGone:
            mv.state, mv.reason = State.UNAVAILABLE, f"{mv.path}: the {config.framework} worker exited while loading it"
        except Exception as exc:
            mv.state, mv.reason = State.UNAVAILABLE, f"{mv.path}: {exc}"
        else:
            mv.state = State.READY
        mv.load_seconds = time.perf_counter() - started
        mv.load_time.observe(mv.load_seconds)
        if mv.state is State.READY:
            mv.loads_succeeded += 1
            log_event(log, "model_loaded", model=mv.name, version=mv.version, platform=config.platform,
                      seconds=mv.load_seconds)
        else:
            mv.loads_failed += 1
            log_event(log, "model_load_failed", level=logging.ERROR, model=mv.name, version=mv.version,
                      reason=mv.reason)
        self._on_change()


def scheduler_options(label: str, config: ModelConfig) -> SchedulerOptions:
    """The scheduler's options from a model's config (its dynamic_batching, or the defaults)."""
    batching = config.dynamic_batching or DynamicBatchingConfig()
    return SchedulerOptions(
        label=label, max_batch_size=config.max_batch_size, instances=config.instances.count,
        max_queue_delay_s=batching.max_queue_delay_ms / 1000,
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes), max_queue_size=batching.max_queue_size,
        default_timeout_s=batching.default_timeout_ms / 1000, priority_levels=batching.priority_levels,
        default_priority=batching.default_priority,
    )


def load_spec(mv: ModelVersion) -> LoadModel:
    """What the worker needs to load ``mv`` and schedule its requests."""
    config = mv.config
    batching = config.dynamic_batching or DynamicBatchingConfig()
    return LoadModel(
        key=mv.key, model_name=mv.name, path=str(mv.path), platform=config.platform,
        max_batch_size=config.max_batch_size, device=config.instances.device, instances=config.instances.count,
        parameters=dict(config.parameters),
        inputs=[(t.name, t.datatype) for t in config.inputs] if config.inputs else None,
        outputs=[(t.name, t.datatype) for t in config.outputs] if config.outputs else None,
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes) if config.dynamic_batching else (),
        scheduling=scheduler_options(mv.label, config), filename=config.default_model_filename,
    )
