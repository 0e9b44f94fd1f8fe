"""One runtime worker process seen from the gateway: spawn it, call it, notice when it dies.

Calls are multiplexed over one socket pair by call id, so any number of batches can be in
flight at once. Replies are decoded in the socket protocol's ``data_received`` and resolve
their futures directly. When the process dies, every call still in flight fails at once with
``Unavailable`` naming its model; the owner is told through ``on_exit`` and decides whether
to start a new one.
"""

import asyncio
import itertools
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from gateway.logs import log_event
from gateway.protocol.errors import InferenceFailed, InvalidRequest, Unavailable
from gateway.workers.ipc import Envelope, Failure, FrameDecoder, encode

log = logging.getLogger("tensorgate.workers")

_SOCKET_BUFFER = 4 * 1024 * 1024


class WorkerCallFailed(Exception):
    """A call the worker answered with a Failure (the caller maps it to a client error)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class _Channel(asyncio.Protocol):
    """The gateway's end of the socket: decodes replies, tracks write flow control."""

    def __init__(self, on_message: Callable[[Envelope], None], on_lost: Callable[[], None]) -> None:
        self._decoder = FrameDecoder()
        self._on_message = on_message
        self._on_lost = on_lost
        self._writable = asyncio.Event()
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        for message in self._decoder.feed(data):
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        self._on_lost()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def writable(self) -> None:
        await self._writable.wait()


class WorkerProcess:
    """A started worker process of one framework."""

    def __init__(self, framework: str, on_exit: Callable[["WorkerProcess"], None]) -> None:
        self.framework = framework
        self._on_exit = on_exit
        self._ids = itertools.count()
        self._pending: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._transport: asyncio.Transport | None = None
        self._channel: _Channel | None = None
        self._closing = False
        self._reaper: asyncio.Task[None] | None = None
        self.alive = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        with theirs:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtimes.worker", self.framework, str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the gateway, which drains and then
                # stops the workers itself; a worker exits when the gateway's socket closes.
                start_new_session=True,
            )
        loop = asyncio.get_running_loop()
        transport, self._channel = await loop.create_unix_connection(
            lambda: _Channel(self._resolve, self._lost_connection), sock=ours)
        self._transport = transport
        self.alive = True
        log_event(log, "worker_started", framework=self.framework, pid=self._process.pid)

    async def call(self, body: Any, model: str) -> Any:
        """Send one call and wait for its reply; ``model`` names the model in errors."""
        if not self.alive or self._transport is None or self._channel is None:
            raise Unavailable(f"model '{model}': the {self.framework} runtime worker is restarting")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (future, model)
        try:
            self._transport.writelines(encode(Envelope(call_id, body)))
            await self._channel.writable()
            return await future
        finally:
            self._pending.pop(call_id, None)

    async def stop(self) -> None:
        """Close the socket (the worker exits on end of stream) and reap the process."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), timeout=10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reaper is not None:
            await self._reaper

    def _resolve(self, reply: Envelope) -> None:
        entry = self._pending.get(reply.call_id)
        if entry is None or entry[0].done():
            return
        future = entry[0]
        if isinstance(reply.body, Failure):
            future.set_exception(WorkerCallFailed(reply.body))
        else:
            future.set_result(reply.body)

    def _lost_connection(self) -> None:
        self.alive = False
        for future, model in list(self._pending.values()):
            if not future.done():
                future.set_exception(self._lost(model))
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        returncode = await self._process.wait() if self._process else None
        if not self._closing:
            log_event(log, "worker_exited", level=logging.ERROR, framework=self.framework,
                      pid=self.pid, returncode=returncode)
            self._on_exit(self)

    def _lost(self, model: str) -> Unavailable:
        return Unavailable(
            f"model '{model}': the {self.framework} runtime worker (pid {self.pid}) exited while "
            "running this request; it is being restarted"
        )


def client_error(exc: WorkerCallFailed, model: str) -> InvalidRequest | InferenceFailed:
    """The client-facing error for a failed execute call."""
    if exc.failure.kind == "invalid":
        return InvalidRequest(f"model '{model}': {exc.failure.message}")
    return InferenceFailed(f"model '{model}' failed while executing: {exc.failure.message}")
