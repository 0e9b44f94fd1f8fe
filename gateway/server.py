"""The composition root: the supervisor process of ``tensorgate serve``.

::

    supervisor: repository + model lifecycle, worker pool, frontend pool, metrics port, drain
     ├─ frontend x N   REST and gRPC on the shared ports (SO_REUSEPORT): protocol work only
     └─ worker x F     one per framework: its models, each version's queue and batcher

The supervisor publishes a ModelTable (every version's state, signature, config, and where
each worker takes data connections) to every frontend whenever anything changes. Frontends
send requests straight to the workers, tensors through shared memory; nothing on the request
path passes through the supervisor. Models change while serving (``gateway.lifecycle``): by the
repository API in explicit mode (a frontend forwards the call here), or by polling the
repository in poll mode.

Shutdown on SIGTERM or SIGINT drains before it stops:

1. every frontend turns not-ready at once (``/v2/health/ready`` 503, gRPC ``ServerReady`` false
   and ``grpc.health.v1`` NOT_SERVING), so load balancers stop sending traffic;
2. they keep listening: new inference requests get 503 / UNAVAILABLE, while every request
   already accepted (queued, executing, or still being received) runs to its answer;
3. when none is left, or ``--drain-timeout`` seconds have passed, or a second signal came, the
   runtime workers stop (a request still running then gets 503 / UNAVAILABLE), the frontends
   close their listeners and exit, and so does the supervisor, with status 0.
"""

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import uvicorn

from gateway.access import AccessPolicy, load_policy
from gateway.contract import IndexRequest, LoadRequest, ModelTable, RepositoryReply, ServedModel, UnloadRequest
from gateway.frontends import FrontendPool, FrontendStartFailed
from gateway.lifecycle import ModelLifecycle
from gateway.logs import log_event
from gateway.metrics import ServerView, render
from gateway.process_metrics import children_families, own_families
from gateway.protocol.errors import TensorGateError
from gateway.repository.config import METADATA_PLATFORM
from gateway.repository.repository import Model, ModelVersion, Repository, State
from gateway.repository.triton_config import triton_config
from gateway.rest.guard import guarded_asgi
from gateway.settings import Settings
from gateway.tls import ReloadingContext, TlsError, TlsFiles, TlsMaterial, TlsWatcher, load, log_loaded
from gateway.workers.pool import WorkerPool

log = logging.getLogger("tensorgate.server")

#: How often the drain checks whether the last request has been answered.
_DRAIN_POLL_S = 0.05
#: After the drain, how long the transports get to send the answers already given (seconds).
_FINAL_GRACE_S = 1.0


class PortInUse(Exception):
    pass


