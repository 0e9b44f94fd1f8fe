"""The REST side of access control: key checks (``gateway.access``) and CORS, asked once per request head.

``HttpServer`` calls ``RestGuard.admit`` when a request's headers are complete, for the fast
infer path and the ASGI routes alike, so no route can be reached around it. A refused request
is answered 401 (missing, repeated or wrong key; with ``WWW-Authenticate`` naming the header)
or 403 (a group refused on this server), as ``{"error": "..."}``; its body is dropped unread.
``guarded_asgi`` does the same for the metrics port's ASGI app.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from gateway.access import AccessPolicy, Gate, Refusal, parse_rule, rest_group
from gateway.rest.cors import Cors
from gateway.rest.http_server import ASGIApp, Receive, Reply, Scope, Send, header_value
from gateway.settings import Settings

_JSON = b"application/json"
_PREFLIGHT = Reply(204, b"", b"")

Headers = Sequence[tuple[bytes, bytes]]


def _values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lower-case), however the client cased it."""
    size = len(name)
    return [value for key, value in headers if len(key) == size and key.lower() == name]



def _refusal_reply(refusal: Refusal) -> tuple[Reply, bytes]:
    challenge = b'www-authenticate: ApiKey header="%s"\r\n' % refusal.header.encode() if refusal.status == 401 else b""
    return Reply(refusal.status, _JSON, orjson.dumps({"error": refusal.message})), challenge


class RestGuard:
    """The policy and CORS settings of one REST port."""

    __slots__ = ("checks_infer", "cors", "policy")

    def __init__(self, policy: AccessPolicy, cors: Cors | None) -> None:
        self.policy = policy
        self.cors = cors
        #: False when the fast infer path has nothing to check (inference open, CORS off): it skips ``admit``.
        self.checks_infer = cors is not None or not policy.gates["inference"].open

    def admit(self, method: bytes, path: str, infer: bool, headers: Headers,
              client: Callable[[], str | None]) -> tuple[Reply | None, bytes]:
        """(a refusal or preflight answer, or None to serve it; the headers its answer gets).

        ``path`` is the decoded path the app routes on; ``infer``: the request takes the fast infer path.
        """
        extra = b""
        cors = self.cors
        if cors is not None:
            origin = header_value(headers, b"origin")
            if origin is not None:
                asked = header_value(headers, b"access-control-request-method") if method == b"OPTIONS" else None
                if asked is not None:
                    allowed, why = cors.preflight(origin, asked, b",".join(
                        _values(headers, b"access-control-request-headers")))
                    if allowed is None:
                        return Reply(403, _JSON, orjson.dumps({"error": f"CORS preflight refused: {why}"})), b""
                    return _PREFLIGHT, allowed
                extra = cors.response_headers(origin)
        group = "inference" if infer else rest_group(path)
        if group is None:
            return None, extra  # no route serves it: the app answers 404
        gate = self.policy.gates[group]
        if gate.open:
            return None, extra
        refusal = gate.check(_values(headers, gate.header_bytes))
        if refusal is None:
            return None, extra
        self.policy.refused(refusal, "rest", path, client())
        reply, challenge = _refusal_reply(refusal)
        return reply, extra + challenge


def cors_from(settings: Settings) -> Cors | None:
    """CORS as configured; None (off) without ``--cors-origins``. The key headers are always allowed."""
    if not settings.cors_origins:
        return None
    return Cors(settings.cors_origins, settings.cors_methods,
                (*settings.cors_headers, *(parse_rule(rule).header for rule in settings.protect)))


def guarded_asgi(policy: AccessPolicy, group: str, app: ASGIApp) -> ASGIApp:
    """``app`` behind ``group``'s gate (``app`` itself when the group is open)."""
    gate: Gate = policy.gates[group]
    if gate.open:
        return app

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = gate.check(_values(scope["headers"], gate.header_bytes))
            if refusal is not None:
                client: Any = scope.get("client")
                policy.refused(refusal, group, str(scope.get("path", "")), str(client[0]) if client else None)
                reply, challenge = _refusal_reply(refusal)
                headers = [(b"content-type", reply.content_type)]
                if challenge:
                    headers.append((b"www-authenticate", challenge.partition(b": ")[2].rstrip()))
                await send({"type": "http.response.start", "status": reply.status, "headers": headers})
                await send({"type": "http.response.body", "body": bytes(reply.body)})
                return
        await app(scope, receive, send)

    return guarded
