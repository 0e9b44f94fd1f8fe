"""Which HTTP stack for the REST infer path? Each option serves the same work, no model.

Per request every option reads the ~15 kB v2 JSON body of 784 FP32 values, decodes it with
the gateway's codec into numpy (``decode_request``) and answers a small v2 JSON reply (10
values, ``encode_response``). Options, each one process, run one after the other:

- ``uvicorn-fastapi``: uvicorn + httptools + uvloop, a FastAPI route (``await request.body()``);
- ``uvicorn-asgi``: uvicorn + httptools + uvloop, a raw ASGI callable;
- ``granian-asgi`` / ``granian-rsgi``: granian (1 worker, 1 runtime thread, uvloop), the same raw
  ASGI callable / its RSGI interface (only if granian is installed);
- ``tensorgate``: ``gateway.rest.http_server.HttpServer`` on uvloop, the infer fast path.

Every server process imports the gateway's server modules first, so its heap (and what a
full cyclic-GC collection costs) is the size of the real gateway's; ``--gc-freeze`` moves
that start-up heap out of the collector's reach with ``gc.freeze()``, as the gateway does.

    python -m benchmarks.http_stack [--duration 5] [--concurrency 16 1] [--gc-freeze] [--only NAME ...]

Load comes from wrk (1 thread) with ``benchmarks/infer.lua``; the server's CPU time (its whole
process tree, from /proc) is divided by the requests answered. "full GCs" counts the server's
generation-2 collections during the measured run (``gc.callbacks``), "longest GC" the longest one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response

from benchmarks.inputs import Tensor
from benchmarks.models import MODELS, ModelSpec
from benchmarks.payloads import Payload, build_payload
from benchmarks.server import free_port
from benchmarks.system import children, cpu_seconds
from benchmarks.wrk import LUA_SCRIPT
from gateway.protocol.json_codec import decode_request, encode_response
from gateway.protocol.types import InferOutput, InferResponse

FREEZE_ENV = "TG_HTTP_STACK_GC_FREEZE"
#: Where a server process appends "wall-clock-time milliseconds" for every full (gen-2) collection.
GC_LOG_ENV = "TG_HTTP_STACK_GC_LOG"
MODEL = "identity"
PATH = f"/v2/models/{MODEL}/infer"


# -- the work, the same in every option ------------------------------------------------------


def answer(model: str, body: bytes) -> bytes:
    """Decode the v2 JSON request into numpy and encode a 10-value v2 JSON reply."""
    request = decode_request(body, None, model, None)
    first = request.inputs[0].data
    logits = np.ascontiguousarray(first.reshape(first.shape[0], -1)[:, :10])
    response = InferResponse(model_name=model, model_version="1",
                             outputs=[InferOutput("logits", "FP32", logits)])
    payload, _ = encode_response(response, set())
    return payload


def _model_of(path: str) -> str:
    return path.split("/")[3]


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def asgi_app(scope: Scope, receive: Callable[[], Awaitable[Message]],
                   send: Callable[[Message], Awaitable[None]]) -> None:
    """The raw ASGI option: read the body, answer."""
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    payload = answer(_model_of(scope["path"]), b"".join(chunks))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]})
    await send({"type": "http.response.body", "body": payload})


class _Rsgi:
    """granian's RSGI interface."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        body = await protocol()
        protocol.response_bytes(200, [("content-type", "application/json")], answer(_model_of(scope.path), body))


rsgi_app = _Rsgi()


def _fastapi() -> FastAPI:
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    async def infer(request: Request, model_name: str) -> Response:
        return Response(answer(model_name, await request.body()), media_type="application/json")

    return app


def _prepare_process() -> None:
    """What every server process does at import: load the gateway's modules, maybe freeze."""
    import gateway.rest.app
    import gateway.server  # noqa: F401  (grpc, prometheus, uvicorn: the real heap)

    if os.environ.get(FREEZE_ENV) == "1":
        gc.collect()
        gc.freeze()
    if os.environ.get(GC_LOG_ENV):
        _log_full_collections(Path(os.environ[GC_LOG_ENV]))


