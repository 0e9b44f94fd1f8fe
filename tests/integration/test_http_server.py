"""The fast HTTP server (gateway.rest.http_server) on a loopback port, under uvloop and asyncio.

A small fake infer handler stands for the data plane and a tiny FastAPI app for the other
routes; clients are real (httpx and raw sockets). Waits are bounded only to keep a broken
server from hanging the suite; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import orjson
import pytest
import uvloop
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from gateway.protocol.errors import NotFound
from gateway.rest.http_server import HttpServer, Reply

LIMIT = 4096
#: Bound on every wait, so that a bug fails the test instead of hanging it.
GUARD_S = 10.0

Scenario = Callable[["Harness"], Coroutine[Any, Any, None]]


class FakeInfer:
    """Echoes what it got; ``error``/``crash`` raise; ``slow`` waits for ``release``."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, model: str, version: str | None, body: bytes, header_length: str | None,
                       headers: list[tuple[bytes, bytes]]) -> Reply:
        self.calls.append((model, version))
        if model == "error":
            raise NotFound("unknown model 'error'")
        if model == "crash":
            raise RuntimeError("boom")
        if model == "slow":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if model == "binary":
            header = b'{"outputs":[]}'
            return Reply(200, b"application/octet-stream", memoryview(header + b"\x00" * 8), len(header))
        document = {"model": model, "version": version, "size": len(body), "header_length": header_length,
                    "head": body[:16].decode("latin-1")}
        return Reply(200, b"application/json", orjson.dumps(document))


def tiny_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> Response:
        return Response(orjson.dumps({"name": name, "via": "asgi"}), media_type="application/json")

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(orjson.dumps({"size": len(body), "query": request.url.query}),
                        media_type="application/json")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                yield b"part%d;" % i

        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/fail")
    async def fail() -> Response:
        raise RuntimeError("the app failed")

    return app


class Harness:
    def __init__(self, server: HttpServer, infer: FakeInfer) -> None:
        self.server = server
        self.infer = infer
        self.port = server.port
        self.url = f"http://127.0.0.1:{self.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def run(loop_kind: str, scenario: Scenario, keep_alive_s: float = 30) -> None:
    async def main() -> None:
        infer = FakeInfer()
        server = HttpServer(tiny_app(), infer, LIMIT, keep_alive_s=keep_alive_s)
        await server.start("127.0.0.1", 0, reuse_port=False)
        try:
            await asyncio.wait_for(scenario(Harness(server, infer)), GUARD_S)
            assert server.requests_in_progress == 0
        finally:
            await server.close(grace_s=1)

    if loop_kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return await reader.read(65536) == b""
    except ConnectionResetError:
        return True


# -- routing ------------------------------------------------------------------------------


