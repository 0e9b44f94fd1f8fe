"""A child process of the server with a control connection: spawn it, call it, notice when it dies.

Runtime workers (``python -m runtimes.worker``) and frontends (``python -m gateway.frontend``)
are both started this way: the child gets its end of a socket pair as an inherited fd (the last
argument of its command line), and a
``Peer`` on each end carries calls both ways. When the connection drops (the child died, or
closed it), every call in flight fails at once and the owner is told through ``on_exit``.
"""

import asyncio
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from gateway.logs import log_event
from gateway.workers.ipc import Handler, Peer

log = logging.getLogger("tensorgate.processes")

_SOCKET_BUFFER = 4 * 1024 * 1024


class ChildProcess:
    """A started child: ``kind`` 'worker' or 'frontend'; ``role`` its framework or ``frontend-N``."""

    def __init__(self, kind: str, role: str, module: str, args: list[str], on_exit: Callable[["ChildProcess"], None],
                 handle: Handler | None = None, pass_fds: tuple[int, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.role = role
        self._module = module
        self._args = args
        self._on_exit = on_exit
        self._handle = handle
        self._pass_fds = pass_fds
        self._env = env  # None: this process's environment
        self._process: asyncio.subprocess.Process | None = None
        self.peer: Peer | None = None
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
                sys.executable, "-m", self._module, *self._args, str(theirs.fileno()),
                pass_fds=(theirs.fileno(), *self._pass_fds), stdin=asyncio.subprocess.DEVNULL, env=self._env,
                # Its own session: a terminal's Ctrl-C reaches the supervisor, which drains and then
                # stops its children itself; a child exits when the supervisor's socket closes.
                start_new_session=True,
            )
        loop = asyncio.get_running_loop()
        _, self.peer = await loop.create_unix_connection(lambda: Peer(self._handle, self._lost_connection), sock=ours)
        self.alive = True
        log_event(log, f"{self.kind}_started", role=self.role, pid=self._process.pid)

    async def call(self, body: Any) -> Any:
        """One call to the child (``ConnectionGone`` if it is not running)."""
        assert self.peer is not None
        return await self.peer.call(body)

    def exit_expected(self) -> None:
        """The child is about to be told to exit: when it does, that is no failure (not logged, not replaced)."""
        self._closing = True

    async def stop(self, timeout: float = 10.0) -> None:
        """Close the connection (the child exits on end of stream) and reap the process."""
        self._closing = True
        if self.peer is not None:
            self.peer.close()
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), timeout=timeout)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reaper is not None:
            await self._reaper

    async def wait(self) -> int | None:
        return await self._process.wait() if self._process else None

    def _lost_connection(self) -> None:
        self.alive = False
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        returncode = await self._process.wait() if self._process else None
        if not self._closing:
            log_event(log, f"{self.kind}_exited", level=logging.ERROR, role=self.role, pid=self.pid,
                      returncode=returncode)
            self._on_exit(self)
