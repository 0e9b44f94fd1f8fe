"""The gRPC port's transport at its edges, run against every server implementation that can serve it.

``grpc_server`` (``TENSORGATE_GRPC_SERVER``, ``--grpc-server``) puts grpc.aio (gRPC's C core) or
TensorGate's own HTTP/2 server on the gRPC port. A client cannot choose and must not notice, so both
must do the same where the method-level suites do not look: messages of several MiB both ways (flow
control, WINDOW_UPDATE, messages split over frames), many calls in flight on one connection, deadlines
and cancellation, compressed messages, unknown methods, messages that do not parse or are too large,
streams, metadata, keepalive pings, and bytes that are not gRPC at all. Each test runs once per
implementation, all of them on one server per implementation. What a test expects is what grpc.aio
does; where the HTTP/2 RFC (9113) lets a server choose (a GOAWAY before closing, or none), it accepts
either and says so. The abuse limits (rapid reset, PING and SETTINGS floods) are the native server's
own, where grpc.aio's C core defends itself otherwise: those tests run on the native server only, and
each says what grpc.aio does instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import grpc
import httpx
import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.grpc.native.connection import MAX_PENDING_REPLIES, MAX_PING_STRIKES, RESET_BURST
from tests import model_factory
from tests.server import SECRETS, ServerProcess

Floats = npt.NDArray[np.float32]

#: The implementations of the gRPC port (``grpc_server``), each run through every test here.
GRPC_SERVERS = ["aio", "native"]
#: This module's servers' message limit: well above the large messages, cheap to exceed.
MAX_REQUEST_BYTES = 8 << 20
#: A little over 4 MiB of FP32: far past the 64 KiB initial windows and the 16 KiB default frame size,
#: and not a whole number of frames.
LARGE_VALUES = (4 << 20) // 4 + 12345
#: Turns of the slow models' loop: seconds of work on a CI core, so a call is surely in flight
#: when the test acts on it.
SLOW_ITERATIONS = 400_000
#: The short deadline of the deadline test (a slow call takes several times as long).
DEADLINE_S = 0.5
#: A generous wait for anything that has to happen (a call's answer, a counter that has to move).
WAIT_S = 60.0
#: The statistics group needs this header's key on this module's servers (the metadata test).
KEY_HEADER = "x-api-key"
API_KEY = secrets.token_hex(16)
SECRETS.add(API_KEY)
#: Clients accept the large replies (grpc's clients refuse a message over 4 MiB by default).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

# HTTP/2 frame types and error codes (RFC 9113, sections 6 and 7).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9
ACK, END_STREAM, END_HEADERS = 0x1, 0x1, 0x4
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x1, 0x3, 0x6, 0x9
CANCEL, ENHANCE_YOUR_CALM = 0x8, 0xB
UNKNOWN_FRAME_TYPE = 0xFA
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_FRAME_SIZE = 16384
SETTINGS_MAX_FRAME_SIZE = 0x5
#: The floods' size: several times what the sockets between client and server hold (a few MiB on Linux).
FLOOD_BYTES = 32 << 20
#: Runs a test on the native server only (the module's server of that implementation).
NATIVE_ONLY = pytest.mark.parametrize("transport_server", ["native"], indirect=True)


@pytest.fixture(scope="module", params=GRPC_SERVERS)
def transport_server(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per implementation: FP32 identity, two slow models, statistics behind a key."""
    implementation: str = request.param
    repo = _identity_repo(tmp_path_factory, f"grpc-transport-{implementation}")
    model_factory.slow_model(repo)  # two instances: for the deadline test
    model_factory.slow_model(repo, "slow_queue", config="instances: {count: 1}\n")  # for the cancellation test
    args = ["--max-request-bytes", str(MAX_REQUEST_BYTES), "--protect", f"statistics:{KEY_HEADER}"]
    yield from _served(repo, implementation, args, {"TENSORGATE_API_KEYS": API_KEY})


def _identity_repo(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh model repository holding the FP32 identity model."""
    repo = tmp_path_factory.mktemp(name) / "repo"
    repo.mkdir()
    model_factory.flat_identity_model(repo)
    return repo


def _served(repo: Path, implementation: str, args: list[str], env: dict[str, str]) -> Iterator[ServerProcess]:
    """A module's server of ``implementation`` on ``repo``; at the end it must exit cleanly, no traceback logged."""
    server = ServerProcess(repo, args, env={"TENSORGATE_GRPC_SERVER": implementation, **env})
    server.start()
    assert f"grpc_server={implementation}" in server.log(), "the server does not say it runs " + implementation
    yield server
    code = server.stop()
    log = server.log()
    assert code == 0, f"server exited with {code}:\n{log}"
    # grpc.aio logs an ExecuteBatchError with its traceback when a client is gone as a call's status goes
    # out (grpc/grpc#32551 made that a log line instead of an unhandled exception): its noise, not a failure.
    lines = [line for line in log.splitlines() if "ExecuteBatchError raised in core by servicer method" not in line]
    assert "Traceback" not in "\n".join(lines), log


@pytest.fixture
def channel(transport_server: ServerProcess) -> Iterator[grpc.Channel]:
    """A channel of the test's own: a new connection, whatever the previous test did to its own."""
    with grpc.insecure_channel(transport_server.grpc_address, options=CHANNEL_OPTIONS) as c:
        yield c


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


# --- helpers -------------------------------------------------------------------------------------------


def _flat(values: Floats, request_id: str = "") -> pb.ModelInferRequest:
    """An inference request for ``flat_identity`` carrying ``values`` in ``raw_input_contents``."""
    request = pb.ModelInferRequest(model_name="flat_identity", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[values.size])
    request.raw_input_contents.append(values.tobytes())
    return request


def _assert_echoed(reply: pb.ModelInferResponse, request_id: str, values: Floats) -> None:
    """``reply`` answers the request ``request_id`` and carries exactly ``values``, bit for bit."""
    assert reply.id == request_id
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("y", "FP32", [values.size])]
    assert len(reply.raw_output_contents) == 1
    echoed = np.frombuffer(reply.raw_output_contents[0], np.float32)
    np.testing.assert_array_equal(echoed.view(np.uint32), values.view(np.uint32))