def test_infer_paths_take_the_fast_path_and_the_rest_goes_to_the_asgi_app(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        async with httpx.AsyncClient(base_url=h.url) as client:
            latest = await client.post("/v2/models/m/infer", content=b'{"inputs":[]}')
            pinned = await client.post("/v2/models/m/versions/3/infer?x=1", content=b"{}")
            quoted = await client.post("/v2/models/a%20b/infer", content=b"{}")
            binary = await client.post("/v2/models/binary/infer", content=b"{}",
                                       headers={"Inference-Header-Content-Length": "2"})
            live = await client.get("/v2/health/live")
            metadata = await client.get("/v2/models/m")
            echo = await client.post("/echo?q=1", content=b"12345")
            other = await client.post("/v2/models/m/versions/3/extra/infer", content=b"{}")
            missing = await client.get("/nowhere")
        assert latest.status_code == 200
        assert latest.json() == {"model": "m", "version": None, "size": 13, "header_length": None,
                                 "head": '{"inputs":[]}'}
        assert latest.headers["content-type"] == "application/json"
        assert "date" in latest.headers and latest.headers["server"] == "tensorgate"
        assert pinned.json()["version"] == "3"
        assert quoted.json()["model"] == "a b"
        assert binary.headers["inference-header-content-length"] == "14"
        assert binary.headers["content-type"] == "application/octet-stream"
        assert binary.content == b'{"outputs":[]}' + b"\x00" * 8
        assert live.json() == {"live": True}
        assert metadata.json() == {"name": "m", "via": "asgi"}
        assert echo.json() == {"size": 5, "query": "q=1"}
        assert other.status_code == 404
        assert missing.status_code == 404
        assert h.infer.calls == [("m", None), ("m", "3"), ("a b", None), ("binary", None)]

    run(loop_kind, scenario)


def test_other_methods_on_the_infer_path_get_405(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        async with httpx.AsyncClient(base_url=h.url) as client:
            get = await client.get("/v2/models/m/infer")
            head = await client.head("/v2/models/m/versions/1/infer")
            put = await client.put("/v2/models/m/infer", content=b"{}")
        assert get.status_code == head.status_code == put.status_code == 405
        assert get.headers["allow"] == "POST"
        assert "not allowed" in get.json()["error"]
        assert head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert h.infer.calls == []

    run(loop_kind, scenario)


def test_streaming_asgi_response_is_chunked(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        async with httpx.AsyncClient(base_url=h.url) as client:
            reply = await client.get("/stream")
            after = await client.get("/v2/health/live")  # the connection is still usable
        assert reply.status_code == 200
        assert reply.headers["transfer-encoding"] == "chunked"
        assert reply.content == b"part0;part1;part2;"
        assert after.status_code == 200

    run(loop_kind, scenario)


def test_asgi_app_error_is_a_500_and_the_connection_stays_usable(
        loop_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        async with httpx.AsyncClient(base_url=h.url) as client:
            failed = await client.get("/fail")
            after = await client.get("/v2/health/live")
        assert failed.status_code == 500  # Starlette's own answer, sent before it re-raises
        assert after.status_code == 200

    with caplog.at_level(logging.ERROR, logger="tensorgate.http"):
        run(loop_kind, scenario)
    assert any("asgi_app_failed" in r.getMessage() and r.exc_info is None for r in caplog.records)


# -- bodies -------------------------------------------------------------------------------


def test_content_length_over_the_limit_gets_413_before_the_body(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(f"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        assert status == 413
        assert headers["connection"] == "close"
        assert "exceeds the limit" in orjson.loads(body)["error"]
        assert await closed(reader)
        writer.close()
        async with httpx.AsyncClient(base_url=h.url) as client:  # a client that sends the body anyway
            reply = await client.post("/v2/models/m/infer", content=b"x" * (LIMIT + 100))
            asgi = await client.post("/echo", content=b"x" * (LIMIT + 100))
        assert reply.status_code == asgi.status_code == 413
        assert h.infer.calls == []

    run(loop_kind, scenario)


def test_chunked_body_is_counted_as_it_arrives(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        async def chunks(total: int) -> AsyncIterator[bytes]:
            for _ in range(total // 1000):
                yield b"y" * 1000

        async with httpx.AsyncClient(base_url=h.url) as client:
            small = await client.post("/v2/models/m/infer", content=chunks(3000))
            assert small.json()["size"] == 3000
        reader, writer = await h.connect()
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(LIMIT // 1000 + 1):
            writer.write(b"3e8\r\n" + b"z" * 1000 + b"\r\n")
        status, _, body = await read_response(reader)
        assert status == 413
        assert "exceeds the limit" in orjson.loads(body)["error"]
        assert await closed(reader)
        writer.close()
        assert h.infer.calls == [("m", None)]

    run(loop_kind, scenario)


def test_gzip_and_deflate_bodies_are_decompressed_within_the_limit(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        payload = b'{"inputs":' + b" " * 3000 + b"[]}"
        async with httpx.AsyncClient(base_url=h.url) as client:
            gz = await client.post("/v2/models/m/infer", content=gzip.compress(payload),
                                   headers={"Content-Encoding": "gzip"})
            deflated = await client.post("/v2/models/m/infer", content=zlib.compress(payload),
                                         headers={"Content-Encoding": "DEFLATE"})
            bomb = await client.post("/v2/models/m/infer", content=gzip.compress(b" " * (LIMIT * 10)),
                                     headers={"Content-Encoding": "gzip"})
            broken = await client.post("/v2/models/m/infer", content=b"not gzip",
                                       headers={"Content-Encoding": "gzip"})
            unknown = await client.post("/v2/models/m/infer", content=payload, headers={"Content-Encoding": "br"})
        assert gz.status_code == deflated.status_code == 200
        assert gz.json()["size"] == deflated.json()["size"] == len(payload)
        assert gz.json()["head"] == payload[:16].decode()
        assert bomb.status_code == 413
        assert broken.status_code == 400 and "decompress" in broken.json()["error"]
        assert unknown.status_code == 501

    run(loop_kind, scenario)


def test_expect_100_continue(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        body = b'{"inputs":[1]}'
        writer.write(f"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        status, _, reply = await read_response(reader)
        assert status == 200 and orjson.loads(reply)["size"] == len(body)
        # Over the limit: 413 instead of 100, and the body is never asked for.
        writer.write(f"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {LIMIT + 1}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        status, _, _ = await read_response(reader)
        assert status == 413
        writer.close()

    run(loop_kind, scenario)


# -- connections --------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        for i in range(3):
            writer.write(post(f"/v2/models/m{i}/infer", b"{}"))
            status, headers, body = await read_response(reader)
            assert status == 200 and orjson.loads(body)["model"] == f"m{i}"
            assert "connection" not in headers
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = await read_response(reader)
            assert status == 200 and body == b'{"live":true}'
        writer.close()

    run(loop_kind, scenario)


def test_pipelined_requests_are_answered_in_order(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(post("/v2/models/first/infer", b"{}")
                     + b"GET /v2/models/second HTTP/1.1\r\nHost: t\r\n\r\n"
                     + post("/v2/models/error/infer", b"{}")
                     + b"GET /v2/models/fourth/infer HTTP/1.1\r\nHost: t\r\n\r\n"
                     + post("/v2/models/fifth/versions/2/infer", b"{}"))
        answers = [await read_response(reader) for _ in range(5)]
        assert [a[0] for a in answers] == [200, 200, 404, 405, 200]
        assert orjson.loads(answers[0][2])["model"] == "first"
        assert orjson.loads(answers[1][2])["name"] == "second"
        assert orjson.loads(answers[2][2]) == {"error": "unknown model 'error'"}
        assert orjson.loads(answers[4][2])["model"] == "fifth"
        writer.close()

    run(loop_kind, scenario)


def test_connection_close_and_http_1_0(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(post("/v2/models/m/infer", b"{}", "Connection: close"))
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await closed(reader)
        writer.close()

        reader, writer = await h.connect()
        writer.write(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await closed(reader)
        writer.close()

        reader, writer = await h.connect()
        for _ in range(2):
            writer.write(b"POST /v2/models/m/infer HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}")
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers["connection"] == "keep-alive"
        writer.close()

    run(loop_kind, scenario)


def test_idle_keep_alive_connection_is_closed(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(post("/v2/models/m/infer", b"{}"))
        status, _, _ = await read_response(reader)
        assert status == 200
        assert await closed(reader)  # after keep_alive_s without a request
        writer.close()

    run(loop_kind, scenario, keep_alive_s=0.2)


def test_malformed_request_gets_400_and_close(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: x\r\n\r\n"):
            reader, writer = await h.connect()
            writer.write(garbage)
            status, headers, body = await read_response(reader)
            assert status == 400 and headers["connection"] == "close"
            assert "malformed HTTP request" in orjson.loads(body)["error"]
            assert await closed(reader)
            writer.close()
        reader, writer = await h.connect()
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 431
        writer.close()
        assert h.infer.calls == []

    run(loop_kind, scenario)


def test_handler_errors_become_json_with_their_status(loop_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        async with httpx.AsyncClient(base_url=h.url) as client:
            not_found = await client.post("/v2/models/error/infer", content=b"{}")
            crash = await client.post("/v2/models/crash/infer", content=b"{}")
            after = await client.post("/v2/models/m/infer", content=b"{}")
        assert not_found.status_code == 404
        assert not_found.json() == {"error": "unknown model 'error'"}
        assert crash.status_code == 500 and "error" in crash.json()
        assert after.status_code == 200

    with caplog.at_level(logging.ERROR, logger="tensorgate.http"):
        run(loop_kind, scenario)
    failures = [r for r in caplog.records if "infer_failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is None and "RuntimeError: boom" in failures[0].getMessage()


def test_disconnect_cancels_the_handler(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        _reader, writer = await h.connect()
        writer.write(post("/v2/models/slow/infer", b"{}"))
        await h.infer.started.wait()
        assert h.server.requests_in_progress == 1
        writer.close()
        await h.infer.cancelled.wait()
        while h.server.requests_in_progress:
            await asyncio.sleep(0.01)

    run(loop_kind, scenario)


def test_close_drains_requests_in_progress(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        idle_reader, idle_writer = await h.connect()
        gate_reader, gate_writer = await h.connect()
        writer.write(post("/v2/models/slow/infer", b"{}"))
        await h.infer.started.wait()
        # A request still being received: 100 Continue came, the body is withheld for now.
        gate_writer.write(b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        assert await gate_reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert h.server.requests_in_progress == 2
        closing = asyncio.create_task(h.server.close(grace_s=GUARD_S))
        assert await closed(idle_reader)  # an idle keep-alive connection goes at once
        idle_writer.close()
        assert not closing.done()
        with pytest.raises(OSError):
            await h.connect()  # no longer accepting
        h.infer.release.set()
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert not closing.done()  # the gate is still in progress
        gate_writer.write(b"{}")
        status, headers, body = await read_response(gate_reader)
        assert status == 200 and headers["connection"] == "close"
        assert orjson.loads(body)["model"] == "gate"
        gate_writer.close()
        await closing
        assert h.server.requests_in_progress == 0
        assert not h.infer.cancelled.is_set()
        writer.close()

    run(loop_kind, scenario)


def test_close_cancels_what_outlives_the_grace(loop_kind: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(post("/v2/models/slow/infer", b"{}"))
        await h.infer.started.wait()
        await h.server.close(grace_s=0.05)
        await h.infer.cancelled.wait()
        assert await closed(reader)
        assert h.server.requests_in_progress == 0
        writer.close()

    run(loop_kind, scenario)
