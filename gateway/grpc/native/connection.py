"""One HTTP/2 connection of the native gRPC server: frames in, calls handed on, answers out.

The connection owns the HTTP/2 state: the HPACK decoder, the streams, both directions of flow
control. It hands each new stream to its ``Dispatcher`` (``gateway.grpc.native.server``), which
runs the call; the call reads its request messages from the ``Stream`` and answers through
``send_headers``/``send_message``/``send_trailers``. Answers finished in one turn of the event
loop leave in one write.

A connection error (a frame the RFC forbids, a header block that does not decode) is answered
with GOAWAY and the connection is closed (half-closed first, so that the GOAWAY arrives); a stream
error with RST_STREAM. Nothing a client
sends can make a connection hold more than its streams' messages: each stream's body is
refused past the server's message limit, and the streams are capped by MAX_CONCURRENT_STREAMS.
Nor can it make the connection work or write without bound: streams reset faster than calls are
answered (rapid reset), frames we must answer that the client does not read (PING, SETTINGS
floods) and PINGs more often than the ping policy allows end it with GOAWAY ENHANCE_YOUR_CALM, and
while our output is backed up we read no more.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import math
import socket
from typing import TYPE_CHECKING, NamedTuple, Protocol, cast

import grpc
import hpack

from gateway.grpc.native import wire
from gateway.grpc.native.wire import MESSAGE_PREFIX, frame

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("tensorgate.grpc")

#: Streams a client may have open at once; one more is refused (REFUSED_STREAM, which clients retry).
MAX_STREAMS = 1024
#: What a client may send on one stream, and on the connection, before we acknowledge it: acknowledged
#: as it arrives, so these only bound the bytes in flight, not a message's size.
STREAM_WINDOW = 1 << 22
CONNECTION_WINDOW = 1 << 26
#: A call's headers, as HPACK counts them (gRPC's default too): a larger set is refused RESOURCE_EXHAUSTED.
MAX_HEADER_LIST = 16 * 1024
#: What the connection decodes at all (a header block, and the headers it expands to); past it, GOAWAY.
MAX_HEADER_BLOCK = 1 << 20
#: Decoded header blocks a connection keeps (``Connection.decode_head``).
MAX_CACHED_HEADS = 64
#: Rapid reset (CVE-2023-44487): a reset stream frees its MAX_STREAMS slot at once, so each call the client
#: resets before we answered any of it adds one to the connection's reset debt, each call we begin to answer
#: pays one back, and the debt leaks RESET_RATE a second. Past RESET_BURST (every stream a client may have
#: open, cancelled twice over with nothing answered), GOAWAY ENHANCE_YOUR_CALM. Clients cancel (deadlines,
#: hedging, a caller gone) far below that; an attack resets at wire speed, tens of thousands a second.
RESET_BURST = 2 * MAX_STREAMS
RESET_RATE = float(MAX_STREAMS)
#: Frames queued in answer to the client's own (PING and SETTINGS ACKs, RST_STREAMs, refusals) since our
#: output last drained: past this the client sends them and does not read the answers (a PING or SETTINGS
#: flood), GOAWAY ENHANCE_YOUR_CALM. The figure grpc's C core (which stops reading) and Go's server use.
MAX_PENDING_REPLIES = 10_000
#: Our output buffered in the transport past this (the client reads slower than it sends): we read
#: nothing more until it drains to a quarter of it.
WRITE_HIGH_WATER = 1 << 20
#: A connection we ended is dropped after this long if the client has not closed its side (it does not
#: read what is left to send, or goes on sending after our GOAWAY).
CLOSE_GRACE_S = 5.0
#: Server keepalive: a connection the client has sent nothing on for the dispatcher's ``keepalive_s`` gets a
#: PING, and is dropped when nothing comes back within this long (or ``keepalive_s``, if shorter). A client
#: gone without a word (a host powered off, a NAT that forgot the flow) is only found by a write.
KEEPALIVE_TIMEOUT_S = 20.0
KEEPALIVE_PING = b"tg-alive"
#: The client's pings (grpc's policy, and its figure): a PING sooner than the dispatcher's
#: ``min_ping_interval_s`` after the client's last one, with nothing of a call sent by us in between, is a
#: strike; past this many, GOAWAY ENHANCE_YOUR_CALM "too_many_pings" (grpc clients read those words and ping
#: half as often on their next connection). An answer resets the count: pings that ride along with calls
#: (keepalive on a busy channel, a flow-control probe) are never strikes.
MAX_PING_STRIKES = 2
#: Headers that are not the call's metadata (grpc's own, and HTTP's).
_RESERVED = frozenset((b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"))

Metadata = tuple[tuple[str, str | bytes], ...]


class StreamFailed(Exception):
    """A stream's request cannot be read: the status code (a grpc.StatusCode name) and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Dispatcher(Protocol):
    max_message_bytes: int
    #: Seconds of silence from a client before its connection is pinged (0: never; see KEEPALIVE_TIMEOUT_S).
    keepalive_s: float
    #: The shortest gap between a client's PINGs with nothing sent in between (0: no limit; MAX_PING_STRIKES).
    min_ping_interval_s: float

    def connection_made(self, connection: Connection) -> None: ...

    def start_call(self, connection: Connection, stream: Stream) -> None: ...

    def connection_closed(self, connection: Connection) -> None: ...