def _distinct(seed: int, count: int) -> Floats:
    """``count`` random FP32 values, different for every seed."""
    return np.random.default_rng(seed).standard_normal(count).astype(np.float32)


def _slow(model: str, request_id: str) -> pb.ModelInferRequest:
    """A request that keeps ``model`` (a ``model_factory.slow_model``) busy for seconds."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="iterations", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([SLOW_ITERATIONS], np.int64).tobytes())
    request.inputs.add(name="x", datatype="FP32", shape=[64, 64])
    request.raw_input_contents.append(np.eye(64, dtype=np.float32).tobytes())
    return request


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in httpx.get(server.metrics_url, timeout=WAIT_S).text.splitlines():
        if line.startswith(name + "{") and all(label in line.split("}")[0] for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _eventually(check: Callable[[], bool], what: str) -> None:
    """Wait (generously) until ``check`` holds; ``check`` runs in a thread, off the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await asyncio.to_thread(check):
        assert loop.time() < deadline, f"not within {WAIT_S} s: {what}"
        await asyncio.sleep(0.05)


def _aio_channel(server: ServerProcess, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(server.grpc_address, options=CHANNEL_OPTIONS + (options or []))


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


class _OpenStream:
    """A ModelStreamInfer stream held open through a test. A new call would reconnect and hide a dropped
    connection; this stream's next round trip fails if the connection under its channel was dropped."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        self._call = stub.ModelStreamInfer(timeout=10 * WAIT_S)
        self._turns = 0

    async def round_trip(self) -> None:
        self._turns += 1
        values, request_id = np.full(8, self._turns, np.float32), f"open-{self._turns}"
        await self._call.write(_flat(values, request_id))
        reply = await self._call.read()
        assert not reply.error_message, reply.error_message
        _assert_echoed(reply.infer_response, request_id, values)

    async def close(self) -> None:
        await self._call.done_writing()
        assert await self._call.read() is grpc.aio.EOF
        assert await self._call.code() == grpc.StatusCode.OK


def _serves(server: ServerProcess) -> None:
    """A normal call on a fresh channel is answered."""
    values = _distinct(99, 16)
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_flat(values, "check"), timeout=WAIT_S)
    _assert_echoed(reply, "check", values)


# --- 1, 2: large messages and many calls -----------------------------------------------------------------


def test_a_large_message_each_way_arrives_bit_exact(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    values = _distinct(1, LARGE_VALUES)
    request = _flat(values, "large")
    assert request.ByteSize() > 4 << 20
    _assert_echoed(stub.ModelInfer(request, timeout=WAIT_S), "large", values)


def test_large_messages_concurrently_on_one_channel_are_not_mixed(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Six calls of over 4 MiB each way at once share the connection's window: each gets its own data."""
    sent = {f"large-{i}": _distinct(10 + i, LARGE_VALUES - i) for i in range(6)}
    futures = {request_id: stub.ModelInfer.future(_flat(values, request_id), timeout=WAIT_S)
               for request_id, values in sent.items()}
    for request_id, future in futures.items():
        _assert_echoed(future.result(), request_id, sent[request_id])


def test_many_concurrent_small_calls_on_one_channel_each_get_their_own_answer(
        transport_server: ServerProcess) -> None:
    async def main() -> None:
        async with _aio_channel(transport_server) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            sent = {f"small-{i}": np.arange(i, i + 1 + i % 7, dtype=np.float32) for i in range(200)}
            calls = {request_id: stub.ModelInfer(_flat(values, request_id), timeout=WAIT_S)
                     for request_id, values in sent.items()}
            replies = await asyncio.gather(*calls.values())
            for request_id, reply in zip(calls, replies, strict=True):
                _assert_echoed(reply, request_id, sent[request_id])

    _run(main)


# --- 3, 4: deadlines and cancellation -------------------------------------------------------------------


def _cancelled(server: ServerProcess, model: str) -> float:
    """gRPC requests to ``model`` counted as cancelled (deadlines included)."""
    return _metric(server, "tensorgate_requests_total", model=model, outcome="cancelled", protocol="grpc")


def test_a_deadline_passes_on_a_slow_call_and_the_connection_serves_on(transport_server: ServerProcess) -> None:
    def cancelled() -> float:
        return _cancelled(transport_server, "slow")

    async def main() -> None:
        async with _aio_channel(transport_server) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stream = _OpenStream(stub)
            await stream.round_trip()
            before = await asyncio.to_thread(cancelled)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(_slow("slow", "late"), timeout=DEADLINE_S)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
            # The server's handler ended too (grpc.aio cancels it: at the grpc-timeout, or on the client's
            # RST_STREAM), and the request is counted as cancelled, not as an error.
            await _eventually(lambda: cancelled() == before + 1, "the late call counted as cancelled")
            # A far deadline is read as far (grpc-timeout's units): this call is answered.
            values = _distinct(3, 64)
            _assert_echoed(await stub.ModelInfer(_flat(values, "after"), timeout=WAIT_S), "after", values)
            await stream.round_trip()
            await stream.close()

    _run(main)


def test_a_cancelled_call_is_dropped_and_the_connection_serves_on(transport_server: ServerProcess) -> None:
    """``slow_queue`` has one instance: one call runs, a second waits in the queue and is cancelled by the
    client there. The server hears of it (RST_STREAM) at once: counted as cancelled and never run; the
    running call and an open stream on the same connection are unaffected."""
    def inflight() -> float:
        return _metric(transport_server, "tensorgate_inflight_requests", model="slow_queue")

    def cancelled() -> float:
        return _cancelled(transport_server, "slow_queue")

    async def main() -> None:
        async with _aio_channel(transport_server) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stream = _OpenStream(stub)
            await stream.round_trip()
            running = stub.ModelInfer(_slow("slow_queue", "running"), timeout=10 * WAIT_S)
            await _eventually(lambda: inflight() == 1, "the first slow call in flight")
            queued = stub.ModelInfer(_slow("slow_queue", "queued"), timeout=10 * WAIT_S)
            await _eventually(lambda: inflight() == 2, "the second slow call queued")
            assert queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert await queued.code() == grpc.StatusCode.CANCELLED
            await _eventually(lambda: cancelled() == 1 and inflight() == 1, "the queued call dropped")
            await stream.round_trip()  # while the first call still runs
            assert (await running).id == "running"
            stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow_queue"),
                                               metadata=((KEY_HEADER, API_KEY),), timeout=WAIT_S)
            assert [s.inference_count for s in stats.model_stats] == [1]  # the cancelled call never ran
            await stream.round_trip()
            await stream.close()

    _run(main)