class Supervisor:
    """Owns the repository, the workers and the frontends of one server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = Repository(settings.model_repo)
        self.pool = WorkerPool(self._worker_restarted, self._changed, settings.log_level, settings.log_format)
        self.lifecycle = ModelLifecycle(self.repository, self.pool, self._changed, self._publish_now,
                                        settings.model_control_mode)
        self.frontends = FrontendPool(settings, self.table, self._repository_call)
        self._loaded = False
        self._publishing: asyncio.Task[None] | None = None
        self._dirty = False
        self._generation = 0
        self._polling: asyncio.Task[None] | None = None

    def table(self) -> ModelTable:
        """The current table; every call a newer generation (see ``contract.Fence``)."""
        self._generation += 1
        served: list[ServedModel] = []
        for name in sorted(self.repository.models):
            model = self.repository.models[name]
            records = model.records()
            served.extend(_served(model, mv) for mv in records)
            if not records:
                served.append(_not_loaded(name))
        return ModelTable(tuple(served), self.pool.addresses, self._loaded, self._generation,
                          self.settings.model_control_mode)

    async def load(self) -> None:
        await self.lifecycle.start(self.settings.load_models)
        self._loaded = True
        await self.frontends.publish()
        if self.settings.model_control_mode == "poll":
            self._polling = asyncio.get_running_loop().create_task(self._poll())

    async def stop_changes(self) -> None:
        """The server is stopping: no more loads, unloads or polls."""
        if self._polling is not None:
            self._polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._polling
        await self.lifecycle.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.lifecycle.poll()
            except Exception as exc:  # a poll that fails (e.g. the repository unmounted) is retried next time
                log_event(log, "repository_poll_failed", level=logging.ERROR, reason=f"{type(exc).__name__}: {exc}")

    async def _repository_call(self, body: LoadRequest | UnloadRequest | IndexRequest) -> RepositoryReply:
        """A client's load, unload or index, forwarded by a frontend."""
        try:
            if isinstance(body, LoadRequest):
                await self.lifecycle.load(body.name, body.config)
            elif isinstance(body, UnloadRequest):
                await self.lifecycle.unload(body.name)
            elif await self.lifecycle.refresh_folders():
                await self._publish_now()
            else:
                await self.frontends.settled()  # an index never shows a switch some frontend has not made
        except TensorGateError as exc:
            return RepositoryReply(type(exc).__name__, exc.message)
        return RepositoryReply()

    async def _publish_now(self) -> int:
        """Publish the table now; returns its generation once every frontend has it."""
        return await self.frontends.publish()

    def _changed(self) -> None:
        """Something the frontends show changed: publish the table (coalescing bursts)."""
        self._dirty = True
        if self._publishing is None or self._publishing.done():
            self._publishing = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        while self._dirty:
            self._dirty = False
            await self.frontends.publish()

    async def _worker_restarted(self, framework: str) -> None:
        await self.lifecycle.reload_framework(framework)

    async def view(self) -> ServerView:
        """What a metrics scrape reports, from every process."""
        frontends, models, children = await asyncio.gather(
            self.frontends.snapshots(), self.pool.snapshot(),
            children_families([*self.frontends.children(), *self.pool.children()]))
        return ServerView(self.repository.all_versions(), frontends, models, {"supervisor": own_families(), **children},
                          {f: self.pool.alive(f) for f in self.pool.frameworks()}, dict(self.pool.restarts))

    async def metrics_app(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """The metrics port: every path answers the Prometheus text exposition."""
        if scope["type"] != "http":
            return
        body = render(await self.view(), self.settings.metrics_compat)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body})


def _served(model: Model, mv: ModelVersion) -> ServedModel:
    loadable = mv.version is not None and mv.entry.config is not None
    # Readiness waits for what is meant to serve: not for what was unloaded, nor for a version that
    # failed to load while others of the model still serve.
    required = model.wanted and (mv.serving or not model.serving())
    return ServedModel(
        name=mv.name, version=mv.version, versions=mv.versions, state=mv.state.value, reason=mv.reason,
        key=mv.key, framework=mv.config.framework if loadable else "",
        platform=METADATA_PLATFORM[mv.config.platform] if loadable else "",
        max_batch_size=mv.config.max_batch_size if loadable else 0, signature=mv.signature,
        config=triton_config(mv) if loadable and mv.state is State.READY else {}, required=required,
    )


def _not_loaded(name: str) -> ServedModel:
    """A model in the repository that nobody has loaded (explicit mode): Triton's index lists its name only."""
    return ServedModel(name=name, version=None, versions=(), state="", reason="not loaded", key="", framework="",
                       platform="", max_batch_size=0, signature=None, config={}, required=False)


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the supervisor owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse to start on a port another process holds (SO_REUSEPORT would silently share it)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"{what} port {port} on {host} is already in use") from None
            raise


