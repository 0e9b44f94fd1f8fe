"""The native gRPC server's wire pieces against independent decoders: the header blocks it sends read
back with ``hpack``'s decoder (as a client's would), ``grpc-timeout`` as gRPC's spec defines it, and
the decompression limit that keeps a small compressed message from inflating without bound."""

from __future__ import annotations

import gzip
import zlib
from typing import cast
from urllib.parse import unquote

import hpack
import pytest

from gateway.grpc.native import wire


def _text(decoder: hpack.Decoder, block: bytes) -> list[tuple[str, str]]:
    return cast(list[tuple[str, str]], list(decoder.decode(block)))


@pytest.mark.parametrize("size", [0, 1, 126, 127, 128, 300, 16_383, 70_000])
def test_a_literal_of_any_length_decodes_with_an_independent_hpack_decoder(size: int) -> None:
    value = bytes(i % 251 for i in range(size)).replace(b"\x00", b"a")
    decoded = hpack.Decoder(max_header_list_size=1 << 20).decode(wire.literal(b"x-name", value), raw=True)
    assert decoded == [(b"x-name", value)]


def test_the_response_headers_and_status_leave_no_state_in_the_clients_decoder() -> None:
    decoder = hpack.Decoder()
    block = wire.RESPONSE_HEADERS + wire.status_block(5, "unknown model 'nope'")
    for _ in range(2):  # the same answer twice decodes the same: nothing was added to the dynamic table
        assert _text(decoder, block) == [(":status", "200"), ("content-type", "application/grpc"),
                                         ("grpc-accept-encoding", "identity,deflate,gzip"), ("grpc-status", "5"),
                                         ("grpc-message", "unknown model 'nope'")]
    assert len(decoder.header_table.dynamic_entries) == 0


def test_grpc_message_is_percent_encoded_outside_printable_ascii_and_for_percent() -> None:
    message = "100% full: ünïcode\nline two"
    fields = dict(_text(hpack.Decoder(), wire.status_block(8, message)))
    encoded = fields["grpc-message"]
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded) and "\n" not in encoded and "100%25" in encoded
    assert unquote(encoded) == message


@pytest.mark.parametrize(("header", "seconds"), [("1S", 1.0), ("250m", 0.25), ("3M", 180.0), ("2H", 7200.0),
                                                 ("99999999u", 99.999999), ("5n", 5e-9)])
def test_grpc_timeout_units(header: str, seconds: float) -> None:
    assert wire.timeout_seconds(header) == pytest.approx(seconds)


@pytest.mark.parametrize("header", ["", "S", "10", "123456789S", "1s", "-1S", "1.5S", "1 S"])
def test_a_malformed_grpc_timeout_is_none(header: str) -> None:
    assert wire.timeout_seconds(header) is None


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_decompression_is_bounded_by_the_limit(encoding: str, compress: object) -> None:
    assert callable(compress)
    data = bytes(range(256)) * 64
    assert wire.decompress(compress(data), encoding, len(data)) == data
    bomb = compress(bytes(64 << 20))  # 64 MiB of zeros in about 64 KiB
    with pytest.raises(wire.MessageTooLarge, match=r"larger than max .* vs\. 1048576\)"):
        wire.decompress(bomb, encoding, 1 << 20)
    with pytest.raises(zlib.error):
        wire.decompress(compress(data)[:-8], encoding, len(data))


def test_a_frame_header_carries_length_type_flags_and_stream() -> None:
    raw = wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, 0x7FFF_FFFF, b"x" * 70_000)
    high, low, kind, flags, stream = wire.FRAME_HEADER.unpack_from(raw)
    assert ((high << 8) | low, kind, flags, stream) == (70_000, wire.HEADERS, 0x5, 0x7FFF_FFFF)
    assert raw[9:] == b"x" * 70_000
