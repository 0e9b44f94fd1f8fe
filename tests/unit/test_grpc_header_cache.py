"""The native gRPC connection reuses what a header block decoded to only while the HPACK table is as it was:
blocks made by an independent encoder (``hpack``'s, as a client's) whose bytes repeat with another meaning."""

from __future__ import annotations

import hpack

from gateway.grpc.native.connection import Connection
from gateway.grpc.native.server import NativeServer


def _call(path: str, key: str, content_type: str = "application/grpc") -> list[tuple[str, str]]:
    return [(":method", "POST"), (":path", path), ("content-type", content_type), ("x-api-key", key)]


def test_repeated_bytes_decode_anew_once_the_table_has_changed() -> None:
    client, connection = hpack.Encoder(), Connection(NativeServer(1 << 20))
    first = client.encode(_call("/s/A", "k1"))  # literals, indexed: the table grows
    again = client.encode(_call("/s/A", "k1"))  # all indexed now: the bytes every later call repeats
    assert connection.decode_head(first).path == "/s/A"
    assert connection.decode_head(again) == connection.decode_head(again)  # the second time from the cache
    assert connection.decode_head(again).metadata == (("x-api-key", "k1"),)
    # Three new entries shift every index by three: the same bytes as `again` now name the new ones.
    changed = client.encode(_call("/s/B", "k2", "application/grpc+proto"))
    assert connection.decode_head(changed).path == "/s/B"
    same_bytes = client.encode(_call("/s/B", "k2", "application/grpc+proto"))
    assert same_bytes == again, "the encoder no longer repeats bytes across table states: rebuild the case"
    head = connection.decode_head(same_bytes)
    assert (head.path, head.metadata) == ("/s/B", (("x-api-key", "k2"),))


def test_a_table_size_update_empties_the_cache() -> None:
    client, connection = hpack.Encoder(), Connection(NativeServer(1 << 20))
    connection.decode_head(client.encode(_call("/s/A", "k1")))
    block = client.encode(_call("/s/A", "k1"))
    assert connection.decode_head(block).path == "/s/A"
    client.header_table_size = 0  # the next block starts with a size update: every entry is evicted
    evicting = client.encode(_call("/s/A", "k1"))
    assert connection.decode_head(evicting).path == "/s/A"
    assert block not in connection.heads
