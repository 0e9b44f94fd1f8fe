"""The framing every connection between the server's processes speaks, and ``Peer``, its asyncio end.

A message is any picklable object, pickled with protocol 5 so that numpy arrays travel
*out of band*: their memory is written to the socket as-is after the pickle, and the
receiver's arrays are views over the bytes it read. Bulk tensors normally travel through a
shared arena instead (``gateway.workers.arena``); this path carries control messages, arena
references, and the tensors that do not fit an arena::

    frame  = u32 pickle_len | u32 buffer_count | u64 buffer_len * buffer_count
             | pickle bytes | buffer 0 | buffer 1 | ...

Both ends of a connection are a ``Peer``: either side may ``call`` (and await a reply),
``notify`` (no reply), and answer the other's calls with its handler. The frames written in one
turn of the event loop leave in one write: system calls, not bytes, are what these small
messages cost.
"""

import asyncio
import inspect
import itertools
import pickle
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from gateway.wire_pickle import by_fields

_PREFIX = struct.Struct("<II")
_LENGTH = struct.Struct("<Q")


@by_fields
@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels: a call (``call_id`` > 0, a reply expected), a notice (``call_id`` 0), or a reply."""

    call_id: int
    body: Any
    reply: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    """A call that failed at the other end. ``kind`` is 'invalid' (the input) or 'internal'."""

    kind: str
    message: str


class CallFailed(Exception):
    """A call the peer answered with a Failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class ConnectionGone(Exception):
    """The connection closed before the call was answered."""


def encode(message: Envelope) -> list[bytes | memoryview]:
    """The frame for ``message`` as a list of buffers to write in order (no joining copy)."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    header = _PREFIX.pack(len(payload), len(raws)) + b"".join(_LENGTH.pack(r.nbytes) for r in raws)
    return [header, payload, *raws]


def _decode(payload: bytes, buffers: list[bytes]) -> Envelope:
    message = pickle.loads(payload, buffers=buffers)
    if not isinstance(message, Envelope):
        raise TypeError(f"unexpected message {type(message).__name__}")
    return message


class FrameDecoder:
    """Feed bytes as they arrive, take whole messages out.

    Push-based, so an asyncio Protocol decodes every complete frame in one ``data_received``
    call instead of suspending once per field.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Envelope]:
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        size = len(buffer)
        with memoryview(buffer) as view:
            while size - start >= _PREFIX.size:
                payload_len, count = _PREFIX.unpack_from(buffer, start)
                head = start + _PREFIX.size + 8 * count
                if size < head:
                    break
                lengths = struct.unpack_from(f"<{count}Q", buffer, start + _PREFIX.size)
                end = head + payload_len + sum(lengths)
                if size < end:
                    break
                payload = bytes(view[head : head + payload_len])
                position = head + payload_len
                buffers = []
                for n in lengths:
                    buffers.append(bytes(view[position : position + n]))
                    position += n
                messages.append(_decode(payload, buffers))
                start = end
        if start:
            del buffer[:start]
        return messages


#: Answers the peer's calls and notices; may return a value or an awaitable of one.
Handler = Callable[[Any], Any]


class Peer(asyncio.Protocol):
    """One end of a framed connection: calls out, notices both ways, the peer's calls answered by ``handle``."""

    def __init__(self, handle: Handler | None = None, on_lost: Callable[[], None] | None = None) -> None:
        self._decoder = FrameDecoder()
        self._handle = handle
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outgoing: list[bytes | memoryview] = []
        self.closed = asyncio.Event()
        #: Made and not lost yet (a plain attribute: it is read several times for every request).
        self.connected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.connected = True

    def data_received(self, data: bytes) -> None:
        for message in self._decoder.feed(data):
            if message.reply:
                future = self._pending.pop(message.call_id, None)
                if future is not None and not future.done():
                    if isinstance(message.body, Failure):
                        future.set_exception(CallFailed(message.body))
                    else:
                        future.set_result(message.body)
            else:
                self._answer(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self._writable.set()
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionGone("the connection closed"))
        self._pending.clear()
        if self._on_lost is not None:
            self._on_lost()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def call(self, body: Any) -> Any:
        """Send ``body`` and wait for the reply (CallFailed / ConnectionGone on failure)."""
        if not self.connected:
            raise ConnectionGone("the connection is closed")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self._write(Envelope(call_id, body))
            await self._writable.wait()
            return await future
        finally:
            self._pending.pop(call_id, None)

    def notify(self, body: Any, flush: bool = False) -> None:
        """Send ``body`` without waiting for anything (dropped if the connection is closed);
        ``flush``: write it (and whatever is queued) now, not at the end of this loop turn."""
        if not self.connected:
            return
        if flush and not self._outgoing:  # nothing queued: write it now, with no flush scheduled
            assert self._transport is not None
            if not self._transport.is_closing():
                self._transport.writelines(encode(Envelope(0, body)))
            return
        self._write(Envelope(0, body))
        if flush:
            self._flush()

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def _write(self, message: Envelope) -> None:
        """Queue a frame; every frame of this turn of the event loop leaves in one write."""
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.extend(encode(message))

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(outgoing)

    def _answer(self, message: Envelope) -> None:
        if self._handle is None:
            self._reply(message, Failure("internal", "this end takes no calls"))
            return
        try:
            result = self._handle(message.body)
        except CallFailed as exc:
            self._reply(message, exc.failure)
            return
        except Exception as exc:
            self._reply(message, Failure("internal", f"{type(exc).__name__}: {exc}"))
            return
        if result is not None and inspect.isawaitable(result):  # (a notice's handler returns None)
            task = asyncio.ensure_future(self._finish(message, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._reply(message, result)

    async def _finish(self, message: Envelope, result: Awaitable[Any]) -> None:
        try:
            value = await result
        except CallFailed as exc:
            value = exc.failure
        except Exception as exc:
            value = Failure("internal", f"{type(exc).__name__}: {exc}")
        self._reply(message, value)

    def _reply(self, message: Envelope, value: Any) -> None:
        if message.call_id and self.connected:
            self._write(Envelope(message.call_id, value, reply=True))