def _log_full_collections(path: Path) -> None:
    out = path.open("a", buffering=1)
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            out.write(f"{time.time():.6f} {(time.perf_counter() - started[0]) * 1e3:.3f}\n")

    gc.callbacks.append(callback)


if os.environ.get("TG_HTTP_STACK_SERVER") == "1":
    _prepare_process()
    fastapi_app = _fastapi()


def serve_tensorgate(port: int) -> None:
    import asyncio

    import uvloop

    from gateway.rest.http_server import HttpServer, Reply

    async def infer(model: str, version: str | None, body: bytes, header_length: str | None,
                    headers: list[tuple[bytes, bytes]]) -> Reply:
        return Reply(200, b"application/json", answer(model, body))

    async def main() -> None:
        server = HttpServer(_fastapi(), infer, 64 * 1024 * 1024)
        await server.start("127.0.0.1", port, reuse_port=False)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.close(grace_s=1)

    uvloop.run(main())


# -- the runs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    description: str
    command: Callable[[int], list[str]]
    needs: str | None = None  # an executable that must be installed


def _uvicorn(app: str) -> Callable[[int], list[str]]:
    return lambda port: [sys.executable, "-m", "uvicorn", f"benchmarks.http_stack:{app}", "--port", str(port),
                         "--http", "httptools", "--loop", "uvloop", "--lifespan", "off", "--no-access-log",
                         "--log-level", "warning"]


def _granian(interface: str, app: str) -> Callable[[int], list[str]]:
    granian = str(Path(sys.executable).with_name("granian"))
    return lambda port: [granian, "--interface", interface, "--http", "1", "--workers", "1",
                         "--runtime-threads", "1", "--loop", "uvloop", "--no-ws", "--port", str(port),
                         "--log-level", "warning", f"benchmarks.http_stack:{app}"]


OPTIONS = [
    Option("uvicorn-fastapi", "uvicorn 0.x + httptools + uvloop, FastAPI route", _uvicorn("fastapi_app")),
    Option("uvicorn-asgi", "uvicorn + httptools + uvloop, raw ASGI app", _uvicorn("asgi_app")),
    Option("granian-asgi", "granian, 1 worker, uvloop, raw ASGI app", _granian("asgi", "asgi_app"), "granian"),
    Option("granian-rsgi", "granian, 1 worker, uvloop, RSGI app", _granian("rsgi", "rsgi_app"), "granian"),
    Option("tensorgate", "gateway.rest.http_server.HttpServer, uvloop, fast path",
           lambda port: [sys.executable, "-m", "benchmarks.http_stack", "serve", "--port", str(port)]),
]


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants (granian runs its workers as children)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        total += cpu_seconds(p) or 0.0
        todo += children(p)
    return total


def _wait_ready(url: str, body: bytes, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=2) as reply:
                if reply.status == 200 and b"logits" in reply.read():
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("server not ready")


