"""The REST port's HTTP/1.1 server: inference on a fast path, every other request through ASGI.

One ``asyncio.Protocol`` per connection feeds the bytes to ``httptools.HttpRequestParser``.
``POST /v2/models/{m}/infer`` and ``POST /v2/models/{m}/versions/{v}/infer`` go straight to an
``InferHandler`` (no routing table, no Request object, no middleware); any other request goes to
an ASGI application (the FastAPI app, which keeps the other routes and the OpenAPI document).

What the server does itself, for both paths:

- the body limit: a ``Content-Length`` over ``max_request_bytes`` gets 413 before the body is
  read; a chunked body is counted as it arrives; gzip/deflate bodies on the infer path are
  limited again once decompressed (``gateway.rest.body``);
- ``Expect: 100-continue``, keep-alive, ``Connection: close``, HTTP/1.0, an idle keep-alive
  timeout, pipelined requests answered in order (one at a time per connection);
- malformed HTTP gets 400 and the connection closes; so do 413 and 431 (after a lingering
  half-close, so the client reads the answer instead of a reset);
- a client that disconnects cancels the infer handler's task (a queued request leaves the
  queue); an ASGI app sees ``http.disconnect`` from ``receive``;
- each fast-path response is one ``transport.write`` with ``Content-Length``; ``Date`` is
  refreshed by a ticker, not computed per request;
- a ``RequestGuard`` (``gateway.rest.guard``: API keys, CORS) is asked once per request head, on
  the decoded path the app routes on; what it refuses is answered without keeping the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools
import orjson

from gateway.access_log import CLIENT_CLOSED, AccessLog, model_of_path, trace_id
from gateway.logs import log_event
from gateway.protocol.errors import TensorGateError
from gateway.rest.body import decode_content

__all__ = ["ASGIApp", "HttpServer", "InferHandler", "Reply", "RequestGuard", "header_value"]

log = logging.getLogger("tensorgate.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(slots=True)
class Reply:
    """What the infer handler answers: ``header_length`` becomes Inference-Header-Content-Length."""

    status: int
    content_type: bytes
    body: bytes | bytearray | memoryview
    header_length: int | None = None
    #: For the access log: the version that answered, and the v2 request ``id``.
    model_version: str = ""
    request_id: str = ""


class InferHandler(Protocol):
    """The fast path: the (decompressed) body of ``POST .../infer`` in, a ``Reply`` out; ``headers`` are
    the request's, as sent (for what only some requests read, such as ``traceparent``).

    It may raise ``TensorGateError`` (answered ``{"error": message}`` with its status); it is
    cancelled when the client disconnects.
    """

    async def __call__(self, model: str, version: str | None, body: bytes,
                       header_length: str | None, headers: list[tuple[bytes, bytes]]) -> Reply: ...


class RequestGuard(Protocol):
    """Asked once per request head, for both paths (``gateway.rest.guard``: API keys and CORS)."""

    #: False when the fast infer path has nothing to check: it skips ``admit``.
    checks_infer: bool

    def admit(self, method: bytes, path: str, infer: bool, headers: list[tuple[bytes, bytes]],
              client: Callable[[], str | None]) -> tuple[Reply | None, bytes]:
        """(an answer instead of serving it, or None; header lines for its answer). ``path``: the decoded
        path (the one the ASGI app routes on); ``infer``: the request takes the fast infer path."""
        ...


#: URL plus headers of one request; more gets 431.
MAX_HEAD_BYTES = 64 * 1024
#: Pipelined requests waiting on one connection before it stops reading.
MAX_PIPELINE = 16
#: After an error that leaves the body unread, how long the half-closed connection keeps
#: reading (and dropping) what the client still sends, so it reads the answer, not a reset.
LINGER_S = 2.0
#: Fast-path bodies up to this size are joined to the head (one ``write`` of one buffer).
_JOIN_LIMIT = 64 * 1024

_JSON = b"application/json"
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SERVER = b"server: tensorgate\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_NO_BODY_STATUS = frozenset((204, 304))
_SPECIAL_HEADER_LENGTHS = frozenset((6, 14, 16, 31))  # expect, content-length, -encoding, inference-...

# Request kinds.
_INFER = 0
_ASGI = 1
_ERROR = 2


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _error_reply(status: int, message: str) -> Reply:
    return Reply(status, _JSON, orjson.dumps({"error": message}))


def _decode_segment(segment: bytes) -> str:
    text = segment.decode("latin-1")
    return unquote(text) if "%" in text else text


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first header called ``name`` (lowercase), whatever case the client wrote it in."""
    for key, value in headers:
        if len(key) == len(name) and key.lower() == name:
            return value
    return None


