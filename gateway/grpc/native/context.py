"""The servicer context of a call on the native server: what our servicers ask of grpc.aio's.

The servicers (``gateway.grpc.servicer``, ``gateway.tfserving.grpc_servicer``) and the method
wrappers (``gateway.grpc.handlers``, ``gateway.grpc.access``) use ``abort``, ``code``,
``invocation_metadata``, ``peer`` and ``time_remaining``; the generated base classes use
``set_code``/``set_details``. That is all this context has (no trailing or initial metadata: no
servicer of ours sets any); it is handed to the same handlers grpc.aio would run.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NoReturn

import grpc

from gateway.grpc.native import wire

if TYPE_CHECKING:
    from gateway.grpc.native.connection import Connection, Metadata, Stream


class Aborted(Exception):
    """Raised by ``abort``: the call ends with the code and details set on its context."""


class NativeContext:
    __slots__ = ("_code", "_connection", "_deadline", "_details", "_stream")

    def __init__(self, connection: Connection, stream: Stream, deadline: float | None) -> None:
        self._connection = connection
        self._stream = stream
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort with OK: a call that succeeded returns its answer")
        self._code, self._details = code, details
        raise Aborted(details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def invocation_metadata(self) -> Metadata:
        return self._stream.metadata

    def peer(self) -> str:
        return self._connection.peer

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def trailers(self, code: grpc.StatusCode | None = None, details: str | None = None) -> bytes:
        """The trailer block the call ends with: the code given, else the one set (OK when none)."""
        code = code or self._code or grpc.StatusCode.OK
        details = self._details if details is None else details
        if code == grpc.StatusCode.OK and not details:
            return wire.OK_TRAILERS
        return wire.status_block(code.value[0], details)
