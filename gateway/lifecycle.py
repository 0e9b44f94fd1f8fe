"""Models through their lifecycle: loaded, warmed up, switched in, drained and unloaded, while serving.

The one place that turns repository folders into served models and back, in the supervisor:

- **Control modes** (Triton's): ``none`` loads every model at start and changes nothing later;
  ``poll`` does the same, then rescans every ``--repository-poll-secs`` and loads, reloads or
  unloads what changed; ``explicit`` loads the ``--load-model`` names at start and then only what
  the repository API asks for (``load``, ``unload``).
- **Zero-downtime changes.** A (re)load of a model builds each version that needs it as a new
  *instance* in its worker, under a new key (``name:version:generation``), and warms it up,
  while the instance in the table keeps serving. Only when every new instance is ready does the
  model switch: one table, published to every frontend and acknowledged (``publish``). The
  instances it replaced are then unloaded in the background: the worker waits until every
  frontend's data connection has *fenced* that table's generation (so no request for the old key
  can still be on its way), lets the requests it already accepted finish, and frees it.
- **A failed load changes nothing that serves.** If any new instance of a model fails to load,
  to warm up, or contradicts its config, the model keeps its serving instances, the instances
  that did load are freed, and the reason is in the index, the log (``model_load_failed``) and
  ``loads_failed``. Only a model with nothing serving shows the failed versions as UNAVAILABLE.
- **Unload** takes the model out of the table at once (UNAVAILABLE, reason "unloaded"; new
  requests get 503), then drains and frees its instances the same way.

Each model has one lock: a load, an unload, a poll's change and a worker restart's reload of the
same model happen one after the other, never interleaved. Different models change in parallel.
"""

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.contract import (
    UNLOADED,
    LoadModel,
    SchedulerOptions,
    WarmUp,
    WarmupInput,
    WarmupSample,
    model_name_problem,
)
from gateway.logs import log_event
from gateway.protocol.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gateway.repository.config import ConfigError, DynamicBatchingConfig, ModelConfig
from gateway.repository.layout import (
    WARMUP_FOLDER,
    ModelEntry,
    entry_for,
    fingerprint,
    model_folders,
    read_model,
    scan_repository,
    version_prints,
)
from gateway.repository.pbtxt import load_override
from gateway.repository.repository import Model, ModelVersion, Repository, State
from gateway.repository.signature import SignatureMismatch, resolve_signature
from gateway.workers.ipc import CallFailed, ConnectionGone
from gateway.workers.pool import WorkerPool

log = logging.getLogger("tensorgate.repository")

#: Triton's answer to a load or unload outside explicit mode (tritonclient users match on it).
NOT_EXPLICIT = "explicit model load / unload is not allowed if polling is enabled"

CONTROL_MODES = ("none", "poll", "explicit")


class WarmupError(Exception):
    """A model's warm-up samples do not fit its signature."""