# --- 5: compression -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["call", "channel"])
@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate], ids=["gzip", "deflate"])
def test_compressed_requests_are_answered(transport_server: ServerProcess, compression: grpc.Compression,
                                          where: str) -> None:
    """A compressed message of 2 MiB (compressed: many frames still) and a small one, compressed per call or by
    the channel's default."""
    per_call = compression if where == "call" else None
    per_channel = compression if where == "channel" else None
    with grpc.insecure_channel(transport_server.grpc_address, options=CHANNEL_OPTIONS,
                               compression=per_channel) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for request_id, values in (("big", (np.arange(1 << 19) % 977).astype(np.float32) + _distinct(5, 1 << 19)),
                                   ("small", _distinct(6, 3))):
            reply = stub.ModelInfer(_flat(values, request_id), compression=per_call, timeout=WAIT_S)
            _assert_echoed(reply, request_id, values)


def test_the_limit_applies_to_a_message_once_decompressed(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """A few KiB of gzip that inflate past the limit: refused as too large, as uncompressed."""
    request = _flat(np.zeros(MAX_REQUEST_BYTES // 4 + 1024, np.float32))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, compression=grpc.Compression.Gzip, timeout=WAIT_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    # grpc.aio names the inflated size; the native server stops inflating past the limit and says so.
    details = info.value.details() or ""
    assert "Received message larger than max (" in details and f" vs. {MAX_REQUEST_BYTES})" in details, details
    values = _distinct(7, 8)
    _assert_echoed(stub.ModelInfer(_flat(values, "next"), timeout=WAIT_S), "next", values)


# --- 6, 7, 8: unknown methods, undecodable and oversized messages ---------------------------------------


@pytest.mark.parametrize("path", ["/inference.GRPCInferenceService/NoSuchMethod", "/no.such.Service/ModelInfer",
                                  "/grpc.health.v1.Health/NoSuchMethod", "/"])
def test_an_unknown_method_is_unimplemented(channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub,
                                            path: str) -> None:
    with pytest.raises(grpc.RpcError) as unary:
        channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)(b"", timeout=WAIT_S)
    with pytest.raises(grpc.RpcError) as streamed:
        list(channel.stream_stream(path, request_serializer=bytes, response_deserializer=bytes)(
            iter([b"", b""]), timeout=WAIT_S))
    for info in (unary, streamed):
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, info.value
        assert info.value.details() == "Method not found!"
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=WAIT_S).live


def test_a_message_that_does_not_parse_is_invalid_argument(channel: grpc.Channel,
                                                           stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    garbage = b"\xff\xff\xff"
    with pytest.raises(grpc.RpcError) as unary:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=bytes,
                            response_deserializer=bytes)(garbage, timeout=WAIT_S)
    # On a stream: the good message before it is answered, then the stream ends with the error.
    good = _flat(_distinct(8, 4), "before").SerializeToString()
    replies: list[bytes] = []
    with pytest.raises(grpc.RpcError) as streamed:
        for reply in channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                           request_serializer=bytes, response_deserializer=bytes)(
                iter([good, garbage, good]), timeout=WAIT_S):
            replies.append(reply)
    assert [pb.ModelStreamInferResponse.FromString(r).infer_response.id for r in replies] == ["before"]
    for info in (unary, streamed):
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert "the request message does not parse" in (info.value.details() or "")
        assert "inference.ModelInferRequest" in (info.value.details() or "")
    values = _distinct(9, 4)
    _assert_echoed(stub.ModelInfer(_flat(values, "next"), timeout=WAIT_S), "next", values)


