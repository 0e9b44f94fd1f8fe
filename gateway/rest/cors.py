"""CORS for browser clients of the REST port: preflights answered, allowed origins told so.

Off unless ``--cors-origins`` names origins. A preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) is answered by the server on every path, before any key check
(browsers never send keys on a preflight). Any other request from an allowed origin gets
``Access-Control-Allow-Origin`` on its answer, errors included, and may read
``Inference-Header-Content-Length`` (a browser client of the binary extension needs it to split
the body). Requests from other origins are served without CORS headers: the browser then keeps
the answer from the page. No cookies are used, so credentials are never allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

#: How long a browser may cache a preflight's answer.
MAX_AGE_S = 600
_EXPOSE = b"access-control-expose-headers: inference-header-content-length\r\n"


class Cors:
    """The allowed origins (``*``: any), methods and request headers (``*``: any)."""

    __slots__ = ("_any_header", "_any_origin", "_header_list", "_headers", "_methods", "_origins", "_preflight_tail")

    def __init__(self, origins: Sequence[str], methods: Sequence[str], headers: Sequence[str]) -> None:
        self._any_origin = "*" in origins
        self._origins = frozenset(o.encode().lower() for o in origins)
        self._methods = frozenset(m.upper().encode() for m in methods)
        self._any_header = "*" in headers
        self._headers = frozenset(h.lower().encode() for h in headers)
        self._header_list = b", ".join(sorted(self._headers - {b"*"}))
        allowed = b", ".join(sorted(self._methods))
        self._preflight_tail = b"access-control-allow-methods: %s\r\naccess-control-max-age: %d\r\n" % (
            allowed, MAX_AGE_S)

    def _allow_origin(self, origin: bytes) -> bytes | None:
        if self._any_origin:
            return b"access-control-allow-origin: *\r\n"
        if origin.lower() in self._origins:
            return b"access-control-allow-origin: %s\r\nvary: origin\r\n" % origin
        return None

    def response_headers(self, origin: bytes | None) -> bytes:
        """The CORS headers for an answer to a request from ``origin`` (none for another origin)."""
        if origin is None:
            return b""
        allow = self._allow_origin(origin)
        return b"" if allow is None else allow + _EXPOSE

    def preflight(self, origin: bytes, method: bytes, request_headers: bytes) -> tuple[bytes | None, str]:
        """A preflight's answer headers, or None and why it is refused."""
        allow = self._allow_origin(origin)
        if allow is None:
            return None, f"origin {origin.decode('latin-1')} is not allowed (--cors-origins)"
        if method.strip().upper() not in self._methods:
            return None, f"method {method.decode('latin-1')} is not allowed (--cors-methods)"
        asked = [h.strip().lower() for h in request_headers.split(b",") if h.strip()]
        if not self._any_header:
            refused = [h for h in asked if h not in self._headers]
            if refused:
                return None, f"header {refused[0].decode('latin-1')} is not allowed (--cors-headers)"
        allowed = b", ".join(asked) if self._any_header else self._header_list
        headers = b"access-control-allow-headers: %s\r\n" % allowed if allowed else b""
        return allow + self._preflight_tail + headers, ""
