"""The gRPC side of access control: one server interceptor in front of every service.

Each call's method is looked up in ``gateway.access.GRPC_SERVICES``; an open group goes straight
to its handler. A refused call gets UNAUTHENTICATED (missing, repeated or wrong key) or
PERMISSION_DENIED (a group refused on this server), from a handler of the method's own shape,
so that streaming methods are refused like unary ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.access import AccessPolicy, Gate, Refusal, grpc_group


def _refusing(handler: grpc.RpcMethodHandler, refusal: Refusal, policy: AccessPolicy,
              method: str) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape that refuses the call (and logs it, with the caller's address)."""

    async def refuse(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        policy.refused(refusal, "grpc", method, context.peer())
        await context.abort(grpc.StatusCode[refusal.grpc_code], refusal.message)

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # untyped base
    """Lets a call through when its group is open or its key is accepted."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy
        self._gates: dict[str, Gate] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        gate = self._gates.get(method)
        if gate is None:
            group = grpc_group(method)
            if group is None:  # not a method served here: gRPC answers UNIMPLEMENTED (and it is not cached)
                return await continuation(details)
            gate = self._gates[method] = self._policy.gates[group]
        if gate.open:
            return await continuation(details)
        name = gate.header
        metadata = details.invocation_metadata or ()
        values = [v.encode() if isinstance(v, str) else v for k, v in metadata if k == name]
        refusal = gate.check(values)
        handler = await continuation(details)
        if refusal is None or handler is None:
            return handler
        return _refusing(handler, refusal, self._policy, method)
