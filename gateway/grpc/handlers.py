"""The gRPC method handlers as served: each request decoded by us, and (``--access-log``) logged.

grpc.aio decodes a request with the handler's ``request_deserializer`` before the servicer runs,
and answers UNKNOWN when that raises. Here every handler is registered without one and decodes
in its own behaviour instead: a message that does not parse gets INVALID_ARGUMENT naming the
message type, and the server goes on serving. The same wrapper writes the access line of the
call when the access log is on (``gateway.access_log``); when it is off nothing else is added.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from gateway.access_log import AccessLog, trace_id

Parse = Callable[[bytes], Any]


class _Capture:
    """Stands for a server in a generated ``add_*Servicer_to_server``: keeps the method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers[service] = handlers


class HandlerRegistry(Protocol):
    """What a gRPC server offers to register handlers: grpc.aio.Server and the native server alike."""

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None: ...


def add_servicer(server: HandlerRegistry, add_to_server: Callable[[Any, Any], None], servicer: Any,
                 access: AccessLog | None) -> None:
    """Register ``servicer`` as the generated ``add_to_server`` would, with each method wrapped."""
    capture = _Capture()
    add_to_server(servicer, capture)
    for service, handlers in capture.handlers.items():
        wrapped = {method: _wrap(handler, method, access) for method, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, wrapped)


async def _decode(parse: Parse, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    try:
        return parse(raw)
    except DecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request message does not parse: {exc}")


def _wrap(handler: grpc.RpcMethodHandler, method: str, access: AccessLog | None) -> grpc.RpcMethodHandler:
    parse: Parse = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if access is None:
                return await unary(await _decode(parse, raw, context), context)
            with _Logged(access, method, context) as call:
                call.request = await _decode(parse, raw, context)
                call.reply = await unary(call.request, context)
                return call.reply

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
    if handler.unary_stream is not None:
        replies = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with _Logged(access, method, context) as call:
                call.request = await _decode(parse, raw, context)
                async for reply in replies(call.request, context):
                    yield reply

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
    if handler.stream_stream is not None:
        streamed = handler.stream_stream

        async def stream_stream(raws: AsyncIterator[bytes],
                                context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async def requests() -> AsyncIterator[Any]:
                async for raw in raws:
                    yield await _decode(parse, raw, context)

            with _Logged(access, method, context):
                async for reply in streamed(requests(), context):
                    yield reply

        return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)
    raise TypeError(f"{method}: stream-unary methods are not served here")


class _Logged:
    """Times one call and writes its access line at the end (nothing when the access log is off)."""

    def __init__(self, access: AccessLog | None, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.access = access
        self.method = method
        self.context = context
        self.request: Any = None
        self.reply: Any = None
        self.started = 0.0

    def __enter__(self) -> "_Logged":
        self.started = time.monotonic()
        return self

    def __exit__(self, kind: type[BaseException] | None, failure: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.access is None:
            return
        context, request = self.context, self.request
        metadata: Mapping[str, Any] = dict(context.invocation_metadata() or ())
        # ``name`` is the model's in ModelReady, ModelMetadata, ModelConfig and ModelStatistics only.
        model = getattr(request, "model_name", "") or (getattr(request, "name", "") if self.method.startswith("Model")
                                                        else "")
        version = getattr(self.reply, "model_version", "") or getattr(request, "model_version", "") or \
            getattr(request, "version", "")
        spec = getattr(request, "model_spec", None)  # TF Serving's requests name the model in a ModelSpec
        if spec is not None:
            model, version = spec.name, str(spec.version.value) if spec.HasField("version") else ""
        self.access.request("grpc", self.method, model, version, _status(context, failure),
                            time.monotonic() - self.started, getattr(request, "id", ""), context.peer(),
                            trace_id(metadata.get("traceparent")))


def _status(context: grpc.aio.ServicerContext[Any, Any], failure: BaseException | None) -> str:
    """The code the call ended with: an abort's, OK, CANCELLED or DEADLINE_EXCEEDED (grpc.aio cancels
    the handler for either, without a code), or UNKNOWN for an exception grpc.aio answers so."""
    code = context.code()
    if code is not None:
        return str(code.name)
    if failure is None:
        return "OK"
    if isinstance(failure, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"
