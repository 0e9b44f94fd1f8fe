"""A frontend's data connection to one runtime worker: requests out, answers back, tensors in shared memory.

On connect the frontend creates two arenas (``gateway.workers.arena``) and hands their fds to
the worker: it writes each request's tensors once into its input arena and sends only their
places (``Submit``); the worker batches them with every other frontend's requests, writes the
outputs into the output arena and answers with their places (``Results``). The frontend reads
the outputs as views, encodes its reply, then tells the worker to free them (in the next request's
``Submit``, so it costs no message and no wake-up of its own, or in a ``Release`` after
``RELEASE_DELAY_S`` when no request comes).

An input block is freed only once the worker has answered for its request, so a request whose
client hung up (``Cancel``) keeps its inputs until the worker confirms it dropped or finished
it: a running batch never reads memory that was handed to another request.
"""

import asyncio
import itertools
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.contract import (
    Cancel,
    Failed,
    Fence,
    Outcome,
    Release,
    RequestTrace,
    Results,
    SpanRef,
    StatsQuery,
    Submit,
    TensorRef,
    WireTensor,
)
from gateway.protocol import errors
from gateway.protocol.errors import TensorGateError, Unavailable
from gateway.workers.arena import Arena
from gateway.workers.ipc import Peer

#: What a frontend sends first on a data connection: its input and output arenas' sizes (+ their fds).
HELLO = struct.Struct("<QQ")


#: Output blocks are freed with the next request sent, or after this long when none comes.
RELEASE_DELAY_S = 0.002


def socket_address(name: str) -> str:
    """The abstract-namespace Unix address for ``name`` (no file to clean up)."""
    return "\0" + name


@dataclass(slots=True)
class _Call:
    future: "asyncio.Future[Outcome]"
    model: str
    inputs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Answer:
    """A request's outputs, as views into the worker's arena until ``release`` is called; a traced
    request's queue and batch."""

    outputs: dict[str, np.ndarray]
    release: Callable[[], None]
    trace: RequestTrace | None = None


