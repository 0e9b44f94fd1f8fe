"""Request-body rules shared by the FastAPI routes and the fast HTTP server (``http_server``).

The size limit applies to the body as sent and again to the body once decompressed; the
binary tensor extension splits the body at ``Inference-Header-Content-Length``.
"""

import zlib

from starlette.requests import Request

from gateway.protocol.errors import InvalidRequest, PayloadTooLarge, Unsupported


def check_declared_length(declared: str | None, limit: int) -> None:
    """Refuse a ``Content-Length`` over ``limit`` before reading the body."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` undone from its ``Content-Encoding`` (identity, gzip or deflate), within ``limit``."""
    if encoding is None:
        return body
    encoding = encoding.lower()
    if encoding in ("gzip", "deflate"):
        return decompress(body, encoding, limit)
    if encoding != "identity":
        raise Unsupported(f"Content-Encoding '{encoding}' is not supported (use gzip or deflate)")
    return body


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"cannot decompress the {encoding} body: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview | None]:
    """The JSON header and the binary part (None without ``Inference-Header-Content-Length``)."""
    view = memoryview(body)
    if header_length is None:
        return view, None
    if not header_length.isdigit():
        raise InvalidRequest("Inference-Header-Content-Length must be a non-negative integer")
    length = int(header_length)
    if length == 0:
        raise Unsupported("raw binary requests (Inference-Header-Content-Length: 0) are not supported; "
                          "send a JSON header with binary_data_size")
    if length > len(body):
        raise InvalidRequest(
            f"Inference-Header-Content-Length {length} is larger than the body ({len(body)} bytes)"
        )
    return view[:length], view[length:]


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (decompressed) body of an ASGI request, refusing anything over ``limit`` bytes before
    reading it all."""
    check_declared_length(request.headers.get("content-length"), limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return decode_content(b"".join(chunks), request.headers.get("content-encoding"), limit)
