"""Closed-loop load generators that run in their own process: ``python -m benchmarks.loadgen``.

Each of ``--concurrency`` clients sends one request, waits for its reply, and sends the next,
until ``--duration`` seconds have passed or ``--requests`` requests have been sent in all. The
request body is read from a file built beforehand (``benchmarks.payloads``) and sent unchanged,
so the client does no per-request encoding.

- ``grpc``: ``grpc.aio`` on one channel (one HTTP/2 connection), the ``ModelInfer`` method
  called with the serialized request bytes (no per-call protobuf work on the client).
- ``grpc-sync``: the same with blocking calls, one thread per client (less client CPU per call
  at low concurrency; ``tensorgate bench --grpc-client sync``).
- ``http``: HTTP/1.1 keep-alive over asyncio streams, one connection per client: the fallback
  when ``wrk`` is not installed (``wrk`` drives HTTP load otherwise, see ``benchmarks.wrk``).

The result is one line on stdout: ``TGBENCH {json}`` (see ``LoadResult``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_PREFIX = "TGBENCH "
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class LoadResult:
    """What a load generator measured (latencies in milliseconds)."""

    generator: str
    requests: int
    errors: int
    elapsed_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    error_samples: list[str] = field(default_factory=list)

    def to_line(self) -> str:
        return RESULT_PREFIX + json.dumps(asdict(self))

    @classmethod
    def from_output(cls, text: str) -> LoadResult:
        for line in text.splitlines():
            if line.startswith(RESULT_PREFIX):
                return cls(**json.loads(line[len(RESULT_PREFIX):]))
        raise RuntimeError(f"the load generator printed no result line:\n{text[-2000:]}")


class _Budget:
    """Stops the clients at a deadline or after a number of requests."""

    def __init__(self, duration: float | None, requests: int | None) -> None:
        self.deadline = time.perf_counter() + duration if duration else float("inf")
        self.remaining = requests if requests else -1

    def take(self) -> bool:
        if time.perf_counter() >= self.deadline or self.remaining == 0:
            return False
        if self.remaining > 0:
            self.remaining -= 1
        return True


class _Recorder:
    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.samples: list[str] = []

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(message[:300])

    def result(self, generator: str, elapsed: float) -> LoadResult:
        import numpy as np

        lat = np.array(self.latencies_ns, dtype=np.float64) / 1e6
        if lat.size:
            p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
            mean, top = float(lat.mean()), float(lat.max())
        else:
            p50 = p90 = p99 = mean = top = 0.0
        return LoadResult(generator, len(self.latencies_ns) + self.errors, self.errors, elapsed,
                          p50, p90, p99, mean, top, self.samples)


async def _grpc_client(call: Any, body: bytes, budget: _Budget, rec: _Recorder, timeout: float) -> None:
    import grpc

    while budget.take():
        start = time.perf_counter_ns()
        try:
            await call(body, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            rec.error(f"{exc.code().name}: {exc.details()}")
            continue
        rec.latencies_ns.append(time.perf_counter_ns() - start)


async def run_grpc(target: str, body: bytes, concurrency: int, budget: _Budget, timeout: float) -> LoadResult:
    import grpc

    rec = _Recorder()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await channel.channel_ready()
        call = channel.unary_unary(GRPC_METHOD)  # no serializers: bytes in, bytes out
        start = time.perf_counter()
        await asyncio.gather(*(_grpc_client(call, body, budget, rec, timeout) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return rec.result("grpc.aio (python)", elapsed)


def run_grpc_sync(target: str, body: bytes, concurrency: int, budget: _Budget, timeout: float) -> LoadResult:
    """The same closed loop from blocking ``grpc`` calls, one thread per client: less Python per call
    than ``grpc.aio``, to show how much of the measured latency is the client's own."""
    import threading

    import grpc

    rec = _Recorder()
    lock = threading.Lock()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        call = channel.unary_unary(GRPC_METHOD)

        def client() -> None:
            while True:
                with lock:
                    if not budget.take():
                        return
                start = time.perf_counter_ns()
                try:
                    call(body, timeout=timeout)
                except grpc.RpcError as exc:
                    with lock:
                        rec.error(str(exc)[:300])
                    continue
                elapsed = time.perf_counter_ns() - start
                with lock:
                    rec.latencies_ns.append(elapsed)

        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed_s = time.perf_counter() - start
    return rec.result("grpc sync (python threads)", elapsed_s)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 response with a Content-Length."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length, keep_alive = 0, True
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            raise ConnectionError("chunked replies are not supported by this client")
    body = await reader.readexactly(length) if length else b""
    return status, body, keep_alive


async def _http_client(host: str, port: int, request: bytes, budget: _Budget, rec: _Recorder,
                       timeout: float) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while budget.take():
            start = time.perf_counter_ns()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(request)
                status, body, keep_alive = await asyncio.wait_for(_read_response(reader), timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as exc:
                rec.error(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            if status != 200:
                rec.error(f"HTTP {status}: {body[:200].decode(errors='replace')}")
            else:
                rec.latencies_ns.append(time.perf_counter_ns() - start)
            if not keep_alive:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


def http_request(host: str, port: int, path: str, body: bytes, content_type: str,
                 headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_http(host: str, port: int, request: bytes, concurrency: int, budget: _Budget,
                   timeout: float) -> LoadResult:
    rec = _Recorder()
    start = time.perf_counter()
    await asyncio.gather(*(_http_client(host, port, request, budget, rec, timeout) for _ in range(concurrency)))
    return rec.result("asyncio HTTP/1.1 (python fallback, wrk not used)", time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["grpc", "grpc-sync", "http"])
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--path", default="/", help="HTTP path")
    parser.add_argument("--body", type=Path, required=True, help="file holding the request body")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--header", action="append", default=[], help="extra HTTP header 'Name: value'")
    parser.add_argument("--key-header", default=None,
                        help="HTTP header carrying $TENSORGATE_BENCH_API_KEY (kept off the command line)")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, default=None, help="seconds")
    parser.add_argument("--requests", type=int, default=None, help="requests in all")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    if not args.duration and not args.requests:
        parser.error("give --duration or --requests")

    import uvloop

    body = args.body.read_bytes()
    budget = _Budget(args.duration, args.requests)
    host, _, port = args.target.rpartition(":")
    if args.kind == "grpc":
        result = uvloop.run(run_grpc(args.target, body, args.concurrency, budget, args.timeout))
    elif args.kind == "grpc-sync":
        result = run_grpc_sync(args.target, body, args.concurrency, budget, args.timeout)
    else:
        headers = dict(h.split(":", 1) for h in args.header)
        if args.key_header:
            headers[args.key_header] = os.environ["TENSORGATE_BENCH_API_KEY"]
        request = http_request(host, int(port), args.path, body, args.content_type,
                               {k.strip(): v.strip() for k, v in headers.items()})
        result = uvloop.run(run_http(host, int(port), request, args.concurrency, budget, args.timeout))
    sys.stdout.write(result.to_line() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