def test_an_oversized_message_is_resource_exhausted_and_the_connection_serves_on(
        transport_server: ServerProcess) -> None:
    oversized = _flat(_distinct(11, MAX_REQUEST_BYTES // 4 + 1024), "oversized")
    expected = f"Received message larger than max ({oversized.ByteSize()} vs. {MAX_REQUEST_BYTES})"

    async def main() -> None:
        async with _aio_channel(transport_server) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stream = _OpenStream(stub)
            await stream.round_trip()
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.ModelInfer(oversized, timeout=WAIT_S)
            other = stub.ModelStreamInfer(timeout=WAIT_S)
            await other.write(oversized)
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                await other.read()
            for info in (unary, streamed):
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
                assert expected in (info.value.details() or ""), info.value.details()
            values = _distinct(12, 4)
            _assert_echoed(await stub.ModelInfer(_flat(values, "next"), timeout=WAIT_S), "next", values)
            await stream.round_trip()
            await stream.close()

    _run(main)


def test_a_long_error_message_arrives_whole(transport_server: ServerProcess) -> None:
    """The trailers of a NOT_FOUND naming a 20,000-character model, read by a client whose metadata limit
    allows it (grpc's client advertises frames large enough for them to travel in one)."""
    name = "m" * 20_000
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(bytes(4))
    options = [("grpc.max_metadata_size", 1 << 20)]
    with grpc.insecure_channel(transport_server.grpc_address, options=options) as channel, \
            pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=WAIT_S)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value
    assert f"unknown model '{name}'" in (info.value.details() or "")
    _serves(transport_server)


def _call_block(encoder: Any, method: str, *headers: tuple[str, str]) -> bytes:
    """The header block of a call to ``method`` of the inference service, as ``encoder`` (``hpack``'s) encodes it."""
    block: bytes = encoder.encode([(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                                   (":path", f"/inference.GRPCInferenceService/{method}"),
                                   ("content-type", "application/grpc"), ("te", "trailers"), *headers])
    return block


def _raw_call(server: ServerProcess, method: str, body: bytes, *headers: tuple[str, str],
              compressed: bool = False) -> tuple[list[int], dict[str, str]]:
    """One call from a raw-socket client that keeps the default 16 KiB SETTINGS_MAX_FRAME_SIZE (HPACK by
    ``hpack``): the types of the frames that carried the answer's header blocks (none larger than 16 KiB)
    and the last block's fields, the trailers."""
    import hpack

    block = _call_block(hpack.Encoder(), method, *headers)
    message = bytes([int(compressed)]) + len(body).to_bytes(4, "big") + body
    data = [message[i:i + DEFAULT_MAX_FRAME_SIZE] for i in range(0, len(message), DEFAULT_MAX_FRAME_SIZE)]
    blocks: list[bytes] = []
    kinds: list[int] = []
    with _connect(server) as sock:
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0) + _frame(HEADERS, END_HEADERS, 1, block)
                     + b"".join(_frame(DATA, END_STREAM if n == len(data) - 1 else 0, 1, chunk)
                                for n, chunk in enumerate(data)))
        ends = False
        while True:
            frame = _read_frame(sock)
            assert frame is not None, f"the connection closed before the stream ended: {kinds}"
            kind, flags, stream, payload = frame
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(_frame(SETTINGS, ACK, 0))
            if stream != 1 or kind not in (HEADERS, CONTINUATION):
                continue
            assert len(payload) <= DEFAULT_MAX_FRAME_SIZE
            if kind == HEADERS:
                blocks.append(b"")
                ends = bool(flags & END_STREAM)
            kinds.append(kind)
            blocks[-1] += payload
            if flags & END_HEADERS and ends:
                break
    decoder = hpack.Decoder(max_header_list_size=1 << 20)
    return kinds, [dict(cast(list[tuple[str, str]], decoder.decode(b))) for b in blocks][-1]


def test_trailers_larger_than_the_clients_frame_size_come_in_continuation_frames(
        transport_server: ServerProcess) -> None:
    """The 20 KiB trailers of a NOT_FOUND, to a client that keeps 16 KiB frames: HEADERS and CONTINUATION
    frames, none larger than 16 KiB, whose block decodes to the status and the whole message."""
    name = "m" * 20_000
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(bytes(4))
    kinds, trailers = _raw_call(transport_server, "ModelInfer", request.SerializeToString())
    assert CONTINUATION in kinds, kinds
    assert trailers["grpc-status"] == "5", trailers.get("grpc-status")
    assert f"unknown model '{name}'" in unquote(trailers["grpc-message"])
    _serves(transport_server)


def test_a_message_compressed_with_an_unknown_encoding_is_internal(transport_server: ServerProcess) -> None:
    """grpc-encoding snappy (neither server has it): INTERNAL, as grpc.aio answers; the server serves on."""
    _, trailers = _raw_call(transport_server, "ServerLive", b"\x01\x02\x03", ("grpc-encoding", "snappy"),
                            compressed=True)
    assert trailers["grpc-status"] == "13", trailers
    _serves(transport_server)


# --- 9: streams -----------------------------------------------------------------------------------------


def test_a_stream_answers_each_request_in_turn_and_reports_a_bad_one_in_stream(
        transport_server: ServerProcess) -> None:
    """Lock-step: each answer comes before the client sends the next request (no waiting for the half-close);
    the unknown model's error is a message of the stream; the half-close ends the stream with OK."""
    async def main() -> None:
        async with _aio_channel(transport_server) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=WAIT_S)
            for turn in range(5):
                values, request_id = _distinct(20 + turn, 10 + turn), f"turn-{turn}"
                request = _flat(values, request_id)
                if turn == 2:
                    request.model_name = "nope"
                await call.write(request)
                reply = await call.read()
                if turn == 2:
                    assert "unknown model 'nope'" in reply.error_message
                    assert not reply.HasField("infer_response")
                else:
                    assert not reply.error_message, reply.error_message
                    _assert_echoed(reply.infer_response, request_id, values)
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK

    _run(main)


