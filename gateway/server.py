"""The composition root: one event loop running REST, gRPC and the metrics endpoint over one
DataPlane, with the runtime workers beside it. Stops cleanly on SIGINT or SIGTERM.
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
    """Run the server until SIGINT/SIGTERM."""
    started = time.perf_counter()
    metrics = Metrics()
    models = ModelManager(settings.model_repo)
    metrics.watch(models)
    plane = DataPlane(models, metrics)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    rest = _uvicorn(create_app(plane, settings.max_request_bytes), settings, settings.http_port)
    metrics_server = _uvicorn(make_asgi_app(registry=metrics.registry), settings, settings.metrics_port)
    grpc_server = create_grpc_server(plane, f"{settings.host}:{settings.grpc_port}", settings.max_request_bytes)
    await grpc_server.start()
    servers = [asyncio.create_task(rest.serve()), asyncio.create_task(metrics_server.serve())]
    log_event(log, "listening", host=settings.host, http_port=settings.http_port,
              grpc_port=settings.grpc_port, metrics_port=settings.metrics_port)

    await models.load_all()
    versions = models.all_versions()
    failed = [mv for mv in versions if mv.state.value != "READY"]
    log_event(log, "server_ready" if not failed else "server_started_not_ready",
              level=logging.INFO if not failed else logging.WARNING,
              models=len(versions) - len(failed), failed=len(failed), seconds=time.perf_counter() - started)

    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopped, *servers], return_when=asyncio.FIRST_COMPLETED)
    if stopped not in done:
        log_event(log, "transport_exited", level=logging.ERROR)
    log_event(log, "shutting_down")
    plane.draining = True
    rest.should_exit = True
    metrics_server.should_exit = True
    await grpc_server.stop(grace=5)
    await asyncio.gather(*servers, return_exceptions=True)
    await models.close()
    log_event(log, "stopped")
