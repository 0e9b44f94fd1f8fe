"""What one unary gRPC call costs a Python server that does no work: grpc.aio, ours, a bare HTTP/2 loop.

The gRPC frontend's cost per call is mostly grpc.aio's own (benchmarks/results/serving-path.md,
"gRPC frontend cost"). Before anyone writes a gRPC server of our own, this measures the floor of
each way of being one, with nothing behind it: every ModelInfer call gets the same canned
``ModelInferResponse``.

- ``aio``: a ``grpc.aio`` server with one generic handler, bytes in and out (no protobuf parsing);
- ``h2``: a minimal HTTP/2 server on an asyncio ``Protocol`` (uvloop): connection preface,
  SETTINGS, PING, WINDOW_UPDATE, HEADERS/CONTINUATION decoded with ``hpack`` (which keeps the
  client's dynamic table), DATA, and for each finished stream one write of response HEADERS,
  the DATA frame and the trailers. No TLS, no compression, no deadlines, no flow control of its
  own answers: a measuring device for small unary calls, not a server to deploy.

Each server runs in its own process; the load is ``tritonclient.grpc.aio`` ``infer`` calls from
another process (closed loop, ``--concurrency`` calls in flight on one channel, the way the
side-by-side anchors load gRPC). The table gives calls/s and the server process's CPU per call
from ``/proc`` over the measured window, rounds alternating between the servers::

    .venv/bin/python -m benchmarks.grpc_floor --rounds 3 --concurrency 16 --duration 6

- ``native``: TensorGate's own gRPC server (``gateway.grpc.native``) with the same generic handler:
  what the bare loop's floor becomes once it is a server (flow control, deadlines, a context per call).
"""

import argparse
import asyncio
import multiprocessing
import socket
import struct
import time
from typing import Any, cast

import numpy as np

from benchmarks.system import cpu_seconds

PATH = "/inference.GRPCInferenceService/ModelInfer"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (RFC 9113).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
FRAME = struct.Struct(">HBBBI")  # length as 16 + 8 bits, type, flags, stream id


def canned_reply() -> bytes:
    """A ModelInferResponse of one FP32 [1,10] output, as the MLP answers."""
    from gateway.grpc.generated import grpc_service_pb2 as pb

    reply = pb.ModelInferResponse(model_name="mlp", model_version="1", id="")
    output = reply.outputs.add(name="OUTPUT__0", datatype="FP32", shape=[1, 10])
    assert output is not None
    reply.raw_output_contents.append(np.arange(10, dtype=np.float32).tobytes())
    return reply.SerializeToString()


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (RFC 7541, 6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


# :status 200 is static-table entry 8; the rest are literals that leave no state in the client's table.
RESPONSE_HEADERS = b"\x88" + _literal(b"content-type", b"application/grpc")
TRAILERS = _literal(b"grpc-status", b"0")


class H2Connection(asyncio.Protocol):
    """One client connection of the bare HTTP/2 server."""

    def __init__(self, reply: bytes) -> None:
        import hpack

        self.decoder = hpack.Decoder()
        self.buffer = bytearray()
        self.preface = False
        self.headers: dict[int, bytearray] = {}
        self.paths: dict[int, bytes] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.unacked = 0
        self.message = struct.pack(">BI", 0, len(reply)) + reply
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Our SETTINGS (none changed) and a large connection window, so the client never waits for us.
        self.transport.write(frame(SETTINGS, 0, 0, b"") + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.preface:
            if len(buffer) < len(PREFACE):
                return
            if buffer[: len(PREFACE)] != PREFACE:
                assert self.transport is not None
                self.transport.close()
                return
            del buffer[: len(PREFACE)]
            self.preface = True
        out: list[bytes] = []
        start, size = 0, len(buffer)
        while size - start >= 9:
            high, low, kind, flags, stream = FRAME.unpack_from(buffer, start)
            length = (high << 8) | low
            end = start + 9 + length
            if end > size:
                break
            self._frame(kind, flags, stream & 0x7FFFFFFF, bytes(buffer[start + 9 : end]), out)
            start = end
        del buffer[:start]
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes, out: list[bytes]) -> None:
        if kind == DATA:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            self.bodies.setdefault(stream, bytearray()).extend(payload)  # assembled, as a server must; unread
            self.unacked += len(payload)
            if self.unacked > 1 << 20:
                out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
                self.unacked = 0
            if flags & END_STREAM:
                self._answer(stream, out)
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                if flags & END_STREAM:
                    self.ended.add(stream)  # once its header block is complete (CONTINUATION may follow)
            block = self.headers.setdefault(stream, bytearray())
            block += payload
            if flags & END_HEADERS:
                for name, value in self.decoder.decode(bytes(self.headers.pop(stream)), raw=True):
                    if name == b":path":
                        self.paths[stream] = value
                if stream in self.ended:
                    self.ended.discard(stream)
                    self._answer(stream, out)
        elif kind == SETTINGS and not flags & ACK:
            out.append(frame(SETTINGS, ACK, 0, b""))
        elif kind == PING and not flags & ACK:
            out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self.bodies.pop(stream, None)
            self.paths.pop(stream, None)

    def _answer(self, stream: int, out: list[bytes]) -> None:
        self.bodies.pop(stream, None)
        if self.paths.pop(stream, b"").decode() != PATH:
            out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream,
                             RESPONSE_HEADERS + _literal(b"grpc-status", b"12")))
            return
        out.append(frame(HEADERS, END_HEADERS, stream, RESPONSE_HEADERS))
        out.append(frame(DATA, 0, stream, self.message))
        out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream, TRAILERS))