def test_a_pipelined_stream_is_answered_in_order(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    sent = [(f"p-{i}", _distinct(30 + i, 5 + i)) for i in range(8)]
    requests = [_flat(values, request_id) for request_id, values in sent]
    requests[5].model_name = "nope"
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=WAIT_S))
    assert len(replies) == len(sent)
    for i, (reply, (request_id, values)) in enumerate(zip(replies, sent, strict=True)):
        if i == 5:
            assert "unknown model 'nope'" in reply.error_message
        else:
            assert not reply.error_message, reply.error_message
            _assert_echoed(reply.infer_response, request_id, values)


def test_a_stream_carries_large_messages(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    sent = [(f"big-{i}", _distinct(40 + i, LARGE_VALUES + i)) for i in range(3)]
    replies = list(stub.ModelStreamInfer(iter([_flat(values, request_id) for request_id, values in sent]),
                                         timeout=WAIT_S))
    assert len(replies) == len(sent)
    for reply, (request_id, values) in zip(replies, sent, strict=True):
        assert not reply.error_message, reply.error_message
        _assert_echoed(reply.infer_response, request_id, values)


# --- 10: metadata ---------------------------------------------------------------------------------------


def test_invocation_metadata_reaches_the_server(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """The statistics group needs a key in ``x-api-key``: the server sees the call's metadata (a binary
    ``-bin`` entry beside it, base64 on the wire, changes nothing)."""
    request = pb.ModelStatisticsRequest(name="flat_identity")
    binary = ("x-extra-bin", b"\x00\xff\x10 binary")
    reply = stub.ModelStatistics(request, metadata=((KEY_HEADER, API_KEY), binary), timeout=WAIT_S)
    assert [s.name for s in reply.model_stats] == ["flat_identity"]
    refusals = {(): "the statistics API requires a key in the x-api-key header",
                ((KEY_HEADER, secrets.token_hex(16)),): "the key in the x-api-key header is not accepted",
                (("x-other-key", API_KEY),): "the statistics API requires a key in the x-api-key header"}
    for metadata, message in refusals.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelStatistics(request, metadata=(*metadata, binary), timeout=WAIT_S)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert message in (info.value.details() or "")


def test_each_call_is_judged_by_its_own_metadata_when_header_blocks_repeat(
        stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """One connection, the key alternating between right and wrong: once both are in the client's HPACK
    table each call's header block repeats byte for byte, and a server that reuses what it decoded (the
    native one does) must still tell them apart (reuse across a changed table: tests/unit/test_grpc_header_cache.py)."""
    request = pb.ModelStatisticsRequest(name="flat_identity")
    wrong = secrets.token_hex(16)
    for turn in range(4):
        assert stub.ModelStatistics(request, metadata=((KEY_HEADER, API_KEY),), timeout=WAIT_S).model_stats
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelStatistics(request, metadata=((KEY_HEADER, wrong),), timeout=WAIT_S)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, turn
        if turn == 1:  # a third value enters the table mid-way
            wrong = secrets.token_hex(16)


# --- 11: bytes that are not gRPC ------------------------------------------------------------------------


Frame = tuple[int, int, int, bytes]  # type, flags, stream id, payload


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None when the connection ends first (cleanly or with a reset) before any of them."""
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:  # a close with our bytes unread reads as a reset: closed all the same
            chunk = b""
        if not chunk:
            assert not data, f"the connection ended inside a frame: {data!r}"
            return None
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> Frame | None:
    """The next HTTP/2 frame the server sent, or None when it closed the connection."""
    header = _read_exactly(sock, 9)
    if header is None:
        return None
    length, stream = int.from_bytes(header[:3], "big"), int.from_bytes(header[5:], "big") & 0x7FFFFFFF
    payload = _read_exactly(sock, length) if length else b""
    assert payload is not None, f"the connection ended inside a frame: {header!r}"
    return header[3], header[4], stream, payload


def _first_settings(sock: socket.socket) -> Frame:
    frame = _read_frame(sock)
    assert frame is not None and frame[:3] == (SETTINGS, 0, 0), f"the server's first frame must be SETTINGS: {frame}"
    return frame


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may close before reading it all
        sock.sendall(data)


def _assert_closed_with(sock: socket.socket, code: int, frames: list[Frame]) -> None:
    """The server closes the connection (within the socket's timeout); a GOAWAY first is up to it (RFC 9113
    5.4.1: it SHOULD send one; grpc.aio does not here), but if it sends one it carries ``code``. ``frames``:
    those the test had read already."""
    try:
        while (frame := _read_frame(sock)) is not None:
            frames.append(frame)
    except TimeoutError:
        raise AssertionError(f"the server did not close the connection; it sent {frames}") from None
    if frames:
        assert frames[0][:3] == (SETTINGS, 0, 0), f"the server's first frame must be SETTINGS: {frames}"
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            assert int.from_bytes(payload[4:8], "big") == code, (frames, code)


#: Sends bytes that break HTTP/2, and returns the frames it read meanwhile.
Abuse = Callable[[socket.socket], list[Frame]]


def _bytes(data: bytes) -> Abuse:
    def send(sock: socket.socket) -> list[Frame]:
        _send(sock, data)
        return []
    return send


def _settings_then(*frames: bytes) -> Abuse:
    """The client's preface and an empty SETTINGS frame, then ``frames``."""
    return _bytes(PREFACE + _frame(SETTINGS, 0, 0) + b"".join(frames))


def _oversized_frame(sock: socket.socket) -> list[Frame]:
    """A frame of an unknown type one byte longer than the server's SETTINGS_MAX_FRAME_SIZE (or the default,
    whichever is larger: we never acknowledge the server's SETTINGS). Its payload follows in full, so that a
    server reading the whole frame before judging it still gets to judge it."""
    _send(sock, PREFACE + _frame(SETTINGS, 0, 0))
    settings = _first_settings(sock)
    payload = settings[3]
    advertised = {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
                  for i in range(0, len(payload), 6)}
    length = max(advertised.get(SETTINGS_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE), DEFAULT_MAX_FRAME_SIZE) + 1
    assert length < 1 << 24, "the server allows the largest frames there are"
    _send(sock, length.to_bytes(3, "big") + bytes([UNKNOWN_FRAME_TYPE, 0, 0, 0, 0, 0]) + b"x" * length)
    return [settings]


CONNECTION_ERRORS: dict[str, tuple[Abuse, int]] = {
    # An invalid preface: PROTOCOL_ERROR, and the GOAWAY MAY be left out (RFC 9113 3.4).
    "http1_request": (_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), PROTOCOL_ERROR),
    "tls_client_hello": (_bytes(bytes.fromhex("16030100a5010000a10303") + bytes(40)), PROTOCOL_ERROR),
    "first_frame_not_settings": (_bytes(PREFACE + _frame(PING, 0, 0, bytes(8))), PROTOCOL_ERROR),
    "oversized_frame": (_oversized_frame, FRAME_SIZE_ERROR),
    "settings_of_5_bytes": (_settings_then(_frame(SETTINGS, 0, 0, bytes(5))), FRAME_SIZE_ERROR),
    "ping_of_7_bytes": (_settings_then(_frame(PING, 0, 0, bytes(7))), FRAME_SIZE_ERROR),
    "zero_window_update": (_settings_then(_frame(WINDOW_UPDATE, 0, 0, bytes(4))), PROTOCOL_ERROR),
    "initial_window_over_2_31": (_settings_then(_frame(SETTINGS, 0, 0, (4).to_bytes(2, "big") + (1 << 31).to_bytes(
        4, "big"))), FLOW_CONTROL_ERROR),
    "undecodable_header_block": (_settings_then(_frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff")),
                                 COMPRESSION_ERROR),
}


@pytest.mark.parametrize("case", list(CONNECTION_ERRORS))
def test_bytes_that_break_http2_close_the_connection(transport_server: ServerProcess, case: str) -> None:
    """Each of these is a connection error in RFC 9113, and grpc.aio closes the connection at once."""
    send, code = CONNECTION_ERRORS[case]
    with _connect(transport_server) as sock:
        _assert_closed_with(sock, code, send(sock))
    _serves(transport_server)


def test_connections_that_end_early_do_no_harm(transport_server: ServerProcess) -> None:
    with _connect(transport_server):
        pass
    with _connect(transport_server) as sock:
        sock.sendall(PREFACE[:10])
    with _connect(transport_server) as sock:
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0) + _frame(HEADERS, END_HEADERS, 1, b"\x83"))  # :method POST
    _serves(transport_server)
    assert transport_server.process is not None and transport_server.process.poll() is None


def test_a_ping_is_acknowledged_and_an_unknown_frame_ignored(transport_server: ServerProcess) -> None:
    """What keepalive rests on: a PING is answered by a PING ACK with its 8 bytes; a frame of an unknown type is
    ignored (RFC 9113 4.1), not a reason to close."""
    with _connect(transport_server) as sock:
        sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))
        _first_settings(sock)
        sock.sendall(_frame(SETTINGS, ACK, 0) + _frame(UNKNOWN_FRAME_TYPE, 0, 0, b"hello")
                     + _frame(UNKNOWN_FRAME_TYPE, 0x5, 3, b"there") + _frame(PING, 0, 0, b"tg-ping1"))
        # Both acknowledgements, in either order (grpc.aio sends the PING's first).
        expected: set[Frame] = {(PING, ACK, 0, b"tg-ping1"), (SETTINGS, ACK, 0, b"")}
        seen: list[Frame] = []
        while not expected <= set(seen):
            frame = _read_frame(sock)
            assert frame is not None, f"the server closed the connection after {seen}"
            assert frame[0] != GOAWAY, [*seen, frame]
            seen.append(frame)
        sock.sendall(_frame(PING, 0, 0, b"tg-ping2"))
        assert _read_frame(sock) == (PING, ACK, 0, b"tg-ping2")


