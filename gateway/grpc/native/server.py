"""The native gRPC server: the HTTP/2 of ``gateway.grpc.native.connection`` under grpc.aio's handlers.

It takes the same method handlers and interceptors as a ``grpc.aio.Server`` (``add_servicer``
registers into either) and runs each call as one task on the frontend's event loop: a unary call
costs its protobuf work and a few frames, not grpc.aio's completion queue, threads and Cython
round trips (docs/decisions.md, "gRPC: our own HTTP/2"). What grpc.aio does at the edges, this
does too: deadlines (``grpc-timeout``) end a call DEADLINE_EXCEEDED, a client's RST_STREAM or
disconnect cancels it, gzip and deflate requests are inflated, a message past the limit is
RESOURCE_EXHAUSTED, an unknown method UNIMPLEMENTED, and ``stop(grace)`` sends GOAWAY, lets
the calls in flight finish for ``grace`` seconds and then cancels them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc

from gateway.grpc.native.connection import Connection, Stream, StreamFailed
from gateway.grpc.native.context import Aborted, NativeContext

log = logging.getLogger("tensorgate.grpc")

Handler: TypeAlias = grpc.RpcMethodHandler


class CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]  # untyped base
    """What an interceptor sees of a call: its method path and metadata."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, invocation_metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class NativeServer:
    """A gRPC server on the running event loop, with grpc.aio.Server's registration and lifecycle."""

    def __init__(self, max_message_bytes: int, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                 keepalive_s: float = 0.0, min_ping_interval_s: float = 0.0) -> None:
        self.max_message_bytes = max_message_bytes
        #: Seconds of a client's silence before its connection is pinged (0: never; connection.KEEPALIVE_TIMEOUT_S).
        self.keepalive_s = keepalive_s
        #: The client's ping policy (0: none; connection.MAX_PING_STRIKES).
        self.min_ping_interval_s = min_ping_interval_s
        self._interceptors = tuple(interceptors)
        self._handlers: dict[str, Handler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._addresses: list[tuple[str, int, ssl.SSLContext | None]] = []
        self._listeners: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None

    # -- grpc.aio.Server's registration ----------------------------------------------------------

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        for method, handler in handlers.items():
            self._handlers[f"/{service}/{method}"] = handler

    def add_insecure_port(self, address: str) -> int:
        return self._add_port(address, None)

    def add_secure_port(self, address: str, context: ssl.SSLContext) -> int:
        """TLS with ``context`` (which must offer ALPN ``h2``)."""
        return self._add_port(address, context)

    def _add_port(self, address: str, context: ssl.SSLContext | None) -> int:
        host, _, port = address.rpartition(":")
        self._addresses.append((host.strip("[]") or "0.0.0.0", int(port), context))
        return int(port)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        for host, port, context in self._addresses:
            # Every frontend process binds the same port; the kernel spreads connections over them.
            self._listeners.append(await loop.create_server(lambda: Connection(self), host, port, reuse_port=True,
                                                            ssl=context, backlog=1024))

    async def stop(self, grace: float | None) -> None:
        """GOAWAY to every client, ``grace`` seconds for the calls in flight, then close."""
        self._stopping = True
        for listener in self._listeners:
            listener.close()
        for connection in list(self._connections):
            connection.go_away()
        if self._calls and grace:
            await asyncio.wait(set(self._calls), timeout=grace)
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=1.0)
        for connection in list(self._connections):
            connection.abort()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def wait_for_termination(self) -> None:
        if self._stopped is not None:
            await self._stopped

    # -- the connections' side ------------------------------------------------------------------

    def connection_made(self, connection: Connection) -> None:
        self._connections.add(connection)
        if self._stopping:
            connection.go_away()

    def connection_closed(self, connection: Connection) -> None:
        self._connections.discard(connection)

    def start_call(self, connection: Connection, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if stream.timeout is None else loop.time() + stream.timeout
        task = loop.create_task(self._call(connection, stream, NativeContext(connection, stream, deadline)))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        stream.on_reset = task.cancel
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, stream, task)
            task.add_done_callback(lambda _: timer.cancel())

    async def _call(self, connection: Connection, stream: Stream, context: NativeContext) -> None:
        try:
            handler = await self._handler(stream.path, stream.metadata)
            if handler is None:
                connection.send_trailers(stream, context.trailers(grpc.StatusCode.UNIMPLEMENTED, "Method not found!"))
                return
            if handler.response_streaming:
                await self._streaming(connection, stream, context, handler)
            else:
                behaviour = handler.unary_unary or handler.stream_unary
                reply = behaviour(await self._request(stream, handler), context)
                if asyncio.iscoroutine(reply):
                    reply = await reply
                serialize = handler.response_serializer
                connection.send_unary(stream, serialize(reply) if serialize is not None else reply,
                                      context.trailers())
        except Aborted:
            connection.send_trailers(stream, context.trailers())
        except StreamFailed as failure:
            if failure.code != "CANCELLED":
                connection.send_trailers(stream, context.trailers(grpc.StatusCode[failure.code], failure.message))
        except asyncio.CancelledError:
            if stream.failure is not None and stream.failure.code == "DEADLINE_EXCEEDED":
                connection.send_trailers(stream, context.trailers(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                                  "Deadline Exceeded"))
            elif stream.failure is None:  # the server is stopping and the drain's grace is over
                connection.send_trailers(stream, context.trailers(grpc.StatusCode.UNAVAILABLE,
                                                                  "the server is shutting down"))
        except Exception as exc:
            code = context.code()
            if code is None or code == grpc.StatusCode.OK:  # grpc.aio's answer to a servicer that raised
                log.exception("grpc %s failed", stream.path)
                connection.send_trailers(stream, context.trailers(grpc.StatusCode.UNKNOWN,
                                                                  f"Unexpected {type(exc)}: {exc}"))
            else:  # a code set before raising, as the generated base classes do for methods not served
                connection.send_trailers(stream, context.trailers())
        finally:
            stream.on_reset = None

    async def _streaming(self, connection: Connection, stream: Stream, context: NativeContext,
                         handler: Handler) -> None:
        serialize = handler.response_serializer
        if handler.request_streaming:
            replies = handler.stream_stream(self._requests(stream, handler), context)
        else:
            replies = handler.unary_stream(await self._request(stream, handler), context)
        if asyncio.iscoroutine(replies):  # a behaviour that answers no message (the access refusal aborts)
            await replies
        else:
            async for reply in replies:
                connection.send_message(stream, serialize(reply) if serialize is not None else reply)
                await connection.drained(stream)
        connection.send_trailers(stream, context.trailers())

    async def _request(self, stream: Stream, handler: Handler) -> Any:
        """A unary call's one request message (a stream-request call gets the iterator instead)."""
        if handler.request_streaming:
            return self._requests(stream, handler)
        message = await stream.read(self.max_message_bytes)
        if message is None:
            raise StreamFailed("INTERNAL", "the call sent no request message")
        if await stream.read(self.max_message_bytes) is not None:
            raise StreamFailed("INTERNAL", "a unary call sent more than one request message")
        parse = handler.request_deserializer
        return parse(message) if parse is not None else message

    async def _requests(self, stream: Stream, handler: Handler) -> AsyncIterator[Any]:
        parse = handler.request_deserializer
        while (message := await stream.read(self.max_message_bytes)) is not None:
            yield parse(message) if parse is not None else message

    async def _handler(self, path: str, metadata: tuple[tuple[str, str | bytes], ...]) -> Handler | None:
        if not self._interceptors:
            return self._lookup(CallDetails(path, metadata))
        return await self._intercepted(0, CallDetails(path, metadata))

    async def _intercepted(self, index: int, details: CallDetails) -> Handler | None:
        if index == len(self._interceptors):
            return self._lookup(details)
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]] = \
            functools.partial(self._intercepted, index + 1)
        handler: Handler | None = await self._interceptors[index].intercept_service(continuation, details)
        return handler

    def _lookup(self, details: CallDetails) -> Handler | None:
        handler = self._handlers.get(details.method)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        return handler


def _expire(stream: Stream, task: asyncio.Task[None]) -> None:
    """The call's deadline has passed: it is cancelled and answers DEADLINE_EXCEEDED."""
    if stream.failure is None:
        stream.failure = StreamFailed("DEADLINE_EXCEEDED", "Deadline Exceeded")
    task.cancel()