def serve_h2(port: int, ready: Any) -> None:
    import uvloop

    async def main() -> None:
        reply = canned_reply()
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: H2Connection(reply), "127.0.0.1", port)
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def _serve_canned(port: int, ready: Any, native: bool) -> None:
    """grpc.aio or the native server with one generic handler, bytes in and out."""
    import grpc
    import uvloop

    from gateway.grpc.native.server import NativeServer

    async def main() -> None:
        reply = canned_reply()

        async def infer(request: bytes, context: Any) -> bytes:
            return reply

        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})
        server = NativeServer(1 << 20) if native else grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(main())


def serve_aio(port: int, ready: Any) -> None:
    _serve_canned(port, ready, native=False)


def serve_native(port: int, ready: Any) -> None:
    _serve_canned(port, ready, native=True)


SERVERS = {"aio": serve_aio, "native": serve_native, "h2": serve_h2}


def load(port: int, concurrency: int, warmup: float, duration: float, server_pid: int, result: Any) -> None:
    """tritonclient.grpc.aio calls, ``concurrency`` in flight; puts (calls/s, server CPU µs/call)."""
    import tritonclient.grpc.aio as grpcclient

    async def main() -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = grpcclient.InferInput("INPUT__0", [1, 784], "FP32")
        tensor.set_data_from_numpy(np.random.default_rng(0).random((1, 784), dtype=np.float32))
        expected = np.arange(10, dtype=np.float32).reshape(1, 10)  # what canned_reply() holds
        calls = 0
        measuring = False
        stop = time.monotonic() + warmup + duration

        async def worker() -> None:
            nonlocal calls
            while time.monotonic() < stop:
                answer = await client.infer("mlp", [tensor])
                if not np.array_equal(answer.as_numpy("OUTPUT__0"), expected):
                    raise AssertionError(f"wrong answer: {answer.as_numpy('OUTPUT__0')}")
                if measuring:
                    calls += 1

        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring, cpu0, t0 = True, cpu_seconds(server_pid), time.monotonic()
        await asyncio.sleep(duration)
        measuring = False
        cpu1, t1 = cpu_seconds(server_pid), time.monotonic()
        assert cpu0 is not None and cpu1 is not None, "the server process is gone"
        counted = calls
        await asyncio.gather(*tasks)
        await client.close()
        result.put((counted / (t1 - t0), (cpu1 - cpu0) / counted * 1e6))

    asyncio.run(main())


def point(kind: str, port: int, args: argparse.Namespace) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    ready, result = context.Event(), context.Queue()
    server = context.Process(target=SERVERS[kind], args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError(f"the {kind} server did not start")
        assert server.pid is not None
        client = context.Process(target=load, args=(port, args.concurrency, args.warmup, args.duration, server.pid,
                                                    result))
        client.start()
        client.join(args.warmup + args.duration + 60)
        if client.exitcode != 0:
            raise RuntimeError(f"the load against the {kind} server failed (exit code {client.exitcode}; "
                               "its traceback is above)")
        rate, cpu = result.get(timeout=5)
        return float(rate), float(cpu)
    finally:
        server.kill()
        server.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--port", type=int, default=19400)
    args = parser.parse_args(argv)
    rows = []
    for number in range(1, args.rounds + 1):
        for kind in SERVERS:
            rate, cpu = point(kind, args.port, args)
            rows.append((number, kind, rate, cpu))
            print(f"round {number} {kind:6}: {rate:8,.0f} calls/s, server CPU {cpu:5.0f} µs/call", flush=True)
    print(f"\n| round | server | calls/s (c{args.concurrency}) | server CPU µs/call |\n|---:|---|---:|---:|")
    for number, kind, rate, cpu in rows:
        print(f"| {number} | {kind} | {rate:,.0f} | {cpu:.0f} |")
    for kind in SERVERS:
        cpus = sorted(r[3] for r in rows if r[1] == kind)
        rates = sorted(r[2] for r in rows if r[1] == kind)
        print(f"median {kind}: {rates[len(rates) // 2]:,.0f} calls/s, {cpus[len(cpus) // 2]:.0f} µs/call")


if __name__ == "__main__":
    main()