# --- 12: health and keepalive ---------------------------------------------------------------------------


def test_grpc_health_check(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=WAIT_S)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_client_keepalive_pings_are_answered(transport_server: ServerProcess) -> None:
    """A client pinging every 0.5 s that gives up on the connection when a ping is not acknowledged within 1 s,
    its stream idle for 2.5 s. grpc's client sends at most two pings without data in between, which grpc.aio's
    server tolerates (it sends GOAWAY too_many_pings only past two strikes), so nothing here depends on the
    server's ping policy: only on each ping being acknowledged."""
    options = [("grpc.keepalive_time_ms", 500), ("grpc.keepalive_timeout_ms", 1000)]

    async def main() -> None:
        async with _aio_channel(transport_server, options) as channel:
            stream = _OpenStream(pb_grpc.GRPCInferenceServiceStub(channel))
            await stream.round_trip()
            await asyncio.sleep(2.5)
            await stream.round_trip()
            await stream.close()

    _run(main)


# --- 13: abuse limits -----------------------------------------------------------------------------------


def _frames_until_closed(sock: socket.socket) -> list[Frame]:
    """Every frame the server sends until it closes the connection (read in large pieces: floods answer a lot)."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(f"the server did not close the connection ({len(data)} bytes read)") from None
        if not chunk:
            break
        data += chunk
    frames: list[Frame] = []
    offset = 0
    while len(data) - offset >= 9:
        length = int.from_bytes(data[offset:offset + 3], "big")
        payload = bytes(data[offset + 9:offset + 9 + length])
        frames.append((data[offset + 3], data[offset + 4], int.from_bytes(data[offset + 5:offset + 9], "big"), payload))
        offset += 9 + length
    return frames


@NATIVE_ONLY
def test_streams_reset_as_soon_as_opened_end_the_connection(transport_server: ServerProcess) -> None:
    """Rapid reset (CVE-2023-44487): twice RESET_BURST calls, each reset right after its HEADERS, in one write and
    none answered: GOAWAY ENHANCE_YOUR_CALM, then the close; the server serves on. Native only: grpc.aio (grpc
    1.81's C core) takes these 4,096 resets and keeps the connection."""
    import hpack

    encoder = hpack.Encoder()
    calls = b"".join(_frame(HEADERS, END_HEADERS, stream, _call_block(encoder, "ServerLive"))
                     + _frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big"))
                     for stream in range(1, 4 * RESET_BURST, 2))
    with _connect(transport_server) as sock:
        _send(sock, PREFACE + _frame(SETTINGS, 0, 0) + calls)
        frames = _frames_until_closed(sock)
    goaways = [payload for kind, _, _, payload in frames if kind == GOAWAY]
    assert [int.from_bytes(payload[4:8], "big") for payload in goaways] == [ENHANCE_YOUR_CALM], frames
    _serves(transport_server)


@NATIVE_ONLY
def test_a_settings_flood_the_client_does_not_read_ends_the_connection(transport_server: ServerProcess) -> None:
    """SETTINGS flood (CVE-2019-9515): see ``_assert_a_flood_ends_the_connection``."""
    _assert_a_flood_ends_the_connection(transport_server, SETTINGS)


@pytest.mark.parametrize("keepalive_server", ["native"], indirect=True)
def test_a_ping_flood_the_client_does_not_read_ends_the_connection_without_a_ping_policy(
        keepalive_server: ServerProcess) -> None:
    """PING flood (CVE-2019-9512) on a server whose ping policy is off (``--grpc-min-ping-interval 0``; with it on,
    the fourth PING ends the connection: ``test_pings_too_often_...``): see ``_assert_a_flood_ends_the_connection``."""
    _assert_a_flood_ends_the_connection(keepalive_server, PING)


def _assert_a_flood_ends_the_connection(server: ServerProcess, kind: int) -> None:
    """32 MiB of frames that each need an answer, from a client with a small receive buffer that reads nothing
    until it has sent them all. Once the sockets between are full, the answers pile up in the server; past
    MAX_PENDING_REPLIES of them, GOAWAY ENHANCE_YOUR_CALM after the answers already queued, then the close; what
    the client sent after is read and dropped. Native only: grpc.aio (grpc 1.81) stops reading from such a client
    instead; it ended the PING flood's connection only some twenty seconds later, and kept the SETTINGS flood's
    open after queueing several MiB of acknowledgements."""
    one = _frame(PING, 0, 0, b"tg-flood") if kind == PING else _frame(SETTINGS, 0, 0)
    count = FLOOD_BYTES // len(one)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # set before connecting: the window it offers
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.grpc_port))
        _send(sock, PREFACE + _frame(SETTINGS, 0, 0) + one * count)
        frames = _frames_until_closed(sock)
    answers = sum(1 for frame in frames if frame[:2] == (kind, ACK))
    goaways = [payload for frame_kind, _, _, payload in frames if frame_kind == GOAWAY]
    assert [int.from_bytes(payload[4:8], "big") for payload in goaways] == [ENHANCE_YOUR_CALM], (answers, goaways)
    assert frames[-1][0] == GOAWAY, "nothing follows the GOAWAY"
    assert MAX_PENDING_REPLIES < answers < count, answers
    _serves(server)