def _wrk(url: str, body_file: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA_SCRIPT), url,
               "--", str(body_file), "application/json", "-", "0"]
    out = subprocess.run(command, capture_output=True, check=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("TGBENCH "):
            result: dict[str, Any] = json.loads(line[len("TGBENCH "):])
            return result
    raise RuntimeError(f"no TGBENCH line from wrk:\n{out}")


def run_option(option: Option, body_file: Path, body: bytes, concurrencies: list[int], seconds: int,
               freeze: bool) -> list[dict[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    gc_log = body_file.with_name(f"gc-{option.name}-{port}.log")
    env = {**os.environ, "TG_HTTP_STACK_SERVER": "1", FREEZE_ENV: "1" if freeze else "0",
           GC_LOG_ENV: str(gc_log), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    log_path = body_file.with_name(f"server-{option.name}-{port}.log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(option.command(port), env=env, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        try:
            _wait_ready(url, body, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{option.name}: {exc}\n{log_path.read_text(errors='replace')}") from None
        for concurrency in concurrencies:
            _wrk(url, body_file, concurrency, 1)  # warm-up
            load = os.getloadavg()[0]
            before = tree_cpu(process.pid)
            began = time.time()
            result = _wrk(url, body_file, concurrency, seconds)
            used = tree_cpu(process.pid) - before
            logged = gc_log.read_text().splitlines() if gc_log.exists() else []
            collections = [float(line.split()[1]) for line in logged
                           if began <= float(line.split()[0]) <= time.time()]
            requests = max(1, int(result["requests"]))
            rows.append({"option": option.name, "concurrency": concurrency, "requests": requests,
                         "rps": requests / result["elapsed_s"], "p50_ms": result["p50_ms"],
                         "p99_ms": result["p99_ms"], "max_ms": result["max_ms"], "errors": result["errors"],
                         "cpu_us": used / requests * 1e6, "load1": round(load, 2),
                         "gen2": len(collections), "gen2_ms": max(collections, default=0.0)})
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| option | clients | req/s | p50 ms | p99 ms | max ms | errors | server CPU µs/req "
             "| full GCs | longest GC ms | load 1m |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['option']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['max_ms']:.1f} | {r['errors']} | {r['cpu_us']:.0f} | {r['gen2']:g} | {r['gen2_ms']:.1f} "
                     f"| {r['load1']} |")
    return "\n".join(lines)


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (option, clients): medians over the rounds, the worst max and GC, the load range."""
    out = []
    keys = list(dict.fromkeys((r["option"], r["concurrency"]) for r in rows))
    for option, concurrency in keys:
        cell = [r for r in rows if r["option"] == option and r["concurrency"] == concurrency]
        loads = [r["load1"] for r in cell]
        out.append({"option": option, "concurrency": concurrency,
                    **{k: float(np.median([r[k] for r in cell])) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")},
                    "max_ms": max(r["max_ms"] for r in cell), "errors": sum(r["errors"] for r in cell),
                    "gen2": float(np.median([r["gen2"] for r in cell])), "gen2_ms": max(r["gen2_ms"] for r in cell),
                    "load1": f"{min(loads):.2f}-{max(loads):.2f}"})
    return out


def rest_json_body(spec: ModelSpec) -> Payload:
    """The v2 JSON request every option answers: one row of the model's seeded input."""
    data = np.random.default_rng(0).random((1, spec.layers[0]), dtype=np.float32)
    return build_payload(spec.name, [Tensor(spec.input_name, "FP32", data)], [], "rest-json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="(internal) run the tensorgate option")
    serve.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() the start-up heap in every server")
    parser.add_argument("--only", nargs="+", choices=[o.name for o in OPTIONS])
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every option this many times, in turn; the table shows medians")
    args = parser.parse_args(argv)
    if args.command == "serve":
        _prepare_process()
        serve_tensorgate(args.port)
        return 0
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    payload = rest_json_body(MODELS[MODEL])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        body_file = payload.write(Path(folder))
        for _ in range(args.rounds):
            for option in OPTIONS:
                if args.only and option.name not in args.only:
                    continue
                if option.needs and not Path(sys.executable).with_name(option.needs).exists():
                    print(f"skipping {option.name}: {option.needs} is not installed", file=sys.stderr)
                    continue
                measured = run_option(option, body_file, payload.body, args.concurrency, args.duration,
                                      args.gc_freeze)
                print("\n".join(table(measured).split("\n")[2:]), file=sys.stderr, flush=True)
                rows += measured
    print(f"body {len(payload.body)} bytes of v2 JSON (784 FP32), reply 10 FP32; gc.freeze: {args.gc_freeze}; "
          f"wrk -t1 -d{args.duration}s; {args.rounds} round(s), medians")
    print(table(medians(rows)))
    if args.rounds > 1:
        print("\nEvery run:")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