def _target(url: bytes) -> tuple[bytes, bytes]:
    """(raw path, query) of a request target, origin-form or absolute-form (``"*"``: ``/``)."""
    if url.startswith(b"/"):
        raw_path, _, query = url.partition(b"?")
        return raw_path, query
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        parsed = None
    return (parsed.path if parsed is not None else None) or b"/", (parsed.query if parsed is not None else None) or b""


def _infer_route(path: bytes) -> tuple[str, str | None] | None:
    """(model, version) when ``path`` is an infer path, else None; no regex."""
    if not (path.startswith(b"/v2/models/") and path.endswith(b"/infer")):
        return None
    parts = path[11:-6].split(b"/")
    if len(parts) == 1 and parts[0]:
        return _decode_segment(parts[0]), None
    if len(parts) == 3 and parts[1] == b"versions" and parts[0] and parts[2]:
        return _decode_segment(parts[0]), _decode_segment(parts[2])
    return None


class _Reject(Exception):
    """Raised in a parser callback to stop parsing and answer ``reply``, then close."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class _Request:
    __slots__ = ("body", "content_encoding", "content_length", "error", "expect", "extra",
                 "header_length", "headers", "http_version", "keep_alive", "kind", "method", "model",
                 "released", "started", "url", "version")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.method = b""
        self.http_version = "1.1"
        self.keep_alive = True
        self.kind = _ASGI
        self.model = ""
        self.version: str | None = None
        self.content_length: bytes | None = None
        self.content_encoding: bytes | None = None
        self.header_length: bytes | None = None
        self.expect: bytes | None = None
        self.error: Reply | None = None
        #: Header lines every answer to it carries (CORS, a key challenge).
        self.extra = b""
        self.released = False
        self.started = 0.0


class HttpServer:
    """HTTP/1.1 on asyncio: ``infer`` for the two infer paths, ``asgi_app`` for everything else."""

    def __init__(self, asgi_app: ASGIApp, infer: InferHandler, max_request_bytes: int, *,
                 keep_alive_s: float = 30, access_log: AccessLog | None = None,
                 guard: RequestGuard | None = None) -> None:
        self.app = asgi_app
        self.access = access_log
        self.guard = guard
        self.infer = infer
        self.max_request_bytes = max_request_bytes
        self.keep_alive_s = keep_alive_s
        self.closing = False
        #: The ASGI scope's scheme: "https" once ``start`` is given a TLS context.
        self.scheme = "http"
        self.now = 0.0
        #: ``date: ...\r\n``, refreshed by the ticker once a second.
        self.date_header = b""
        self._second = -1
        self._in_progress = 0
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_s = min(1.0, max(0.01, keep_alive_s / 4))
        self._drained: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool, tls: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port`` (``reuse_port``: SO_REUSEPORT, for several processes on one port;
        ``tls``: HTTPS, the handshake done by the event loop's TLS transport before any byte reaches us)."""
        self._loop = loop = asyncio.get_running_loop()
        self._tick()
        self.scheme = "http" if tls is None else "https"
        self._server = await loop.create_server(lambda: _Connection(self), host, port, ssl=tls,
                                                reuse_port=reuse_port, backlog=2048)

    @property
    def port(self) -> int:
        """The port listened on (useful after ``start(host, 0, ...)``)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def requests_in_progress(self) -> int:
        """Requests being received, queued on their connection, or handled."""
        return self._in_progress

    async def close(self, grace_s: float) -> None:
        """Stop accepting; let requests in progress finish for up to ``grace_s``; close the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.shutdown()
        if self._in_progress:
            assert self._loop is not None
            self._drained = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), grace_s)
            except TimeoutError:
                log_event(log, "http_close_timeout", level=logging.WARNING, in_progress=self._in_progress)
        for connection in list(self._connections):
            connection.transport_close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost run (it cancels what is still running)

    # -- what the connections share ---------------------------------------------------------

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        self.now = now = loop.time()
        second = int(time.time())
        if second != self._second:
            self._second = second
            self.date_header = b"date: %s\r\n" % formatdate(second, usegmt=True).encode()
        limit = self.keep_alive_s
        for connection in list(self._connections):
            since = connection.idle_since
            if since is not None and now - since >= limit:
                connection.transport_close()
        self._tick_handle = loop.call_later(self._tick_s, self._tick)

    def _opened(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def _closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    def _begin(self) -> None:
        self._in_progress += 1

    def _end(self) -> None:
        self._in_progress -= 1
        if not self._in_progress and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue in order, answer one request at a time."""

    __slots__ = ("_chunks", "_client", "_drain", "_local", "active", "current", "cycle", "head_bytes", "idle_since",
                 "loop", "lost", "owe_continue", "parser", "pending", "reading_paused", "server", "size", "stopped",
                 "task", "transport", "write_paused")

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: _Request | None = None
        self.pending: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.active: _Request | None = None  # the request ``task`` answers
        self.cycle: _Cycle | None = None
        self.idle_since: float | None = None
        self.lost = False
        self.stopped = False  # no more parsing (after an error, an upgrade, or when closing)
        self.owe_continue = False
        self.reading_paused = False
        self.write_paused = False
        self.head_bytes = 0
        self.size = 0
        self._chunks: list[bytes] = []
        self._drain: asyncio.Future[None] | None = None
        self._client: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.idle_since = self.server.now
        self.server._opened(self)
        if self.server.closing:
            self.transport_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.stopped = True
        self.idle_since = None
        self.server._closed(self)
        if self.current is not None:
            self._release(self.current)
            if self.server.access is not None:
                self._access(self.current, CLIENT_CLOSED)  # hung up while sending it
            self.current = None
        while self.pending:
            self._release(self.pending.popleft())
        if self.cycle is not None:
            self.cycle.wake()  # the ASGI app sees http.disconnect; it ends in its own time
        elif self.task is not None:
            self.task.cancel()  # the infer handler: a queued request leaves its queue
            if self.active is not None:
                self._release(self.active)  # (a task cancelled before its first step runs no code)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return  # lingering after an error, or closing: drop what still comes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
            if isinstance(reason, _Reject):
                self._reject(reason.reply)
            else:
                log_event(log, "http_parser_callback_failed", level=logging.ERROR, error=repr(reason))
                self._reject(_error_reply(500, "internal server error"))
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: answer what was parsed as plain HTTP, then close.
            self.stopped = True
            if self.current is not None:
                self._reject(_error_reply(400, "protocol upgrades are not supported"))
            elif self.pending:
                self.pending[-1].keep_alive = False
        except httptools.HttpParserError as exc:
            self._reject(_error_reply(400, f"malformed HTTP request: {exc}"))
        if self.pending:
            if self.task is None:
                self._next()
            if len(self.pending) >= MAX_PIPELINE and not self.reading_paused and not self.lost:
                self.reading_paused = True
                self._transport().pause_reading()

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: treat it as a disconnect (close ours)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.task is None and self.pending:
            self._next()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = request = _Request()
        if self.server.access is not None:
            request.started = time.monotonic()  # (uvloop's loop.time() counts whole milliseconds)
        self.server._begin()
        self.idle_since = None
        self.head_bytes = 0
        self.size = 0
        self._chunks = []

    def on_url(self, url: bytes) -> None:
        request = self.current
        assert request is not None
        request.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Reject(_error_reply(431, f"request URL and headers exceed {MAX_HEAD_BYTES} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        request.headers.append((name, value))
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Reject(_error_reply(431, f"request URL and headers exceed {MAX_HEAD_BYTES} bytes"))
        if len(name) in _SPECIAL_HEADER_LENGTHS:
            key = name.lower()
            if key == b"content-length":
                request.content_length = value
            elif key == b"content-encoding":
                request.content_encoding = value
            elif key == b"inference-header-content-length":
                request.header_length = value
            elif key == b"expect":
                request.expect = value

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        parser = self.parser
        request.method = parser.get_method()
        request.keep_alive = parser.should_keep_alive()
        request.http_version = parser.get_http_version()
        url = request.url
        path = url.partition(b"?")[0] if b"?" in url else url
        route = _infer_route(path)
        if route is not None:
            if request.method == b"POST":
                request.kind = _INFER
                request.model, request.version = route
            else:
                request.kind = _ERROR
                request.error = _error_reply(
                    405, f"method {request.method.decode('latin-1')} is not allowed on {path.decode('latin-1')}; "
                         "use POST")
        guard = self.server.guard
        if guard is not None and (route is None or guard.checks_infer):
            routed = unquote(_target(url)[0].decode("latin-1"))
            answer, request.extra = guard.admit(request.method, routed, route is not None, request.headers,
                                                self._client_host)
            if answer is not None:
                request.kind = _ERROR
                request.error = answer
        limit = self.server.max_request_bytes
        declared = request.content_length
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Reject(_error_reply(
                413, f"request body of {declared.decode()} bytes exceeds the limit of {limit} bytes"))
        if request.expect is not None and request.expect.lower() == b"100-continue":
            if self.task is None and not self.pending:
                self._transport().write(_CONTINUE)
            else:
                self.owe_continue = True  # after the answers ahead of it (in order)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.server.max_request_bytes:
            raise _Reject(_error_reply(413, f"request body exceeds the limit of {self.server.max_request_bytes} bytes"))
        request = self.current
        if request is not None and request.kind != _ERROR:  # an answer decided already needs no body
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        chunks = self._chunks
        if chunks:
            request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
        self.current = None
        self.owe_continue = False
        self.pending.append(request)

    # -- answering --------------------------------------------------------------------------

    def _transport(self) -> asyncio.Transport:
        transport = self.transport
        assert transport is not None
        return transport

    def _reject(self, reply: Reply) -> None:
        """Answer ``reply`` after the requests ahead of it, then close; parse nothing more."""
        self.stopped = True
        request = self.current
        if request is None:
            request = _Request()
            self.server._begin()
        self.current = None
        request.kind = _ERROR
        request.error = reply
        request.keep_alive = False
        self.pending.append(request)

    def _next(self) -> None:
        """Start the next queued request; error answers are written at once, in order."""
        server = self.server
        while self.task is None and self.pending and not self.write_paused and not self.lost:
            request = self.pending.popleft()
            if self.reading_paused and len(self.pending) < MAX_PIPELINE // 2:
                self.reading_paused = False
                self._transport().resume_reading()
            if request.kind == _INFER:
                self.active = request
                self.task = self.loop.create_task(self._infer(request))
                return
            if request.kind == _ASGI:
                self.active = request
                self.task = self.loop.create_task(self._asgi(request))
                return
            assert request.error is not None
            extra = b"allow: POST\r\n" if request.error.status == 405 else b""
            self._write_reply(request, request.error, extra)
            if server.access is not None:
                self._access(request, request.error.status)
            self._release(request)
            if not self._after(request):
                return
        if self.task is None and not self.pending and not self.lost:
            if self.current is None:
                self.idle_since = server.now
            elif self.owe_continue:
                self.owe_continue = False
                self._transport().write(_CONTINUE)

    def _closes_after(self, request: _Request) -> bool:
        """Whether the connection closes after answering ``request`` (its answer then says so)."""
        return not request.keep_alive or (self.server.closing and not self.pending and self.current is None)

    def _after(self, request: _Request) -> bool:
        """After an answer: close the connection if it ends here; True when it stays open."""
        if self.lost:
            return False
        if not request.keep_alive:
            self._close(linger=self.stopped)
            return False
        if self.server.closing and not self.pending and self.current is None:
            self.transport_close()
            return False
        return True

    def _release(self, request: _Request) -> None:
        if not request.released:
            request.released = True
            self.server._end()

    def _write_reply(self, request: _Request, reply: Reply, extra: bytes = b"") -> None:
        body = reply.body
        size = body.nbytes if isinstance(body, memoryview) else len(body)
        if reply.header_length is not None:
            extra += b"inference-header-content-length: %d\r\n" % reply.header_length
        if request.extra:
            extra += request.extra
        if self._closes_after(request):
            request.keep_alive = False
            extra += _CLOSE
        elif request.http_version == "1.0":
            extra += _KEEP_ALIVE
        if reply.status in _NO_BODY_STATUS:
            head = b"%s%s%s%s\r\n" % (_status_line(reply.status), extra, self.server.date_header, _SERVER)
        else:
            head = b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s%s\r\n" % (
                _status_line(reply.status), reply.content_type, size, extra, self.server.date_header, _SERVER)
        transport = self._transport()
        if transport.is_closing():
            return
        if request.method == b"HEAD":
            transport.write(head)
        elif size <= _JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.writelines((head, body))

    async def _infer(self, request: _Request) -> None:
        try:
            body = request.body
            if request.content_encoding is not None:
                body = decode_content(body, request.content_encoding.decode("latin-1"),
                                      self.server.max_request_bytes)
            header_length = request.header_length
            reply = await self.server.infer(request.model, request.version, body,
                                            None if header_length is None else header_length.decode("latin-1"),
                                            request.headers)
        except TensorGateError as exc:
            reply = _error_reply(exc.http_status, exc.message)
        except asyncio.CancelledError:
            self._release(request)
            self.task = self.active = None
            if self.server.access is not None:
                self._access(request, CLIENT_CLOSED)
            raise
        except Exception as exc:
            log_event(log, "infer_failed", level=logging.ERROR, model=request.model,
                      error=f"{type(exc).__name__}: {exc}")
            reply = _error_reply(500, f"internal server error: {type(exc).__name__}")
        self.task = self.active = None
        if self.server.access is not None:
            self._access(request, CLIENT_CLOSED if self.lost else reply.status, reply.model_version, reply.request_id)
        if self.lost:
            self._release(request)
            return
        self._write_reply(request, reply)
        self._release(request)
        if self._after(request):
            if self.write_paused:
                return  # resume_writing starts the next one
            self._next()

    async def _asgi(self, request: _Request) -> None:
        cycle = self.cycle = _Cycle(self, request)
        try:
            await self.server.app(cycle.scope(), cycle.receive, cycle.send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_event(log, "asgi_app_failed", level=logging.ERROR, path=request.url.decode("latin-1"),
                      error=f"{type(exc).__name__}: {exc}")
            cycle.failed("internal server error")
        else:
            if not cycle.complete:
                cycle.failed("the application did not complete its response")
        finally:
            self.cycle = None
            self.task = self.active = None
            self._release(request)
            if self.server.access is not None:
                self._access(request, cycle.status if cycle.complete and cycle.head_written else
                             CLIENT_CLOSED if self.lost else 500)
        if self._after(request) and not self.write_paused:
            self._next()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark again."""
        if self.write_paused and not self.lost:
            if self._drain is None or self._drain.done():
                self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    # -- closing ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is closing: close now if idle, else after the requests already here."""
        if self.current is None and self.task is None and not self.pending:
            self.transport_close()

    def transport_close(self) -> None:
        self.stopped = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _close(self, linger: bool) -> None:
        transport = self._transport()
        self.stopped = True
        if linger:
            # Send the answer (and FIN, where the transport can half-close: TLS cannot); keep
            # reading (and dropping) for a moment so the client's unsent body does not turn our
            # close into a reset that eats the answer.
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport_close)
        else:
            transport.close()

    def _client_host(self) -> str | None:
        client = self.client_server()[0]
        return client[0] if client is not None else None

    def _access(self, request: _Request, status: int, version: str = "", request_id: str = "") -> None:
        """The request's access-log line (``--access-log``): never a header's value but the trace id."""
        access = self.server.access
        assert access is not None
        path = request.url.partition(b"?")[0].decode("latin-1")
        if request.kind == _INFER:
            model, named_version = request.model, request.version or ""
        else:
            model, named_version = model_of_path(path)
        traceparent = header_value(request.headers, b"traceparent")
        client, _ = self.client_server()
        seconds = time.monotonic() - request.started if request.started else 0.0  # 0: refused before it began
        access.request("rest", path, model, version or named_version, status, seconds, request_id,
                       f"{client[0]}:{client[1]}" if client else "", trace_id(traceparent))

    def client_server(self) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        if self._local is None and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            sock = self.transport.get_extra_info("sockname")
            self._client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
            self._local = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None
        return self._client, self._local