def test_pings_too_often_with_nothing_answered_between_end_the_connection(transport_server: ServerProcess) -> None:
    """grpc's ping policy, on both servers (the default --grpc-min-ping-interval, 300 s): the client's first PING
    and MAX_PING_STRIKES more within the interval are acknowledged; the next one is a strike too many, and the
    connection ends with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" (grpc clients read those words and back off)."""
    with _connect(transport_server) as sock:
        _send(sock, PREFACE + _frame(SETTINGS, 0, 0))
        _first_settings(sock)
        allowed = 1 + MAX_PING_STRIKES
        sock.sendall(_frame(SETTINGS, ACK, 0) + b"".join(_frame(PING, 0, 0, b"tg-p%04d" % n) for n in range(allowed)))
        acks: set[bytes] = set()
        while len(acks) < allowed:
            frame = _read_frame(sock)
            assert frame is not None and frame[0] != GOAWAY, f"closed after {sorted(acks)} of {allowed} pings: {frame}"
            if frame[:2] == (PING, ACK):
                acks.add(frame[3])
        _send(sock, _frame(PING, 0, 0, b"tg-extra"))
        frames = _frames_until_closed(sock)
    goaways = [payload for kind, _, _, payload in frames if kind == GOAWAY]
    assert [(int.from_bytes(payload[4:8], "big"), payload[8:]) for payload in goaways] == \
        [(ENHANCE_YOUR_CALM, b"too_many_pings")], frames
    _serves(transport_server)


