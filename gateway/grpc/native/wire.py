"""The bytes of gRPC over HTTP/2 that the native server reads and writes, and nothing else.

HTTP/2 frames (RFC 9113), the header blocks we send (HPACK literals without indexing, RFC 7541
6.2.2, so the client's decoder keeps no state of ours), and gRPC's own layer on top
(doc/PROTOCOL-HTTP2.md in grpc/grpc): the 5-byte message prefix, ``grpc-timeout``,
``grpc-encoding`` and the percent-encoded ``grpc-message``.
"""

import struct
import zlib
from urllib.parse import quote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Error codes (RFC 9113, 7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x5, 0x6, 0x7, 0x9, 0xB
# Settings identifiers.
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 0x3, 0x4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x5, 0x6

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
MAX_WINDOW = (1 << 31) - 1

FRAME_HEADER = struct.Struct(">HBBBI")  # length as 16 + 8 bits, type, flags, stream id
SETTING = struct.Struct(">HI")
U32 = struct.Struct(">I")
GOAWAY_BODY = struct.Struct(">II")
MESSAGE_PREFIX = struct.Struct(">BI")  # compressed flag, length


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(SETTING.pack(key, value) for key, value in settings.items()))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, U32.pack(increment))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, U32.pack(code))


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, GOAWAY_BODY.pack(last_stream, code) + debug)


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541, 5.1) with ``first`` in the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing with a new name, no Huffman coding."""
    return b"\x00" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


#: ``:status: 200`` is entry 8 of HPACK's static table.
RESPONSE_HEADERS = b"\x88" + literal(b"content-type", b"application/grpc") + \
    literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
#: The trailers of a call that succeeded and set no trailing metadata: the hot path's, built once.
OK_TRAILERS = literal(b"grpc-status", b"0")


#: What ``grpc-message`` keeps as it is: printable ASCII except '%' (every other byte is percent-encoded).
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def status_block(code: int, message: str) -> bytes:
    """``grpc-status`` and, when there is one, the percent-encoded ``grpc-message``."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", quote(message, safe=_PRINTABLE).encode("ascii"))
    return block


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def timeout_seconds(value: str) -> float | None:
    """``grpc-timeout`` (1 to 8 digits and a unit) in seconds; None when it is malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


#: ``grpc-encoding`` values the server decompresses, as zlib window bits.
DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class MessageTooLarge(ValueError):
    pass


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """A compressed message's bytes, refused past ``limit`` before more is inflated (a zip bomb stops there)."""
    inflater = zlib.decompressobj(DECOMPRESSORS[encoding])
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        raise MessageTooLarge(f"Received message larger than max (more than {limit} bytes once decompressed "
                              f"vs. {limit})")
    if not inflater.eof:
        raise zlib.error("the compressed message is truncated")
    return out