class _Cycle:
    """One ASGI request/response: ``receive`` gives the body once, then waits for the end."""

    __slots__ = ("body_given", "chunked", "complete", "conn", "head_written", "headers", "length_known", "request",
                 "started", "status", "waiter")

    def __init__(self, conn: _Connection, request: _Request) -> None:
        self.conn = conn
        self.request = request
        self.started = False
        self.head_written = False
        self.complete = False
        self.length_known = False
        self.chunked = False
        self.body_given = False
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.waiter: asyncio.Future[None] | None = None

    def scope(self) -> Scope:
        request = self.request
        raw_path, query = _target(request.url)
        client, server = self.conn.client_server()
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method.decode("latin-1"),
            "scheme": self.conn.server.scheme,
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(name.lower(), value) for name, value in request.headers],
            "client": client,
            "server": server,
        }

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        if not self.body_given:
            self.body_given = True
            return {"type": "http.request", "body": self.request.body, "more_body": False}
        if not (self.conn.lost or self.complete):
            if self.waiter is None or self.waiter.done():
                self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = list(message.get("headers", ()))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            raise RuntimeError("http.response.body after the response was complete")
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not more:
            self.complete = True
            self.wake()
        conn = self.conn
        transport = conn._transport()
        if conn.lost or transport.is_closing():
            return
        request = self.request
        write = transport.write
        no_body = request.method == b"HEAD" or self.status in _NO_BODY_STATUS
        head = b""
        if not self.head_written:
            self.head_written = True
            head = self._head(len(body), more, no_body)
        if no_body or not body:
            data = head
        elif self.chunked:
            data = b"%s%x\r\n%s\r\n" % (head, len(body), body)
        else:
            data = head + body
        if not more and self.chunked:
            data += b"0\r\n\r\n"
        if data:
            write(data)
        if more:
            await conn.drain()

    def _head(self, size: int, more: bool, no_body: bool) -> bytes:
        request = self.request
        lines = [_status_line(self.status)]
        has_date = has_server = False
        for name, value in self.headers:
            key = name.lower()
            if key == b"content-length":
                self.length_known = True
            elif key in (b"connection", b"transfer-encoding"):
                continue
            elif key == b"date":
                has_date = True
            elif key == b"server":
                has_server = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if not self.length_known and self.status not in _NO_BODY_STATUS:
            if not more:
                lines.append(b"content-length: %d\r\n" % size)
            elif request.http_version != "1.0" and not no_body:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            elif not no_body:
                request.keep_alive = False  # HTTP/1.0 stream without a length: ends with the connection
        if self.conn._closes_after(request):
            request.keep_alive = False
            lines.append(_CLOSE)
        elif request.http_version == "1.0":
            lines.append(_KEEP_ALIVE)
        if not has_date:
            lines.append(self.conn.server.date_header)
        if not has_server:
            lines.append(_SERVER)
        if request.extra:
            lines.append(request.extra)
        lines.append(b"\r\n")
        return b"".join(lines)

    def failed(self, message: str) -> None:
        """The app raised or returned without completing: 500 if nothing was sent, close if half sent."""
        conn = self.conn
        if conn.lost:
            return
        if not self.head_written:
            conn._write_reply(self.request, _error_reply(500, message))
        elif not self.complete:
            self.request.keep_alive = False  # a half-sent response: only closing ends it
        self.complete = True
        self.wake()