class WorkerLink:
    """The data connection to the worker of one framework (one per frontend and worker)."""

    def __init__(self, framework: str, address: str, arena_bytes: int) -> None:
        self.framework = framework
        self.address = address
        self._arena_bytes = arena_bytes
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._releases: list[int] = []
        self._release_timer: asyncio.TimerHandle | None = None
        self._peer: Peer | None = None
        self._inputs: Arena | None = None
        self._outputs: Arena | None = None

    @property
    def connected(self) -> bool:
        return self._peer is not None and self._peer.connected

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, socket_address(self.address))
        except OSError as exc:
            sock.close()
            raise Unavailable(f"the {self.framework} runtime worker does not answer ({exc}); it may be restarting") \
                from None
        self._inputs, self._outputs = Arena(self._arena_bytes), Arena(self._arena_bytes)
        socket.send_fds(sock, [HELLO.pack(self._arena_bytes, self._arena_bytes)],
                        [self._inputs.fd, self._outputs.fd])
        _, self._peer = await loop.create_unix_connection(lambda: Peer(self._on_message, self._lost), sock=sock)

    async def infer(self, key: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], rows: int,
                    priority: int | None, timeout_s: float | None, received_ns: int,
                    trace: SpanRef | None = None) -> Answer:
        """Queue one request in the worker and wait for its answer (``trace``: its span, when traced)."""
        if not self.connected:
            raise self._gone(model)
        assert self._peer is not None and self._inputs is not None
        call = _Call(asyncio.get_running_loop().create_future(), model)
        wire: dict[str, WireTensor] = {}
        for name, array in inputs.items():
            ref = self._inputs.put(array)
            if ref is None:
                wire[name] = np.ascontiguousarray(array)
            else:
                wire[name] = ref
                call.inputs.append(ref.offset)
        request_id = next(self._ids)
        self._calls[request_id] = call
        self._peer.notify(Submit(request_id, key, wire, outputs, rows, priority, timeout_s, received_ns, trace,
                                 self._take_releases()))
        try:
            outcome = await call.future
        except asyncio.CancelledError:
            # The client has gone: the worker drops the request if it is still queued; either way
            # it answers, and the answer frees the inputs (see _on_message).
            if self.connected:
                self._peer.notify(Cancel(request_id))
            raise
        return self._answer(outcome, model)

    def fence(self, generation: int) -> None:
        """Tell the worker this frontend serves from table ``generation`` on: whatever it sent for a key that
        table no longer routes to is ahead of this in the stream (the worker unloads such a key only then)."""
        if self._peer is not None:
            self._peer.notify(Fence(generation))

    def failed(self, key: str, ns: int) -> None:
        """Count a request that failed in the frontend in the model's statistics."""
        if self._peer is not None:
            self._peer.notify(Failed(key, ns))

    async def statistics(self, keys: list[str]) -> dict[str, dict[str, object]]:
        if not self.connected:
            raise self._gone("")
        assert self._peer is not None
        result: dict[str, dict[str, object]] = await self._peer.call(StatsQuery(keys))
        return result

    def close(self) -> None:
        if self._peer is not None:
            self._peer.close()

    def _answer(self, outcome: Outcome, model: str) -> Answer:
        if outcome.outputs is None:
            raise _error(outcome)
        assert self._outputs is not None
        arena = self._outputs
        if arena.closed:  # answered, then the worker died before this request was resumed
            raise self._gone(model, running=True)
        arrays: dict[str, np.ndarray] = {}
        blocks: list[int] = []
        for name, tensor in outcome.outputs.items():
            if isinstance(tensor, TensorRef):
                arrays[name] = arena.array(tensor)
                blocks.append(tensor.offset)
            else:
                arrays[name] = tensor
        return Answer(arrays, lambda: self._release(blocks), outcome.trace)

    def _release(self, blocks: list[int]) -> None:
        if not blocks or not self.connected:
            return
        if not self._releases:
            self._release_timer = asyncio.get_running_loop().call_later(RELEASE_DELAY_S, self._flush_releases)
        self._releases.extend(blocks)

    def _take_releases(self) -> list[int]:
        """The blocks to free, handed to whatever message goes first (the timer is then not needed)."""
        releases, self._releases = self._releases, []
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        return releases

    def _flush_releases(self) -> None:
        self._release_timer = None  # (this is it firing)
        releases = self._take_releases()
        if self._peer is not None and releases:
            self._peer.notify(Release(releases))

    def _on_message(self, body: object) -> None:
        if not isinstance(body, Results):
            return
        assert self._inputs is not None
        for outcome in body.outcomes:
            call = self._calls.pop(outcome.id, None)
            if call is None:
                continue
            for offset in call.inputs:
                self._inputs.free(offset)
            if call.future.done():  # abandoned by its client: nobody will release its outputs
                if outcome.outputs:
                    self._release([t.offset for t in outcome.outputs.values() if isinstance(t, TensorRef)])
            else:
                call.future.set_result(outcome)

    def _lost(self) -> None:
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.future.done():
                call.future.set_exception(self._gone(call.model, running=True))
        # The worker is gone: its memory goes with this end's fds (views still being encoded keep
        # their mapping until they are dropped).
        for arena in (self._inputs, self._outputs):
            if arena is not None:
                arena.close()

    def _gone(self, model: str, running: bool = False) -> Unavailable:
        what = "exited while running this request" if running else "is not running"
        prefix = f"model '{model}': " if model else ""
        return Unavailable(f"{prefix}the {self.framework} runtime worker {what}; it is being restarted")


def _error(outcome: Outcome) -> TensorGateError:
    kind = getattr(errors, outcome.error_kind, None)
    if isinstance(kind, type) and issubclass(kind, TensorGateError):
        return kind(outcome.error)
    return TensorGateError(outcome.error)