class Stream:
    """One call's stream: its request headers, the messages received, the answer still to send."""

    __slots__ = (
        "drained",
        "encoding",
        "failure",
        "headers_sent",
        "id",
        "inbox",
        "local_closed",
        "metadata",
        "on_reset",
        "outbox",
        "partial",
        "path",
        "remote_closed",
        "send_window",
        "timeout",
        "trailers",
        "unacked",
        "waiter",
    )

    def __init__(self, stream_id: int, path: str, metadata: Metadata, timeout: float | None, encoding: str,
                 send_window: int) -> None:
        self.id = stream_id
        self.path = path
        self.metadata = metadata
        self.timeout = timeout
        self.encoding = encoding
        self.partial = bytearray()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.failure: StreamFailed | None = None
        self.remote_closed = False
        self.local_closed = False
        self.send_window = send_window
        self.outbox: collections.deque[bytes] = collections.deque()
        self.trailers: bytes | None = None
        self.headers_sent = False
        self.drained: asyncio.Future[None] | None = None
        self.unacked = 0
        #: Called once when the client resets the stream or the connection goes: the call is cancelled.
        self.on_reset: Callable[[], object] | None = None

    async def read(self, limit: int) -> bytes | None:
        """The next request message (decompressed), or None once the client has half-closed."""
        while not self.inbox:
            if self.failure is not None:
                raise self.failure
            if self.remote_closed:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        raw = self.inbox.popleft()
        if raw[0] == 0:
            return raw[5:]
        if self.encoding in ("", "identity"):
            raise StreamFailed("INTERNAL", "a message flagged compressed without a grpc-encoding")
        if self.encoding not in wire.DECOMPRESSORS:
            raise StreamFailed("INTERNAL", f"grpc-encoding '{self.encoding}' is not supported (deflate, gzip)")
        try:
            return wire.decompress(raw[5:], self.encoding, limit)
        except wire.MessageTooLarge as exc:
            raise StreamFailed("RESOURCE_EXHAUSTED", str(exc)) from None
        except Exception as exc:  # zlib.error: a body that does not inflate
            raise StreamFailed("INTERNAL", f"the {self.encoding} message does not decompress: {exc}") from None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection carrying gRPC calls."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self.heads: dict[bytes, RequestHead] = {}
        self.buffer = bytearray()
        self.preface = False
        self.settled = False  # the client's first SETTINGS frame has arrived
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.continuing: tuple[int, int, bytearray] | None = None  # stream, HEADERS flags, block so far
        self.send_window = wire.DEFAULT_WINDOW
        self.peer_stream_window = wire.DEFAULT_WINDOW
        self.peer_frame_size = wire.DEFAULT_FRAME_SIZE
        self.recv_unacked = 0
        self.blocked: dict[int, Stream] = {}  # streams waiting for the connection's send window
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.going_away = False
        self.lingering = False  # ended with a GOAWAY of ours: what the client still sends is dropped
        self.closed = False
        self.reset_debt = 0.0  # rapid reset: see RESET_BURST
        self.reset_time = 0.0
        self.replies = 0  # frames queued in answer to the client's since our output drained
        self.heard = False  # the client sent something since the keepalive last looked
        self.probing = False  # a keepalive PING is out, unanswered so far
        self.keepalive: asyncio.TimerHandle | None = None
        self.ping_strikes = 0  # see MAX_PING_STRIKES
        self.last_ping = -math.inf  # when the client's last PING came (the loop's clock)
        self.answered = False  # something of a call went out since the client's last PING

    # -- the transport's side ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = _peer(transport.get_extra_info("peername"))
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        self.transport.write(wire.settings_frame({wire.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                                                  wire.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                                  wire.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST})
                             + wire.window_update(0, CONNECTION_WINDOW - wire.DEFAULT_WINDOW))
        if self.dispatcher.keepalive_s > 0:
            self.keepalive = asyncio.get_running_loop().call_later(self.dispatcher.keepalive_s, self._keepalive)
        self.dispatcher.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.keepalive is not None:
            self.keepalive.cancel()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            _reset(stream)
        self.dispatcher.connection_closed(self)

    def pause_writing(self) -> None:
        """Our output is past WRITE_HIGH_WATER: the client is not reading, so we stop reading it."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.replies = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.heard = True
        if self.lingering:
            return
        buffer = self.buffer
        buffer += data
        if not self.preface:
            if len(buffer) < len(wire.PREFACE):
                if not wire.PREFACE.startswith(bytes(buffer)):
                    self._abandon()
                return
            if buffer[: len(wire.PREFACE)] != wire.PREFACE:
                self._abandon()
                return
            del buffer[: len(wire.PREFACE)]
            self.preface = True
        start, size = 0, len(buffer)
        unpack = wire.FRAME_HEADER.unpack_from
        try:
            while size - start >= 9:
                high, low, kind, flags, stream_id = unpack(buffer, start)
                length = (high << 8) | low
                if length > wire.DEFAULT_FRAME_SIZE:
                    raise _ConnectionError(wire.FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds "
                                                                  f"SETTINGS_MAX_FRAME_SIZE {wire.DEFAULT_FRAME_SIZE}")
                end = start + 9 + length
                if end > size:
                    break
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, bytes(buffer[start + 9: end]))
                start = end
        except _ConnectionError as exc:
            self._fail(exc.code, exc.reason)
            return
        del buffer[:start]
        self._flush()

    # -- frames in --------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if not self.settled:
            if kind != wire.SETTINGS or flags & wire.ACK:
                raise _ConnectionError(wire.PROTOCOL_ERROR, "the client's preface must be followed by SETTINGS")
            self.settled = True
        if self.continuing is not None and kind != wire.CONTINUATION:
            raise _ConnectionError(wire.PROTOCOL_ERROR, "a header block was interrupted by another frame")
        if kind == wire.DATA:
            self._data(flags, stream_id, payload)
        elif kind == wire.HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == wire.CONTINUATION:
            if self.continuing is None or self.continuing[0] != stream_id:
                raise _ConnectionError(wire.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            self.continuing[2].extend(payload)
            if len(self.continuing[2]) > MAX_HEADER_BLOCK:
                raise _ConnectionError(wire.ENHANCE_YOUR_CALM, "a header block too large")
            if flags & wire.END_HEADERS:
                _, first_flags, block = self.continuing
                self.continuing = None
                self._header_block(first_flags, stream_id, bytes(block))
        elif kind == wire.SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == wire.PING:
            if len(payload) != 8:
                raise _ConnectionError(wire.FRAME_SIZE_ERROR, "a PING that is not 8 bytes")
            if stream_id != 0:
                raise _ConnectionError(wire.PROTOCOL_ERROR, "a PING on a stream")
            if not flags & wire.ACK:
                self._count_ping()
                self._reply(frame(wire.PING, wire.ACK, 0, payload))
        elif kind == wire.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == wire.RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise _ConnectionError(wire.PROTOCOL_ERROR, "a malformed RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            self.blocked.pop(stream_id, None)
            if stream is not None:
                _reset(stream)
                if not stream.headers_sent:
                    self._count_reset()
        elif kind == wire.GOAWAY:
            self.going_away = True  # the client opens no more streams; those open finish
        elif kind == wire.PUSH_PROMISE:
            raise _ConnectionError(wire.PROTOCOL_ERROR, "a client must not push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 says.

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(wire.PROTOCOL_ERROR, "DATA on stream 0")
        self.recv_unacked += len(payload)
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self.out.append(wire.window_update(0, self.recv_unacked))
            self.recv_unacked = 0
        if flags & wire.PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(wire.PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1: len(payload) - payload[0]]
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream:
                raise _ConnectionError(wire.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we already answered or reset: its bytes count against the window only
        if stream.remote_closed:
            self._reset_stream(stream, wire.STREAM_CLOSED)
            return
        if not flags & wire.END_STREAM:
            stream.unacked += len(payload)
            if stream.unacked >= STREAM_WINDOW // 2:
                self.out.append(wire.window_update(stream_id, stream.unacked))
                stream.unacked = 0
        if stream.failure is None:
            self._messages(stream, payload)
        if flags & wire.END_STREAM:
            stream.remote_closed = True
            if stream.partial and stream.failure is None:
                stream.failure = StreamFailed("INTERNAL", "the request ended inside a message")
            stream.wake()

    def _messages(self, stream: Stream, payload: bytes) -> None:
        """Cut the stream's bytes into gRPC messages (prefix included) for the call to read."""
        partial = stream.partial
        if not partial and len(payload) >= 5:  # the common case: whole messages in one frame
            _, length = MESSAGE_PREFIX.unpack_from(payload)
            if len(payload) == 5 + length and length <= self.dispatcher.max_message_bytes:
                stream.inbox.append(payload)
                stream.wake()
                return
        partial += payload
        limit = self.dispatcher.max_message_bytes
        while len(partial) >= 5:
            _, length = MESSAGE_PREFIX.unpack_from(partial)
            if length > limit:
                partial.clear()
                stream.failure = StreamFailed("RESOURCE_EXHAUSTED",
                                              f"Received message larger than max ({length} vs. {limit})")
                stream.wake()
                return
            if len(partial) < 5 + length:
                break
            stream.inbox.append(bytes(partial[: 5 + length]))
            del partial[: 5 + length]
        stream.wake()

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ConnectionError(wire.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & wire.PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(wire.PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1: len(payload) - payload[0]]
        if flags & wire.PRIORITY_FLAG:
            payload = payload[5:]
        if flags & wire.END_HEADERS:
            self._header_block(flags, stream_id, payload)
        else:
            self.continuing = (stream_id, flags, bytearray(payload))

    def _header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        head = self.decode_head(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they must end the stream
            if not flags & wire.END_STREAM:
                raise _ConnectionError(wire.PROTOCOL_ERROR, "a second header block that does not end the stream")
            self._data(wire.END_STREAM, stream_id, b"")
            return
        if stream_id <= self.last_stream:
            raise _ConnectionError(wire.PROTOCOL_ERROR, f"HEADERS on closed stream {stream_id}")
        self.last_stream = stream_id
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            self._reply(wire.rst_stream(stream_id, wire.REFUSED_STREAM))
            return
        self._open(flags, stream_id, head)

    def decode_head(self, block: bytes) -> RequestHead:
        """The header block decoded, from the cache when these bytes decoded before in the same table state.

        A client sends the same bytes for every call once its headers are in the dynamic table (gRPC's
        all do), and decoding them again would give the same headers and change nothing. A block that
        changed the table is not cached, and empties the cache: every entry was decoded in the old state.
        """
        head = self.heads.get(block)
        if head is not None:
            return head
        table = self.decoder.header_table
        before = table.maxsize, table.dynamic_entries[0] if table.dynamic_entries else None
        try:
            headers = cast(list[tuple[bytes, bytes]], self.decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            raise _ConnectionError(wire.COMPRESSION_ERROR, f"the header block does not decode: {exc}") from None
        head = _parse(headers)
        if table.maxsize != before[0] or (table.dynamic_entries[0] if table.dynamic_entries else None) is not before[1]:
            self.heads.clear()
        else:
            if len(self.heads) >= MAX_CACHED_HEADS:  # blocks that differ every call (grpc-timeout): no growth
                self.heads.clear()
            self.heads[block] = head
        return head

    def _open(self, flags: int, stream_id: int, head: RequestHead) -> None:
        if head.size > MAX_HEADER_LIST:
            self._reply(frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, stream_id, wire.RESPONSE_HEADERS
                              + wire.status_block(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                                  f"the request's headers are {head.size} bytes, more than the "
                                                  f"limit of {MAX_HEADER_LIST}")))
            if not flags & wire.END_STREAM:
                self.out.append(wire.rst_stream(stream_id, wire.NO_ERROR))
            return
        if head.method != b"POST" or not head.content_type.startswith(b"application/grpc"):
            # Not a gRPC call: 405 for a method other than POST, 415 for another content type.
            status = b"405" if head.method != b"POST" else b"415"
            self._reply(frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, stream_id,
                              wire.literal(b":status", status)))
            if not flags & wire.END_STREAM:
                self.out.append(wire.rst_stream(stream_id, wire.NO_ERROR))
            return
        stream = Stream(stream_id, head.path, head.metadata, head.timeout, head.encoding, self.peer_stream_window)
        stream.remote_closed = bool(flags & wire.END_STREAM)
        self.streams[stream_id] = stream
        self.dispatcher.start_call(self, stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) % 6:
            raise _ConnectionError(wire.FRAME_SIZE_ERROR if stream_id == 0 else wire.PROTOCOL_ERROR,
                                   "a malformed SETTINGS frame")
        if flags & wire.ACK:
            return
        grown = False
        for offset in range(0, len(payload), 6):
            key, value = wire.SETTING.unpack_from(payload, offset)
            if key == wire.INITIAL_WINDOW_SIZE:
                if value > wire.MAX_WINDOW:
                    raise _ConnectionError(wire.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta, self.peer_stream_window = value - self.peer_stream_window, value
                grown = grown or delta > 0
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == wire.MAX_FRAME_SIZE:
                if not wire.DEFAULT_FRAME_SIZE <= value < 1 << 24:
                    raise _ConnectionError(wire.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                grown = grown or value > self.peer_frame_size
                self.peer_frame_size = value
        self._reply(frame(wire.SETTINGS, wire.ACK, 0))
        if grown:  # only then can a stream send more (a SETTINGS flood does not walk the streams each time)
            for stream in list(self.streams.values()):
                self._pump(stream)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(wire.FRAME_SIZE_ERROR, "a malformed WINDOW_UPDATE")
        increment = wire.U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(wire.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > wire.MAX_WINDOW:
                raise _ConnectionError(wire.FLOW_CONTROL_ERROR, "the connection window overflowed")
            blocked, self.blocked = self.blocked, {}
            for waiting in blocked.values():
                self._pump(waiting)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if increment == 0:
            self._reset_stream(stream, wire.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > wire.MAX_WINDOW:
            self._reset_stream(stream, wire.FLOW_CONTROL_ERROR)
            return
        self._pump(stream)

    # -- answers out ------------------------------------------------------------------------------

    def send_unary(self, stream: Stream, message: bytes, trailers: bytes) -> None:
        """A whole answer: headers, one message, trailers (one write when the windows allow)."""
        if stream.local_closed or self.closed:
            return
        body = MESSAGE_PREFIX.pack(0, len(message)) + message
        size = len(body)
        if not stream.outbox and size <= min(stream.send_window, self.send_window, self.peer_frame_size):
            stream.send_window -= size
            self.send_window -= size
            self._queue(frame(wire.HEADERS, wire.END_HEADERS, stream.id, wire.RESPONSE_HEADERS)
                        + frame(wire.DATA, 0, stream.id, body)
                        + self._header_frames(stream.id, trailers, True))
            self._answering(stream)
            self._closed_locally(stream)
            return
        self.send_headers(stream)
        stream.outbox.append(body)
        stream.trailers = trailers
        self._pump(stream)

    def send_headers(self, stream: Stream) -> None:
        if stream.headers_sent or stream.local_closed or self.closed:
            return
        self._answering(stream)
        self._queue(self._header_frames(stream.id, wire.RESPONSE_HEADERS, False))

    def send_message(self, stream: Stream, message: bytes) -> None:
        if stream.local_closed or self.closed:
            return
        self.send_headers(stream)
        stream.outbox.append(MESSAGE_PREFIX.pack(0, len(message)) + message)
        self._pump(stream)

    async def drained(self, stream: Stream) -> None:
        """Until the stream's answers so far have left (the client's window is the back-pressure)."""
        while stream.outbox and not stream.local_closed and not self.closed:
            stream.drained = asyncio.get_running_loop().create_future()
            await stream.drained

    def send_trailers(self, stream: Stream, trailers: bytes) -> None:
        """End the answer; before any headers, as a trailers-only response."""
        if stream.local_closed or self.closed:
            return
        if not stream.headers_sent:
            self._answering(stream)
            self._queue(self._header_frames(stream.id, wire.RESPONSE_HEADERS + trailers, True))
            self._closed_locally(stream)
            return
        stream.trailers = trailers
        self._pump(stream)

    def _pump(self, stream: Stream) -> None:
        """Send what the windows allow of the stream's messages, then its trailers."""
        outbox = stream.outbox
        while outbox:
            allowed = min(stream.send_window, self.send_window, self.peer_frame_size)
            if allowed <= 0:
                if self.send_window <= 0:
                    self.blocked[stream.id] = stream
                return
            chunk = outbox[0]
            if len(chunk) <= allowed:
                outbox.popleft()
            else:
                outbox[0] = chunk[allowed:]
                chunk = chunk[:allowed]
            stream.send_window -= len(chunk)
            self.send_window -= len(chunk)
            self.answered = True
            self._queue(frame(wire.DATA, 0, stream.id, chunk))
        if stream.drained is not None and not stream.drained.done():
            stream.drained.set_result(None)
        if stream.trailers is not None:
            self._queue(self._header_frames(stream.id, stream.trailers, True))
            stream.trailers = None
            self._closed_locally(stream)

    def _answering(self, stream: Stream) -> None:
        """The call's first answer goes out: it pays back one client reset (``_count_reset``), and clears the
        client's ping strikes (``_count_ping``)."""
        stream.headers_sent = True
        self.answered = True
        if self.reset_debt:
            self.reset_debt = max(0.0, self.reset_debt - 1.0)

    def _count_reset(self) -> None:
        """The client reset a call before we answered any of it: rapid reset is this, at wire speed."""
        now = asyncio.get_running_loop().time()
        self.reset_debt = max(0.0, self.reset_debt - (now - self.reset_time) * RESET_RATE) + 1.0
        self.reset_time = now
        if self.reset_debt > RESET_BURST:
            raise _ConnectionError(wire.ENHANCE_YOUR_CALM, "too many calls reset before they were answered")

    def _count_ping(self) -> None:
        """The client sent a PING: one too soon after its last, with nothing answered between, is a strike."""
        interval = self.dispatcher.min_ping_interval_s
        if interval <= 0:
            return
        now = asyncio.get_running_loop().time()
        if self.answered:
            self.answered = False
            self.ping_strikes = 0
        elif now - self.last_ping < interval:
            self.ping_strikes += 1
            if self.ping_strikes > MAX_PING_STRIKES:
                raise _ConnectionError(wire.ENHANCE_YOUR_CALM, "too_many_pings")
        self.last_ping = now

    def _reply(self, data: bytes) -> None:
        """Queue a frame the client's own frame calls for: it must be reading them (``MAX_PENDING_REPLIES``)."""
        self.out.append(data)
        if self.transport is not None and not self.transport.get_write_buffer_size():
            self.replies = 0  # all we wrote before has left
        self.replies += 1
        if self.replies > MAX_PENDING_REPLIES:
            raise _ConnectionError(wire.ENHANCE_YOUR_CALM, "too many frames to answer that the client does not read")

    def _header_frames(self, stream_id: int, block: bytes, end_stream: bool) -> bytes:
        flags = wire.END_STREAM if end_stream else 0
        size = self.peer_frame_size
        if len(block) <= size:
            return frame(wire.HEADERS, flags | wire.END_HEADERS, stream_id, block)
        pieces = [block[i: i + size] for i in range(0, len(block), size)]
        frames = [frame(wire.HEADERS, flags, stream_id, pieces[0])]
        frames += [frame(wire.CONTINUATION, 0, stream_id, piece) for piece in pieces[1:-1]]
        frames.append(frame(wire.CONTINUATION, wire.END_HEADERS, stream_id, pieces[-1]))
        return b"".join(frames)

    def _closed_locally(self, stream: Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream)
        else:  # answered before the client finished sending: it need not go on (gRPC's RST_STREAM NO_ERROR)
            self._queue(wire.rst_stream(stream.id, wire.NO_ERROR))
            stream.remote_closed = True
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if self.going_away and not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def _reset_stream(self, stream: Stream, code: int) -> None:
        self._reply(wire.rst_stream(stream.id, code))
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        _reset(stream)

    # -- the connection as a whole ---------------------------------------------------------------

    def go_away(self) -> None:
        """Drain: no new streams (GOAWAY names the last one taken); close once those open are answered."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._queue(wire.goaway(self.last_stream, wire.NO_ERROR))
        if not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        """Close now (the drain's grace is over): calls still open are cancelled."""
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()

    def _keepalive(self) -> None:
        """Every ``keepalive_s``: a client heard from since the last look is alive; a silent one gets a PING; one
        still silent after the PING's timeout is gone, and its connection is dropped (nothing would reach it)."""
        if self.closed or self.lingering:
            return
        interval = self.dispatcher.keepalive_s
        loop = asyncio.get_running_loop()
        if self.heard:
            self.heard = self.probing = False
            self.keepalive = loop.call_later(interval, self._keepalive)
        elif self.probing:
            log.debug("grpc connection from %s dropped: no answer to a keepalive ping", self.peer)
            self._drop()
        else:
            self.probing = True
            self._queue(frame(wire.PING, 0, 0, KEEPALIVE_PING))
            self.keepalive = loop.call_later(min(KEEPALIVE_TIMEOUT_S, interval), self._keepalive)

    def _drop(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _queue(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing() and not self.lingering:
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            self.transport.write(data)

    def _fail(self, code: int, reason: str) -> None:
        log.debug("grpc connection from %s closed: %s", self.peer, reason)
        self.out.append(wire.goaway(self.last_stream, code, reason.encode("utf-8", "replace")[:256]))
        self._linger()

    def _linger(self) -> None:
        """End the connection so that our GOAWAY arrives: a FIN after it, and what the client still sends read and
        dropped until it closes too (a close with its bytes unread would reset the connection, GOAWAY and all)."""
        transport = self.transport
        if transport is None or self.closed or self.lingering:
            return
        self._flush()
        self.lingering = self.going_away = True
        self.buffer.clear()
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        for stream in streams.values():
            _reset(stream)
        if transport.can_write_eof():  # TLS cannot half-close: it closes
            transport.write_eof()
            transport.resume_reading()
        else:
            transport.close()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._drop)

    def _abandon(self) -> None:
        """Not HTTP/2 (an HTTP/1 request, a scanner): close without a word, as gRPC servers do."""
        self.buffer.clear()
        if self.transport is not None:
            self.transport.close()


class RequestHead(NamedTuple):
    """What a call's header block says, as the connection uses it."""

    size: int  # as HPACK counts a header list (RFC 9113, 6.5.2)
    method: bytes
    content_type: bytes
    path: str
    metadata: Metadata
    timeout: float | None
    encoding: str


def _parse(headers: list[tuple[bytes, bytes]]) -> RequestHead:
    method = path = content_type = b""
    timeout: float | None = None
    encoding = ""
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
        elif name in _RESERVED:
            if name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = wire.timeout_seconds(value.decode("latin-1"))
            elif name == b"grpc-encoding":
                encoding = value.decode("latin-1")
        elif name.endswith(b"-bin"):
            metadata.append((name.decode("latin-1"), _unbase64(value)))
        else:
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
    size = sum(len(name) + len(value) + 32 for name, value in headers)
    return RequestHead(size, method, content_type, path.decode("latin-1"), tuple(metadata), timeout, encoding)


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _reset(stream: Stream) -> None:
    stream.remote_closed = stream.local_closed = True
    stream.outbox.clear()
    if stream.failure is None:
        stream.failure = StreamFailed("CANCELLED", "the client cancelled the call")
    stream.wake()
    if stream.drained is not None and not stream.drained.done():
        stream.drained.set_result(None)
    callback, stream.on_reset = stream.on_reset, None
    if callback is not None:
        callback()


def _unbase64(value: bytes) -> bytes:
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return b""


def _peer(address: object) -> str:
    """The client's address as gRPC names it: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` or ``unix:...``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
    return f"unix:{address}" if address else "unknown"
