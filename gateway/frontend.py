"""A frontend process: REST and gRPC on the server's shared ports, doing the protocol work only.

Started by the supervisor as ``python -m gateway.frontend INDEX SETTINGS_JSON CONTROL_FD``.
Every frontend binds the same REST and gRPC ports with SO_REUSEPORT, so the kernel spreads
connections over them and the protocol work (parse, validate, encode) scales with the cores.
A frontend holds no model state beyond the ModelTable the supervisor publishes; it sends each
validated request to the runtime worker that holds the model's queue (``gateway.dataplane``).

The control connection carries the supervisor's ModelTable updates, the client shared-memory
registrations (made through any frontend, held by all), the drain order (turn
not-ready, refuse new inference with 503, keep listening), snapshots for metrics and the
drain, and the final stop. A frontend whose supervisor has gone stops at once.
"""

import asyncio
import gc
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

import uvloop

from gateway.access import load_policy
from gateway.access_log import AccessLog
from gateway.contract import (
    Drain,
    FrontendSnapshot,
    FrontendState,
    IndexRequest,
    LoadRequest,
    ModelTable,
    ProcessSnapshot,
    RepositoryReply,
    SharedMemoryRegions,
    Stop,
    UnloadRequest,
)
from gateway.dataplane import DataPlane, WorkerLinks
from gateway.grpc.access import AccessInterceptor
from gateway.grpc.servicer import create_grpc_server
from gateway.logs import configure
from gateway.metrics import RequestMetrics
from gateway.process_metrics import own_families
from gateway.protocol.errors import TensorGateError, Unavailable
from gateway.protocol.system_shm import Registration, SystemSharedMemory
from gateway.rest.app import create_app
from gateway.rest.guard import RestGuard, cors_from
from gateway.rest.health_port import health_server
from gateway.rest.http_server import HttpServer
from gateway.rest.infer import InferRoute
from gateway.settings import Settings
from gateway.tls import FrontendTls, TlsFiles
from gateway.tracing_env import sdk_disabled
from gateway.workers.ipc import CallFailed, ConnectionGone, Peer

if TYPE_CHECKING:
    from gateway.tracing import Tracing

#: Each shared-memory arena (one for requests, one for answers, per worker): address space, not memory;
#: only the pages tensors touch are resident. A tensor that does not fit travels through the socket.
ARENA_BYTES = 256 * 1024 * 1024


class Frontend:
    """One frontend's transports over its DataPlane, steered by the supervisor."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = RequestMetrics(enabled=settings.metrics_port != 0)
        self.plane = DataPlane(self.metrics, WorkerLinks(ARENA_BYTES), settings.strict_readiness)
        self.plane.control = self._repository_call
        self.shm = SystemSharedMemory(on_change=self._shared_memory_changed)
        self.tracing = _tracing(settings)
        access = AccessLog() if settings.access_log else None
        policy = load_policy(settings)  # the keys, read here too: they never travel on a command line
        self.rest = HttpServer(create_app(self.plane, settings.max_request_bytes, self.shm),
                               InferRoute(self.plane, self.shm, self.tracing), settings.max_request_bytes,
                               keep_alive_s=30, access_log=access, guard=RestGuard(policy, cors_from(settings)))
        self.health = health_server(self.plane) if settings.health_port else None
        files = TlsFiles.from_settings(settings)
        self.tls = None if files is None else FrontendTls(files, settings.grpc_server)
        self.grpc = create_grpc_server(self.plane, f"{settings.host}:{settings.grpc_port}", settings.max_request_bytes,
                                       self.shm, settings.grpc_server, None if self.tls is None else self.tls.grpc,
                                       access, self.tracing, [AccessInterceptor(policy)],
                                       keepalive_s=settings.grpc_keepalive,
                                       min_ping_interval_s=settings.grpc_min_ping_interval)
        self._control: Peer | None = None
        self._stop: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def handle(self, body: Any) -> Any:
        """The supervisor's calls."""
        if isinstance(body, ModelTable):
            self.plane.update(body)
        elif isinstance(body, SharedMemoryRegions):
            self.shm.apply(body.registrations)
        elif isinstance(body, FrontendSnapshot):
            return self._state()
        elif isinstance(body, ProcessSnapshot):
            return own_families()
        elif isinstance(body, Drain):
            self.plane.draining = True
            return self._state()  # counted at the moment the drain began
        elif isinstance(body, Stop):
            self._finish(body.grace_s)
        return None

    async def _shared_memory_changed(self, registrations: list[Registration]) -> None:
        """Every frontend must see a client's region before the client is told it is registered."""
        if self._control is not None:
            await self._control.call(SharedMemoryRegions(registrations))

    async def _repository_call(self, body: LoadRequest | UnloadRequest | IndexRequest) -> RepositoryReply:
        """A repository load or unload, done by the supervisor; it answers once every frontend has the new table."""
        if self._control is None:
            raise Unavailable("this frontend is not connected to its supervisor yet; retry")
        try:
            reply: RepositoryReply = await self._control.call(body)
        except ConnectionGone:
            raise Unavailable("the server's supervisor has gone; the server is stopping") from None
        except CallFailed as exc:
            raise TensorGateError(f"the supervisor failed to answer {type(body).__name__}: {exc}") from None
        return reply

    def _state(self) -> FrontendState:
        return FrontendState(self.metrics.snapshot(), self.plane.in_flight, self.rest.requests_in_progress)

    def _finish(self, grace_s: float) -> None:
        if not self._stop.done():
            self._stop.set_result(grace_s)

    async def run(self, control_fd: int) -> None:
        settings = self.settings
        await self.grpc.start()
        await self.rest.start(settings.host, settings.http_port, reuse_port=True,
                              tls=None if self.tls is None else self.tls.rest.context)
        if self.tls is not None:
            self.tls.watcher.start()
        if self.health is not None:
            await self.health.start(settings.host, settings.health_port, reuse_port=True)
        # What start-up allocated lives for good: out of the collector's way, so a full collection
        # never stalls the loop for tens of milliseconds under load (the old REST p99 tail).
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        _, self._control = await loop.create_unix_connection(lambda: Peer(self.handle, lambda: self._finish(0.0)),
                                                             sock=socket.socket(fileno=control_fd))
        grace = await self._stop
        if self.tls is not None:
            await self.tls.watcher.stop()
        closing = [self.rest.close(grace), self.grpc.stop(grace=grace)]
        if self.health is not None:
            closing.append(self.health.close(grace))
        await asyncio.gather(*closing)
        if self.tracing is not None:
            self.tracing.shutdown()  # every request has been answered: export the spans still buffered


def _tracing(settings: Settings) -> "Tracing | None":
    """The tracer when ``--tracing`` is on (and OTEL_SDK_DISABLED is not true); off, the SDK is never imported."""
    if not settings.tracing or sdk_disabled(os.environ):
        return None
    from gateway.tracing import Tracing  # only when on: free when off
    return Tracing()


async def _main(control_fd: int, settings: Settings) -> None:
    await Frontend(settings).run(control_fd)


def main(argv: list[str]) -> int:
    index, settings, control_fd = int(argv[0]), Settings.from_json(argv[1]), int(argv[2])
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    configure(settings.log_level, settings.log_format, f"frontend-{index}")
    uvloop.run(_main(control_fd, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
