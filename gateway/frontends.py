"""The frontend processes: started together, kept at their number, told everything at once.

A frontend that dies is replaced at once (its clients' connections are gone with it; the
worker drops whatever it had queued for it). A new frontend gets the current ModelTable
before it counts as started, so it never answers from an empty table.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.contract import (
    Drain,
    FrontendSnapshot,
    FrontendState,
    IndexRequest,
    LoadRequest,
    ModelTable,
    RepositoryReply,
    SharedMemoryRegions,
    Stop,
    UnloadRequest,
)
from gateway.logs import log_event
from gateway.settings import Settings
from gateway.workers.ipc import CallFailed, ConnectionGone
from gateway.workers.process import ChildProcess

log = logging.getLogger("tensorgate.frontends")

#: The longest the supervisor waits for a frontend to answer a control call.
CONTROL_TIMEOUT_S = 10.0


class FrontendStartFailed(Exception):
    """A frontend exited before it was serving (e.g. its port could not be bound); see its log."""


#: Carries out a client's repository load or unload (the supervisor's lifecycle).
RepositoryHandler = Callable[[LoadRequest | UnloadRequest | IndexRequest], Awaitable[RepositoryReply]]


class FrontendPool:
    def __init__(self, settings: Settings, table: Callable[[], ModelTable],
                 repository: RepositoryHandler | None = None) -> None:
        self._settings = settings
        self._table = table
        self._repository = repository
        self._frontends: dict[int, ChildProcess] = {}
        self._publishing = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._shared_memory = SharedMemoryRegions([])
        self._closing = False
        self.replacements = 0
        self._background: set[asyncio.Task[None]] = set()

    def children(self) -> list[ChildProcess]:
        return [f for _, f in sorted(self._frontends.items())]

    async def start(self) -> None:
        """Start every frontend and wait until each is listening with the current table."""
        await asyncio.gather(*(self._start(i) for i in range(self._settings.frontends)))

    async def publish(self) -> int:
        """Send the current ModelTable to every frontend and wait until each has it; its generation."""
        table = self._table()
        self._publishing += 1
        self._settled.clear()
        try:
            await self._each(table)
        finally:
            self._publishing -= 1
            if not self._publishing:
                self._settled.set()
        return table.generation

    async def settled(self) -> None:
        """Return once no table is on its way: every frontend then holds the same one.

        A frontend applies a new table a moment before or after the others; whoever reports a
        change (the repository index) waits for this first, so that once a client sees a new
        version, every frontend routes to it.
        """
        await self._settled.wait()

    async def drain(self) -> tuple[int, int]:
        """Turn every frontend not-ready; (inferences, HTTP requests) in progress at that moment."""
        return _in_progress(await self._each(Drain()))

    async def snapshots(self) -> list[FrontendState]:
        replies = await self._each(FrontendSnapshot())
        return [r for r in replies if isinstance(r, FrontendState)]

    async def in_progress(self) -> tuple[int, int]:
        """(inferences, HTTP requests) in progress in all frontends."""
        return _in_progress(await self.snapshots())

    async def stop(self, grace_s: float) -> None:
        """Have every frontend close its listeners (``grace_s`` to send what it has) and exit."""
        self._closing = True
        for frontend in self._frontends.values():
            # A frontend exits right after it answers Stop: its exit may be seen before stop() below.
            frontend.exit_expected()
        await self._each(Stop(grace_s))
        await asyncio.gather(*(f.stop(timeout=grace_s + 10) for f in self._frontends.values()))

    async def _start(self, index: int) -> None:
        frontend = ChildProcess("frontend", f"frontend-{index}", "gateway.frontend",
                                [str(index), self._settings.to_json()], self._exited, self._handle)
        await frontend.start()
        # Counted at once, so a table published while it starts reaches it too (after this first one).
        self._frontends[index] = frontend
        try:
            await frontend.call(self._table())
            await frontend.call(self._shared_memory)
        except (ConnectionGone, CallFailed):
            self._frontends.pop(index, None)
            returncode = await frontend.wait()
            raise FrontendStartFailed(f"frontend-{index} exited with {returncode} before it was serving") from None

    async def _handle(self, body: Any) -> Any:
        """A frontend's calls: a client changed its shared-memory registrations there (share them), or asked
        for a model to be loaded or unloaded (answered when every frontend has the new table)."""
        if isinstance(body, SharedMemoryRegions):
            self._shared_memory = body
            await self._each(body)
        elif isinstance(body, LoadRequest | UnloadRequest | IndexRequest):
            if self._repository is None:
                return RepositoryReply("Unsupported", "this server does not load or unload models")
            return await self._repository(body)
        return None

    async def _each(self, body: Any) -> list[Any]:
        """Call every live frontend; a failed or hung one gives its exception (a hung one after
        ``CONTROL_TIMEOUT_S``), so one stuck process never stalls a scrape, a publish or the drain."""
        live = [f for f in self._frontends.values() if f.alive]
        return await asyncio.gather(*(asyncio.wait_for(f.call(body), CONTROL_TIMEOUT_S) for f in live),
                                    return_exceptions=True)

    def _exited(self, frontend: ChildProcess) -> None:
        if self._closing:
            return
        index = int(frontend.role.rsplit("-", 1)[1])
        self._frontends.pop(index, None)
        task = asyncio.get_running_loop().create_task(self._replace(index))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _replace(self, index: int) -> None:
        self.replacements += 1
        log_event(log, "frontend_replacing", frontend=index, replacements=self.replacements)
        try:
            await self._start(index)
        except FrontendStartFailed as exc:
            log_event(log, "frontend_replace_failed", level=logging.ERROR, frontend=index, reason=str(exc))


def _in_progress(states: list[Any]) -> tuple[int, int]:
    live = [s for s in states if isinstance(s, FrontendState)]
    return sum(s.inferences for s in live), sum(s.http_requests for s in live)