class ModelLifecycle:
    """Loads, reloads and unloads the repository's models through the pool; keeps their states current."""

    def __init__(self, repository: Repository, pool: WorkerPool, on_change: Callable[[], None],
                 publish: Callable[[], Awaitable[int]] | None = None, mode: str = "none") -> None:
        self.repository = repository
        self.pool = pool
        self.mode = mode
        #: Set when the server starts draining: no more changes.
        self.closing = False
        self._on_change = on_change
        self._publish = publish or self._publish_later
        self._generations = itertools.count(1)
        self._retiring: set[asyncio.Task[None]] = set()
        #: (model, framework) whose load the framework's worker cut short by exiting: retried on its restart.
        self._cut: set[tuple[str, str]] = set()

    async def _publish_later(self) -> int:
        self._on_change()
        return 0

    # --- entry points --------------------------------------------------------------------------------

    async def start(self, load_models: tuple[str, ...] = ()) -> None:
        """The first load: every model (none, poll), or the ``--load-model`` names (explicit; ``*``: all).

        Failures are recorded and logged, never raised.
        """
        scanned = await asyncio.to_thread(self._scan_with_prints, self.mode == "poll")
        by_name = {entry.name: entry for entry, _ in scanned}
        for entry, print_ in scanned:
            self.repository.model(entry.name).scanned = print_
        if self.mode == "explicit":
            names = list(by_name) if "*" in load_models else list(load_models)
        else:
            names = list(by_name)
        await asyncio.gather(*(self._start_one(name, by_name.get(name)) for name in names))

    async def _start_one(self, name: str, entry: ModelEntry | None) -> None:
        model = self.repository.model(name)
        model.wanted = True
        async with model.lock:
            if entry is None:  # --load-model names a folder that is not there
                reason = f"--load-model {name}: no folder '{name}' in the model repository {self.repository.root}"
                model.problem = ModelVersion(name, None, ModelEntry(name, self.repository.root / name, None, (),
                                                                    reason), State.UNAVAILABLE, reason)
                model.problem.loads_failed += 1
                log_event(log, "model_load_failed", level=logging.ERROR, model=name, reason=reason)
                self._on_change()
                return
            await self._update(model, entry, force=True, reread=True)

    async def load(self, name: str, override: str | None = None) -> None:
        """The repository API's load: (re)load ``name`` now, from its folder or with ``override`` (Triton's
        ModelConfig as JSON). Returns once the new instances serve in every frontend."""
        self._check_control(name)
        root = self.repository.root
        if not await asyncio.to_thread((root / name).is_dir):
            log_event(log, "model_load_failed", level=logging.ERROR, model=name, reason="no such folder")
            raise NotFound(f"failed to load '{name}': no model folder '{name}' in the model repository")
        model = self.repository.model(name)
        async with model.lock:
            if override is None:
                entry = await asyncio.to_thread(read_model, root, name)
            else:
                entry = await asyncio.to_thread(self._override_entry, name, override)
            if entry is None:
                raise NotFound(f"failed to load '{name}': its folder left the model repository")
            model.wanted = True
            log_event(log, "model_load_requested", model=name, override=override is not None)
            failure = await self._update(model, entry, force=True)
        if failure is not None:
            raise Conflict(f"failed to load '{name}': {failure}")

    def _override_entry(self, name: str, override: str) -> ModelEntry | None:
        folder = self.repository.root / name
        if not folder.is_dir():
            return None
        try:
            config = load_override(override, folder, name)
        except ConfigError as exc:
            log_event(log, "model_load_failed", level=logging.ERROR, model=name, reason=str(exc))
            raise InvalidRequest(str(exc)) from None
        return entry_for(folder, config, None)

    async def unload(self, name: str) -> None:
        """The repository API's unload: out of the table at once, drained and freed in the background."""
        self._check_control(name)
        model = self.repository.models.get(name)
        if model is None:
            if (self.repository.root / name).is_dir():
                return  # in the repository, never loaded: nothing to do (Triton answers success too)
            raise NotFound(f"failed to unload '{name}': no model '{name}' in the model repository")
        async with model.lock:
            model.wanted = False
            retire = [(mv, mv.config.framework, mv.key) for mv in model.serving()]
            for mv in model.versions.values():
                mv.state, mv.reason, mv.serving = State.UNAVAILABLE, UNLOADED, False
            model.problem = None
            generation = await self._publish()
            log_event(log, "model_unloaded", model=name, versions=",".join(str(mv.version) for mv, _, _ in retire))
            for mv, framework, key in retire:
                self._retire(mv, framework, key, generation)

    async def refresh_folders(self) -> bool:
        """Know every model folder for the index (folders added or removed since start); True if any changed.

        Only models nobody loaded are added or dropped here: what is loaded changes by load, unload or poll.
        """
        names = await asyncio.to_thread(model_folders, self.repository.root)
        changed = False
        for name in names - self.repository.models.keys():
            self.repository.model(name)
            changed = True
        for name, model in list(self.repository.models.items()):
            if name not in names and not model.wanted and not model.records() and not model.lock.locked():
                del self.repository.models[name]
                changed = True
        return changed

    async def poll(self) -> None:
        """poll mode: load what is new or changed in the repository, unload what is gone."""
        if self.closing:
            return
        entries = await asyncio.to_thread(self._scan_with_prints, True)
        present = {entry.name for entry, _ in entries}
        changes = [self._remove(model) for name, model in list(self.repository.models.items()) if name not in present]
        for entry, print_ in entries:
            model = self.repository.model(entry.name)
            model.wanted = True
            if model.scanned != print_:
                changes.append(self._poll_one(model, entry, print_))
        await asyncio.gather(*changes)

    def _printed_then_read(self, entry: ModelEntry) -> tuple[dict[int, str], ModelEntry]:
        """The folder's version fingerprints, then the folder read afresh (the scan's entry if it is gone)."""
        prints = version_prints(entry.path)
        return prints, read_model(self.repository.root, entry.name) or entry

    def _scan_with_prints(self, prints: bool) -> list[tuple[ModelEntry, str]]:
        """Every model folder, with its fingerprint when ``prints`` (poll mode compares them)."""
        return [(entry, fingerprint(entry.path) if prints else "") for entry in scan_repository(self.repository.root)]

    async def _poll_one(self, model: Model, entry: ModelEntry, print_: str) -> None:
        async with model.lock:
            if self.closing or self.repository.models.get(model.name) is not model:
                return
            log_event(log, "model_changed", model=model.name)
            await self._update(model, entry, force=False, reread=True)
            model.scanned = print_

    async def _remove(self, model: Model) -> None:
        """The model's folder is gone: take it out of the table, then drain and free what served."""
        async with model.lock:
            if self.repository.models.get(model.name) is not model:
                return
            retire = [(mv, mv.config.framework, mv.key) for mv in model.serving()]
            del self.repository.models[model.name]
            generation = await self._publish()
            log_event(log, "model_removed", model=model.name)
            for mv, framework, key in retire:
                self._retire(mv, framework, key, generation)

    async def reload_framework(self, framework: str) -> None:
        """The framework's worker died: its instances are gone; load what served into the new one."""
        affected: list[Model] = []
        reason = f"the {framework} runtime worker is restarting"
        for model in self.repository.models.values():
            hit = [mv for mv in model.serving() if mv.config.framework == framework]
            for mv in hit:
                mv.state, mv.reason, mv.serving = State.LOADING, reason, False
            if hit or (model.name, framework) in self._cut:
                affected.append(model)
        self._cut = {cut for cut in self._cut if cut[1] != framework}
        self._on_change()
        await asyncio.gather(*(self._reload(model, framework) for model in affected))

    async def _reload(self, model: Model, framework: str) -> None:
        async with model.lock:
            if not model.wanted or self.repository.models.get(model.name) is not model:
                return
            records = [mv for mv in model.records() if mv.version is not None and mv.config.framework == framework]
            if records:
                await self._update(model, records[0].entry, force=True)

    async def close(self) -> None:
        """Stop changing models (the server is stopping); background unloads are abandoned."""
        self.closing = True
        for task in list(self._retiring):
            task.cancel()

    def _check_control(self, name: str) -> None:
        if self.mode != "explicit":
            raise Unavailable(f"{NOT_EXPLICIT} (this server runs with --model-control-mode {self.mode}; loading "
                              f"and unloading '{name}' through the API needs --model-control-mode explicit)")
        if self.closing:
            raise Unavailable("the server is shutting down; models are not loaded or unloaded any more")
        problem = model_name_problem(name)
        if problem is not None:
            raise InvalidRequest(problem)

    # --- one model's change --------------------------------------------------------------------------

    async def _update(self, model: Model, entry: ModelEntry, force: bool, reread: bool = False) -> str | None:
        """Serve ``entry`` for ``model`` (its lock held): load what is new or changed (everything with
        ``force``) beside what serves, then switch; None on success, else why not.

        ``reread`` (an entry from the scan): take the fingerprints, then read the folder again and serve
        that. The scan read it before, and a file written in between would be recorded as loaded
        while the instance ran the older file: poll mode would see no change, and the older file
        would serve for good (a config caught half-written by the scan: a broken model for good).
        """
        if reread:
            prints, entry = await asyncio.to_thread(self._printed_then_read, entry)
        serving_before = model.serving()
        if entry.config is None or not entry.versions:
            return self._unusable(model, entry, serving_before)
        if not reread:
            prints = await asyncio.to_thread(lambda: {v: fingerprint(entry.path, v) for v in entry.versions})
        names = tuple(str(v) for v in entry.versions)
        records: dict[int, ModelVersion] = {}
        todo: list[tuple[ModelVersion, ModelVersion]] = []
        for version in entry.versions:
            mv = model.versions.get(version)
            if mv is None:
                mv = ModelVersion(model.name, version, entry, versions=names)
            elif not mv.serving:
                mv.entry, mv.state, mv.reason = entry, State.LOADING, ""
            records[version] = mv
            if mv.serving and not force and mv.fingerprint == prints.get(version):
                continue
            candidate = ModelVersion(model.name, version, entry, versions=names, generation=next(self._generations))
            todo.append((mv, candidate))
        model.problem = None
        for version, mv in records.items():
            model.versions.setdefault(version, mv)  # new versions show as LOADING beside the serving ones
        self._on_change()

        outcomes = await asyncio.gather(*(self._load_instance(candidate) for _, candidate in todo))
        failures: list[tuple[ModelVersion, str]] = []
        loaded: list[tuple[ModelVersion, ModelVersion]] = []
        for (mv, candidate), failure in zip(todo, outcomes, strict=True):
            self._count_load(mv, candidate, failure)
            if failure is None:
                loaded.append((mv, candidate))
            else:
                failures.append((mv, failure))
        summary = "; ".join(f"version {mv.version}: {why}" for mv, why in failures) or None

        if failures and serving_before:
            # Keep what serves; free what loaded for nothing; say why on the versions concerned.
            for mv, candidate in loaded:
                self._retire(mv, candidate.config.framework, candidate.key, 0)
                if not mv.serving and candidate.version is not None:
                    model.versions.pop(candidate.version, None)
            for mv, why in failures:
                if mv.serving:
                    mv.reason = f"a reload failed, the previous instance still serves: {why}"
                else:
                    mv.state, mv.reason = State.UNAVAILABLE, why
            for mv in serving_before:
                if mv.version not in records:
                    mv.reason = f"not replaced: {summary}"
            self._on_change()
            return summary

        retire: list[tuple[ModelVersion, str, str]] = []
        for mv, candidate in loaded:
            if mv.serving:
                retire.append((mv, mv.config.framework, mv.key))
            mv.entry, mv.generation, mv.signature = candidate.entry, candidate.generation, candidate.signature
            mv.fingerprint = prints.get(candidate.version or 0, "")
            mv.state, mv.reason, mv.serving = State.READY, "", True
        for mv, why in failures:  # nothing served before: the versions that loaded serve, these do not
            mv.state, mv.reason, mv.serving = State.UNAVAILABLE, why, False
        for mv in records.values():
            mv.versions = names
            if mv.serving and not any(mv is done for done, _ in loaded):
                mv.entry, mv.reason = entry, ""  # unchanged, still serving
        for version, mv in model.versions.items():
            if version not in records and mv.serving:
                retire.append((mv, mv.config.framework, mv.key))  # no longer selected
        model.versions = records
        generation = await self._publish()
        for mv, framework, key in retire:
            self._retire(mv, framework, key, generation)
        return summary

    def _unusable(self, model: Model, entry: ModelEntry, serving: list[ModelVersion]) -> str:
        """The folder cannot be loaded at all (config, versions): what serves keeps serving."""
        reason = entry.error or f"{entry.path}: no versions"
        log_event(log, "model_load_failed", level=logging.ERROR, model=model.name, reason=reason)
        if serving:
            for mv in serving:
                mv.loads_failed += 1
                mv.reason = f"a reload failed, the previous instance still serves: {reason}"
            model.versions = {mv.version: mv for mv in serving if mv.version is not None}
        else:
            problem = model.problem or ModelVersion(model.name, None, entry)
            problem.entry, problem.state, problem.reason = entry, State.UNAVAILABLE, reason
            problem.loads_failed += 1
            model.problem, model.versions = problem, {}
        self._on_change()
        return reason

    async def _load_instance(self, candidate: ModelVersion) -> str | None:
        """Load and warm up one new instance; None when it is ready to serve, else why not."""
        config = candidate.config
        framework = config.framework
        started = time.perf_counter()
        in_worker = False
        try:
            model_signature = await self.pool.load(framework, load_spec(candidate))
            in_worker = True
            candidate.signature = resolve_signature(config, model_signature, str(candidate.path))
            samples = warmup_samples(candidate)
            if samples:
                await self.pool.warm_up(framework, WarmUp(candidate.key, samples,
                                                          tuple(t.name for t in candidate.signature.outputs)))
                log_event(log, "model_warmed_up", model=candidate.name, version=candidate.version,
                          samples=len(samples), seconds=time.perf_counter() - started)
            failure = None
        except (CallFailed, SignatureMismatch, WarmupError) as exc:
            failure = str(exc)
        except ConnectionGone:
            failure = f"{candidate.path}: the {framework} worker exited while loading it"
            in_worker = False
            self._cut.add((candidate.name, framework))
        except Exception as exc:
            failure = f"{candidate.path}: {type(exc).__name__}: {exc}"
        candidate.load_seconds = time.perf_counter() - started
        if failure is not None and in_worker:
            self._retire(candidate, framework, candidate.key, 0, count=False)
        return failure

    def _count_load(self, mv: ModelVersion, candidate: ModelVersion, failure: str | None) -> None:
        seconds = candidate.load_seconds or 0.0
        mv.load_seconds = seconds
        mv.load_time.observe(seconds)
        if failure is None:
            mv.loads_succeeded += 1
            log_event(log, "model_loaded", model=mv.name, version=mv.version, platform=candidate.config.platform,
                      instance=candidate.key, seconds=seconds)
        else:
            mv.loads_failed += 1
            log_event(log, "model_load_failed", level=logging.ERROR, model=mv.name, version=mv.version,
                      reason=failure)

    def _retire(self, mv: ModelVersion, framework: str, key: str, generation: int, count: bool = True) -> None:
        """Unload instance ``key`` once no frontend can send it anything (table ``generation``), in the background."""
        task = asyncio.get_running_loop().create_task(self._unload_instance(mv, framework, key, generation, count))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _unload_instance(self, mv: ModelVersion, framework: str, key: str, generation: int,
                               count: bool) -> None:
        started = time.perf_counter()
        try:
            await self.pool.unload(framework, key, generation)
        except (ConnectionGone, CallFailed) as exc:
            log_event(log, "model_instance_unload_failed", level=logging.WARNING, model=mv.name,
                      version=mv.version, instance=key, reason=str(exc))
            return
        seconds = time.perf_counter() - started
        if count:
            mv.unloads += 1
            mv.unload_time.observe(seconds)
        log_event(log, "model_instance_unloaded", model=mv.name, version=mv.version, instance=key, seconds=seconds)