async def serve(settings: Settings, policy: AccessPolicy | None = None) -> int:
    """Run the server until SIGINT/SIGTERM, then drain (see the module docstring) and stop.

    ``policy`` guards the metrics port (the frontends read the same from ``settings`` themselves); None:
    read from ``settings`` here (the command line reads it first, to refuse a bad keys file in one line).
    """
    started = time.perf_counter()
    if policy is None:
        policy = load_policy(settings)
    tls_files = TlsFiles.from_settings(settings)
    try:
        tls = None if tls_files is None else load(tls_files)  # before any child starts: one clear refusal
        check_port_free(settings.host, settings.http_port, "the REST")
        check_port_free(settings.host, settings.grpc_port, "the gRPC")
        if settings.health_port:
            check_port_free(settings.host, settings.health_port, "the health")
    except (PortInUse, TlsError) as exc:
        log_event(log, "startup_failed", level=logging.ERROR, reason=str(exc))
        return 1
    if tls is not None:
        log_loaded(tls, "tls_loaded")
    supervisor = Supervisor(settings)

    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log_event(log, "drain_skipped", signal=sig.name)
            force.set()
        else:
            log_event(log, "signal_received", signal=sig.name)
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    stopped = asyncio.create_task(stop.wait())
    loading = asyncio.create_task(supervisor.load())  # the workers load while the frontends start
    try:
        await supervisor.frontends.start()
    except FrontendStartFailed as exc:
        log_event(log, "startup_failed", level=logging.ERROR, reason=str(exc))
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await supervisor.pool.close()
        await supervisor.frontends.stop(0)
        return 1
    metrics_server = None
    metrics_task = None
    metrics_tls = None
    if settings.metrics_port:
        metrics_server, metrics_tls = _metrics_server(supervisor, tls_files, tls, policy)
        metrics_task = asyncio.create_task(metrics_server.serve())
    log_event(log, "listening", host=settings.host, http_port=settings.http_port, grpc_port=settings.grpc_port,
              metrics_port=settings.metrics_port, health_port=settings.health_port, frontends=settings.frontends,
              grpc_server=settings.grpc_server, tls=tls is not None, mtls=settings.tls_client_ca is not None)

    await asyncio.wait([loading, stopped], return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        loading.result()
        versions = [mv for model in supervisor.repository.models.values() if model.wanted for mv in model.records()]
        failed = [mv for mv in versions if mv.state is not State.READY]
        log_event(log, "server_ready" if not failed else "server_started_not_ready",
                  level=logging.INFO if not failed else logging.WARNING,
                  models=len(versions) - len(failed), failed=len(failed), seconds=time.perf_counter() - started)
        await stopped
    else:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        log_event(log, "loading_cancelled", level=logging.WARNING)

    await supervisor.stop_changes()
    in_flight, http_requests = await supervisor.frontends.drain()
    drain_started = time.monotonic()
    log_event(log, "draining", in_flight=in_flight, http_requests=http_requests, timeout=settings.drain_timeout)
    await _drain(supervisor.frontends, (in_flight, http_requests), drain_started + settings.drain_timeout, force)

    # Whatever still runs has outlived the drain: stopping the workers fails it at once with
    # 503 / UNAVAILABLE, an answer rather than a cut connection. Then the listeners close.
    await supervisor.pool.close()
    await supervisor.frontends.stop(_FINAL_GRACE_S)
    if metrics_server is not None and metrics_task is not None:
        if metrics_tls is not None:
            await metrics_tls.stop()
        metrics_server.should_exit = True
        await metrics_task
    log_event(log, "stopped", seconds=time.monotonic() - drain_started)
    return 0


def _metrics_server(supervisor: Supervisor, tls_files: TlsFiles | None, tls: TlsMaterial | None,
                   policy: AccessPolicy) -> tuple[_UvicornServer, TlsWatcher | None]:
    """The metrics port's server, over TLS (following rotations) when TLS is on, behind the metrics group's key."""
    settings = supervisor.settings
    context = None if tls is None else ReloadingContext(tls)

    def ssl_context(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        assert context is not None
        return context.context

    app = guarded_asgi(policy, "metrics", supervisor.metrics_app)
    config = uvicorn.Config(app, host=settings.host, port=settings.metrics_port, loop="none",
                            lifespan="off", interface="asgi3", log_level="warning", access_log=False,
                            log_config=None, ssl_context_factory=None if context is None else ssl_context)
    if tls_files is None or tls is None or context is None:
        return _UvicornServer(config), None
    watcher = TlsWatcher(tls_files, tls, [context.update])
    watcher.start()
    return _UvicornServer(config), watcher


async def _drain(frontends: FrontendPool, in_progress: tuple[int, int], deadline: float,
                 force: asyncio.Event) -> None:
    """Wait until no frontend has a request in progress, the deadline, or ``force``."""
    while any(in_progress):
        if force.is_set():
            return
        if time.monotonic() >= deadline:
            log_event(log, "drain_timeout", level=logging.WARNING, in_flight=in_progress[0],
                      http_requests=in_progress[1])
            return
        await asyncio.sleep(_DRAIN_POLL_S)
        in_progress = await frontends.in_progress()
    log_event(log, "drained")
