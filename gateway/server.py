"""The composition root: one event loop running REST, gRPC and the metrics endpoint over one
DataPlane, with the runtime workers beside it.

Shutdown on SIGTERM or SIGINT drains before it stops:

1. the server turns not-ready at once (``/v2/health/ready`` 503, gRPC ``ServerReady`` false and
   ``grpc.health.v1`` NOT_SERVING), so load balancers stop sending traffic;
2. it keeps listening: new inference requests get 503 / UNAVAILABLE, while every request
   already accepted (queued, executing, or still being received) runs to its answer;
3. when none is left, or ``--drain-timeout`` seconds have passed, or a second signal came, it
   stops the runtime workers (a request still running then gets 503 / UNAVAILABLE), closes the
   listeners and returns: the process exits 0.
"""

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from prometheus_client import make_asgi_app

from gateway.dataplane import DataPlane
from gateway.grpc.servicer import create_grpc_server
from gateway.logs import log_event
from gateway.metrics import Metrics
from gateway.repository.manager import ModelManager
from gateway.rest.app import create_app
from gateway.settings import Settings

log = logging.getLogger("tensorgate.server")

#: How often the drain checks whether the last request has been answered.
_DRAIN_POLL_S = 0.05
#: After the drain, how long the transports get to send the answers already given (seconds).
_FINAL_GRACE_S = 1


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns shutdown for all transports."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn(app: Any, settings: Settings, port: int) -> _UvicornServer:
    config = uvicorn.Config(app, host=settings.host, port=port, loop="none", http="httptools",
                            lifespan="off", log_level="warning", access_log=False,
                            timeout_keep_alive=30)
    return _UvicornServer(config)


async def serve(settings: Settings) -> None:
    """Run the server until SIGINT/SIGTERM, then drain (see the module docstring) and stop."""
    started = time.perf_counter()
    metrics = Metrics(enabled=settings.metrics_port != 0)
    models = ModelManager(settings.model_repo)
    metrics.watch(models)
    plane = DataPlane(models, metrics)

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

    rest = _uvicorn(create_app(plane, settings.max_request_bytes), settings, settings.http_port)
    http_servers = [rest]
    if metrics.enabled:
        http_servers.append(_uvicorn(make_asgi_app(registry=metrics.registry), settings, settings.metrics_port))
    grpc_server = create_grpc_server(plane, f"{settings.host}:{settings.grpc_port}", settings.max_request_bytes)
    await grpc_server.start()
    servers = [asyncio.create_task(server.serve()) for server in http_servers]
    log_event(log, "listening", host=settings.host, http_port=settings.http_port,
              grpc_port=settings.grpc_port, metrics_port=settings.metrics_port)

    stopped = asyncio.create_task(stop.wait())
    loading = asyncio.create_task(models.load_all())
    await asyncio.wait([loading, stopped, *servers], return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        loading.result()
        versions = models.all_versions()
        failed = [mv for mv in versions if mv.state.value != "READY"]
        log_event(log, "server_ready" if not failed else "server_started_not_ready",
                  level=logging.INFO if not failed else logging.WARNING,
                  models=len(versions) - len(failed), failed=len(failed), seconds=time.perf_counter() - started)
        await asyncio.wait([stopped, *servers], return_when=asyncio.FIRST_COMPLETED)
    else:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        log_event(log, "loading_cancelled", level=logging.WARNING)
    if not stopped.done():
        log_event(log, "transport_exited", level=logging.ERROR)
        stopped.cancel()

    plane.draining = True
    drain_started = time.monotonic()
    deadline = drain_started + settings.drain_timeout
    log_event(log, "draining", in_flight=plane.in_flight, http_requests=len(rest.server_state.tasks),
              timeout=settings.drain_timeout)
    await _drain(plane, rest, deadline, force)

    # Whatever still runs has outlived the drain: stopping the workers fails it at once with
    # 503 / UNAVAILABLE, an answer rather than a cut connection. Then the listeners close.
    await models.close()
    rest.config.timeout_graceful_shutdown = _FINAL_GRACE_S
    rest.should_exit = True
    for server in http_servers[1:]:
        server.should_exit = True
    await grpc_server.stop(grace=_FINAL_GRACE_S)
    await asyncio.gather(*servers, return_exceptions=True)
    log_event(log, "stopped", seconds=time.monotonic() - drain_started)


async def _drain(plane: DataPlane, rest: _UvicornServer, deadline: float, force: asyncio.Event) -> None:
    """Wait until no inference call nor HTTP request is in progress, the deadline, or ``force``."""
    while plane.in_flight or rest.server_state.tasks:
        if force.is_set():
            return
        if time.monotonic() >= deadline:
            log_event(log, "drain_timeout", level=logging.WARNING, in_flight=plane.in_flight,
                      http_requests=len(rest.server_state.tasks))
            return
        await asyncio.sleep(_DRAIN_POLL_S)
    log_event(log, "drained")