def warmup_samples(mv: ModelVersion) -> tuple[WarmupSample, ...]:
    """The config's warm-up samples, checked against the version's signature (WarmupError says what is wrong)."""
    config, signature = mv.config, mv.signature
    if not config.warmup or signature is None:
        return ()
    specs = {t.name: t for t in signature.inputs}
    samples = []
    for index, sample in enumerate(config.warmup):
        where = f"{mv.entry.path}: warmup[{index}]" + (f" '{sample.name}'" if sample.name else "")
        missing = sorted(specs.keys() - sample.inputs.keys())
        unknown = sorted(sample.inputs.keys() - specs.keys())
        if missing or unknown:
            raise WarmupError(f"{where}: " + "; ".join(
                ([f"no data for input(s) {', '.join(missing)}"] if missing else [])
                + ([f"the model has no input(s) {', '.join(unknown)}"] if unknown else [])))
        inputs = []
        for name, spec in specs.items():
            given = sample.inputs[name]
            if given.datatype is not None and given.datatype != spec.datatype:
                raise WarmupError(f"{where}: input '{name}' is {given.datatype} here and {spec.datatype} in the model")
            shape = tuple(given.shape) if given.shape is not None else spec.shape
            if not spec.accepts(shape):
                raise WarmupError(f"{where}: input '{name}' shape {list(shape)} does not fit the model's "
                                  f"{list(spec.shape)}")
            if any(d < 1 for d in shape):
                raise WarmupError(f"{where}: input '{name}' has variable dimensions {list(spec.shape)}; give the "
                                  f"sample's shape")
            file = str(mv.entry.path / WARMUP_FOLDER / given.file) if given.file else ""
            inputs.append(WarmupInput(name, spec.datatype, shape, given.source, file))
        samples.append(WarmupSample(sample.name or f"warmup[{index}]",
                                    sample.batch_size if config.max_batch_size else 1, sample.count, tuple(inputs)))
    return tuple(samples)


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
    """What the worker needs to load ``mv`` as instance ``mv.key`` and schedule its requests."""
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
        version=str(mv.version),
    )