def test_pings_between_answered_calls_are_never_strikes(transport_server: ServerProcess) -> None:
    """A client that pings before each call (as keepalive on a busy channel does) is within the policy however
    often it pings: every answer the server sends clears the strikes. Ten PINGs, each followed by a call that is
    answered before the next: each PING acknowledged, each call answered, no GOAWAY; the connection serves on."""
    import hpack

    encoder = hpack.Encoder()
    empty = bytes(5)  # a gRPC message of 0 bytes: an empty ServerLiveRequest
    with _connect(transport_server) as sock:
        _send(sock, PREFACE + _frame(SETTINGS, 0, 0))
        _first_settings(sock)
        sock.sendall(_frame(SETTINGS, ACK, 0))
        for n in range(10):
            stream = 2 * n + 1
            sock.sendall(_frame(PING, 0, 0, b"tg-c%04d" % n) + _frame(HEADERS, END_HEADERS, stream,
                                                                     _call_block(encoder, "ServerLive"))
                         + _frame(DATA, END_STREAM, stream, empty))
            acked = ended = False
            while not (acked and ended):
                frame = _read_frame(sock)
                assert frame is not None and frame[0] != GOAWAY, f"call {n}: the server ended the connection: {frame}"
                kind, flags, frame_stream, payload = frame
                acked |= (kind, flags, payload) == (PING, ACK, b"tg-c%04d" % n)
                ended |= kind == HEADERS and frame_stream == stream and bool(flags & END_STREAM)
    _serves(transport_server)


def test_cancelling_many_calls_on_one_channel_does_not_end_it(transport_server: ServerProcess) -> None:
    """What the rapid-reset limit must never catch: a client cancelling half its calls before any answer (a
    hedging client dropping the slower of two, a caller that went away), 3,000 cancellations over one connection,
    more than RESET_BURST, between 3,000 calls answered. The stream held open all along proves the connection
    was never dropped (a new call would reconnect and hide it)."""
    rounds, width = 60, 50
    assert rounds * width > RESET_BURST

    async def main() -> None:
        async with _aio_channel(transport_server) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stream = _OpenStream(stub)
            await stream.round_trip()
            values = _distinct(13, 4)
            for turn in range(rounds):
                # A stream waits for its first request: when it is cancelled, the server has answered nothing.
                dropped = [stub.ModelStreamInfer(timeout=WAIT_S) for _ in range(width)]
                answered = [stub.ModelInfer(_flat(values, f"kept-{turn}-{i}"), timeout=WAIT_S) for i in range(width)]
                for call in dropped:
                    await call.wait_for_connection()
                    assert call.cancel()
                for i, reply in enumerate(await asyncio.gather(*answered)):
                    _assert_echoed(reply, f"kept-{turn}-{i}", values)
                assert {await call.code() for call in dropped} == {grpc.StatusCode.CANCELLED}
            await stream.round_trip()
            await stream.close()

    _run(main)


# --- 14: server keepalive ---------------------------------------------------------------------------------

#: The keepalive servers' --grpc-keepalive: a silent client is pinged after 1 s and dropped 1 s later.
KEEPALIVE_S = 1.0


@pytest.fixture(scope="module", params=GRPC_SERVERS)
def keepalive_server(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per implementation with a short keepalive and no ping policy, FP32 identity only."""
    implementation: str = request.param
    repo = _identity_repo(tmp_path_factory, f"grpc-keepalive-{implementation}")
    yield from _served(repo, implementation, ["--grpc-keepalive", str(KEEPALIVE_S), "--grpc-min-ping-interval", "0"],
                       {})


@pytest.mark.parametrize("keepalive_server", ["native"], indirect=True)
def test_a_client_gone_silent_is_pinged_then_dropped(keepalive_server: ServerProcess) -> None:
    """A client that went away without closing (a host powered off, a NAT that forgot the flow) looks like one
    that sends nothing and answers nothing: after --grpc-keepalive of silence the server pings it, and after no
    answer it drops the connection, where without keepalive it would hold it forever. Native only: grpc.aio
    (grpc 1.81, with the same keepalive options) sends its PING at the same moment but had not dropped the
    connection 15 s later."""
    with _connect(keepalive_server) as sock:
        _send(sock, PREFACE + _frame(SETTINGS, 0, 0))
        _first_settings(sock)
        _send(sock, _frame(SETTINGS, ACK, 0))
        frames: list[Frame] = []
        while (frame := _read_frame(sock)) is not None:  # the socket's 10 s timeout fails a server that never drops it
            frames.append(frame)
    pings = [frame for frame in frames if frame[:2] == (PING, 0)]
    assert pings, f"no keepalive PING before the close: {frames}"
    _serves(keepalive_server)


def test_a_client_that_answers_the_pings_keeps_its_connection(keepalive_server: ServerProcess) -> None:
    """An idle grpc client answers the server's pings: its connection outlives several keepalive rounds."""

    async def main() -> None:
        async with _aio_channel(keepalive_server) as channel:
            stream = _OpenStream(pb_grpc.GRPCInferenceServiceStub(channel))
            await stream.round_trip()
            await asyncio.sleep(4 * KEEPALIVE_S)
            await stream.round_trip()
            await stream.close()

    _run(main)
