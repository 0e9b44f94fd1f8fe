"""One benchmark run: start the server, drive each (model, protocol, concurrency) point with a
closed-loop load generator in its own process, read the server's statistics and CPU time,
measure the offline limit, and write the report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from benchmarks import profile as pyspy
from benchmarks import stats, system, wrk
from benchmarks.loadgen import LoadResult
from benchmarks.models import MODEL_FILES, MODELS, ModelSpec
from benchmarks.payloads import Payload, build_payload
from benchmarks.report import Offline, Point, Report, compare, markdown, plot
from benchmarks.repository import CACHE, ServingOptions, ensure_built, prepare_run_repo
from benchmarks.server import BenchServer, worker_pids

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunConfig:
    models: list[str]
    protocols: list[str]
    concurrency: list[int]
    fmt: str = "onnx"
    duration: float | None = 15.0
    requests: int | None = None
    warmup: float = 2.0
    rows: int = 1
    options: ServingOptions = field(default_factory=ServingOptions)
    url: str | None = None
    grpc_target: str | None = None
    server_pid: int | None = None
    loadgen: str = "auto"
    #: gRPC client: "aio" (grpc.aio) or "sync" (blocking calls, one thread per client).
    grpc_client: str = "aio"
    wrk_threads: int = 1
    offline: bool = True
    offline_time: float = 0.5
    output_dir: Path = ROOT / "benchmarks" / "results"
    name: str = ""
    title: str = ""
    profile: bool = False
    profile_native: bool = False
    command: str = ""
    #: Where built models are cached (benchmarks/model_repo).
    cache: Path = CACHE
    progress: TextIO = field(default_factory=lambda: sys.stderr)


@dataclass
class RunOutput:
    report: Report
    markdown: Path
    json: Path
    png: Path | None


@dataclass
class _Target:
    http_url: str
    grpc_target: str
    gateway_pid: int | None


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def run_child(command: list[str], tick: Callable[[], None] | None = None, interval: float = 1.0,
              interrupt_after: tuple[bytes, int] | None = None) -> tuple[str, str, int, float]:
    """Run ``command`` to the end; (stdout, stderr, exit code, CPU seconds it used, from wait4).

    ``interrupt_after`` (marker, n): send SIGINT once stdout holds the marker n times (wrk's
    threads print one when they reach their request count; wrk itself only stops at -d or SIGINT).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=_env())
        next_tick = time.monotonic() + interval
        interrupted = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.01 if interrupt_after else 0.05)
            if interrupt_after and not interrupted:
                marker, count = interrupt_after
                # pread: the child shares this file's offset, so never move it.
                if os.pread(out.fileno(), 1 << 20, 0).count(marker) >= count:
                    process.send_signal(signal.SIGINT)
                    interrupted = True
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick += interval
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (out.read().decode(errors="replace"), err.read().decode(errors="replace"), process.returncode,
                usage.ru_utime + usage.ru_stime)


def _wait_ready(http_url: str, model: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{http_url}/v2/models/{model}/ready", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"model {model} was not ready at {http_url} after {timeout} s")


def _server_cpu(gateway_pid: int | None) -> tuple[float | None, float | None]:
    if gateway_pid is None:
        return None, None
    gateway = system.cpu_seconds(gateway_pid)
    workers = [system.cpu_seconds(pid) for pid in worker_pids(gateway_pid)]
    return gateway, sum(w for w in workers if w is not None)


def _minus(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _use_wrk(cfg: RunConfig) -> bool:
    if cfg.loadgen == "python":
        return False
    if cfg.loadgen == "wrk" and not wrk.available():
        raise RuntimeError("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    return wrk.available()


def loadgen_command(cfg: RunConfig, payload: Payload, body_file: Path, served: str, concurrency: int,
                    target: _Target, duration: float | None,
                    requests: int | None) -> tuple[list[str], tuple[bytes, int] | None]:
    """The load generator's command line, and when to interrupt it (wrk with a request count)."""
    if payload.protocol == "grpc":
        kind = "grpc-sync" if cfg.grpc_client == "sync" else "grpc"
        command = [sys.executable, "-m", "benchmarks.loadgen", kind, "--target", target.grpc_target]
    else:
        path = f"/v2/models/{served}/infer"
        if _use_wrk(cfg):
            interrupt = None if duration else (wrk.DONE_MARKER, wrk.threads_for(concurrency, cfg.wrk_threads))
            return wrk.command(f"{target.http_url}{path}", body_file, payload.content_type, payload.headers,
                               concurrency, duration, requests, cfg.wrk_threads), interrupt
        hostport = target.http_url.split("://", 1)[-1].rstrip("/")
        command = [sys.executable, "-m", "benchmarks.loadgen", "http", "--target", hostport, "--path", path,
                   "--content-type", payload.content_type]
        for name, value in payload.headers.items():
            command += ["--header", f"{name}: {value}"]
    command += ["--body", str(body_file), "--concurrency", str(concurrency)]
    command += ["--duration", str(duration)] if duration else ["--requests", str(requests)]
    return command, None


def _progress(cfg: RunConfig, label: str, target: _Target, served: str, before: stats.StatsSnapshot,
              started: float) -> Callable[[], None]:
    tty = cfg.progress.isatty()

    def tick() -> None:
        try:
            delta = stats.fetch(target.http_url, served, timeout=2).minus(before)
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return
        elapsed = time.monotonic() - started
        total = f"/{cfg.duration:.0f}" if cfg.duration else ""
        line = (f"  {label}: {elapsed:5.1f}{total} s  {delta.inferences / elapsed:8.1f} infer/s  "
                f"mean batch {delta.mean_batch:5.2f}  failed {delta.fail}")
        cfg.progress.write(("\r" + line) if tty else line + "\n")
        cfg.progress.flush()

    return tick


def measure_point(cfg: RunConfig, spec: ModelSpec, served: str, payload: Payload, body_file: Path,
                  concurrency: int, target: _Target, profile_dir: Path) -> Point:
    label = f"{served} {payload.protocol} c={concurrency}"
    if cfg.warmup > 0:
        warm, _ = loadgen_command(cfg, payload, body_file, served, concurrency, target, cfg.warmup, None)
        run_child(warm)
    command, interrupt = loadgen_command(cfg, payload, body_file, served, concurrency, target, cfg.duration,
                                         cfg.requests)
    before = stats.fetch(target.http_url, served)
    gateway_before, workers_before = _server_cpu(target.gateway_pid)
    profilers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    if cfg.profile and target.gateway_pid is not None:
        seconds = cfg.duration or 10.0
        pids = {"gateway": target.gateway_pid} | {f"worker {pid}": pid for pid in worker_pids(target.gateway_pid)}
        for name, pid in pids.items():
            out = profile_dir / f"{served}-{payload.protocol}-c{concurrency}-{name.replace(' ', '')}.txt"
            spy = pyspy.start(pid, seconds, out, native=cfg.profile_native)
            if spy is not None:
                profilers[name] = (spy, out)
    started = time.monotonic()
    machine_before = system.machine_busy_seconds()
    stdout, stderr, code, loadgen_cpu = run_child(command, _progress(cfg, label, target, served, before, started),
                                                  interrupt_after=interrupt)
    machine_busy = system.machine_busy_seconds() - machine_before
    after = stats.fetch(target.http_url, served)
    gateway_after, workers_after = _server_cpu(target.gateway_pid)
    if cfg.progress.isatty():
        cfg.progress.write("\n")
    if code != 0:
        raise RuntimeError(f"{label}: the load generator exited with {code}:\n{stderr[-3000:]}")
    result = LoadResult.from_output(stdout)
    delta = after.minus(before)
    profile = None
    if profilers:
        profile = {}
        for name, (spy, out) in profilers.items():
            spy.wait(timeout=(cfg.duration or 10.0) + 30)
            if out.exists():
                profile[name] = pyspy.summarize(out, cfg.duration or 10.0, native=cfg.profile_native)
            else:
                log = out.with_suffix(".log")
                why = log.read_text(errors="replace").strip() if log.exists() else "no output"
                cfg.progress.write(f"  py-spy on the {name} failed: {why[-500:]}\n")
    elapsed = result.elapsed_s or 1e-9
    gateway_cpu = _minus(gateway_after, gateway_before)
    workers_cpu = _minus(workers_after, workers_before)
    ok = result.requests - result.errors
    point = Point(
        model=served, base_model=spec.name, format=cfg.fmt, protocol=payload.protocol, concurrency=concurrency,
        rows_per_request=cfg.rows, generator=result.generator, requests=result.requests, errors=result.errors,
        elapsed_s=result.elapsed_s, requests_per_s=ok / elapsed, inferences_per_s=ok * cfg.rows / elapsed,
        p50_ms=result.p50_ms, p90_ms=result.p90_ms, p99_ms=result.p99_ms, mean_ms=result.mean_ms,
        max_ms=result.max_ms, executions=delta.executions, mean_batch=delta.mean_batch,
        batch_histogram=delta.histogram(), server_queue_ms=delta.mean_queue_ms,
        server_compute_ms=delta.mean_compute_ms, server_failures=delta.fail, loadgen_cpu_s=loadgen_cpu,
        gateway_cpu_s=gateway_cpu, workers_cpu_s=workers_cpu,
        other_cpu_s=None if gateway_cpu is None or workers_cpu is None else
        max(0.0, machine_busy - loadgen_cpu - gateway_cpu - workers_cpu),
        error_samples=result.error_samples if result.errors else [], profile=profile,
    )
    cfg.progress.write(f"  {label}: {point.requests_per_s:,.1f} req/s, {point.inferences_per_s:,.1f} infer/s, "
                       f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, mean batch {point.mean_batch:.2f}, "
                       f"errors {point.errors}\n")
    cfg.progress.flush()
    return point


def measure_offline(cfg: RunConfig, spec: ModelSpec, sizes: set[int]) -> Offline:
    version = ensure_built(spec, cfg.fmt, cfg.cache)
    command = [sys.executable, "-m", "benchmarks.offline", "--format", cfg.fmt,
               "--model-file", str(version / MODEL_FILES[cfg.fmt]), "--input-size", str(spec.input_size),
               "--threads", str(cfg.options.threads), "--batch-sizes", ",".join(map(str, sorted(sizes))),
               "--min-time", str(cfg.offline_time)]
    stdout, stderr, code, _ = run_child(command)
    if code != 0:
        raise RuntimeError(f"offline measurement of {spec.name} failed ({code}):\n{stderr[-3000:]}")
    line = next(x for x in stdout.splitlines() if x.startswith("TGBENCH "))
    document = json.loads(line[len("TGBENCH "):])
    return Offline(document["framework"], int(document["threads"]),
                   {int(size): float(b["median_ms"]) for size, b in document["batches"].items()})


def run(cfg: RunConfig) -> RunOutput:
    specs = [MODELS[m] for m in cfg.models]
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    name = cfg.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    profile_dir = cfg.output_dir / f"{name}-profiles"
    load_before = system.load_average()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
    server: BenchServer | None = None
    notes: list[str] = []
    points: list[Point] = []
    try:
        if cfg.url is None:
            cfg.progress.write(f"building models and starting the server ({', '.join(cfg.models)}, {cfg.fmt})\n")
            repo = prepare_run_repo(workdir / "repo", [(s, cfg.fmt) for s in specs], cfg.options, cfg.cache)
            server = BenchServer(repo, workdir / "server.log")
            server.start()
            target = _Target(server.http_url, server.grpc_address, server.pid)
            server_text = (f"started by the harness (`tensorgate serve` on loopback, pid {server.pid}; "
                           f"runtime workers {worker_pids(server.pid)})")
        else:
            for spec in specs:
                ensure_built(spec, cfg.fmt, cfg.cache)
            host = cfg.url.split("://", 1)[-1].rsplit(":", 1)[0]
            target = _Target(cfg.url.rstrip("/"), cfg.grpc_target or f"{host}:8001", cfg.server_pid)
            server_text = f"external, {cfg.url} (gRPC {target.grpc_target})"
            if cfg.server_pid is None:
                notes.append("Server CPU not measured: the server is external and --server-pid was not given.")
        for spec in specs:
            served = spec.served_name(cfg.fmt)
            _wait_ready(target.http_url, served)
            for protocol in cfg.protocols:
                payload = build_payload(spec, served, protocol, cfg.rows)
                body_file = payload.write(workdir / served)
                for concurrency in cfg.concurrency:
                    points.append(measure_point(cfg, spec, served, payload, body_file, concurrency, target,
                                                profile_dir))
    finally:
        if server is not None:
            code = server.stop()
            if code != 0:
                notes.append(f"The server exited with code {code}; its log: {server.log()[-2000:]!r}")
    offline: dict[str, Offline] = {}
    if cfg.offline:
        for spec in specs:
            served = spec.served_name(cfg.fmt)
            mine = [p for p in points if p.model == served]
            sizes = {1} | {min(p.concurrency * p.rows_per_request, cfg.options.max_batch_size) for p in mine}
            for p in mine:
                sizes |= set(p.batch_histogram)
            cfg.progress.write(f"offline: {served} at batch sizes {sorted(sizes)}\n")
            offline[served] = measure_offline(cfg, spec, sizes)
        for p in points:
            p.comparison = compare(p, offline[p.model], cfg.options.max_batch_size)
    generators = sorted({p.generator for p in points})
    if any(p.protocol != "grpc" for p in points) and not _use_wrk(cfg):
        notes.append("HTTP load came from the Python fallback client (wrk " +
                     ("not installed" if not wrk.available() else "not chosen: --loadgen python") + ").")
    if any(p.generator == "wrk" for p in points):
        notes.append(f"wrk: {cfg.wrk_threads} thread(s), one connection per client, benchmarks/infer.lua.")
    report = Report(
        title=cfg.title or f"TensorGate benchmark: {', '.join(cfg.models)} over {', '.join(cfg.protocols)}",
        command=cfg.command, started=started, machine=system.machine(), versions=system.versions(),
        load_before=load_before, load_after=system.load_average(), server=server_text,
        serving=cfg.options.describe() + (f", format {cfg.fmt}" if cfg.fmt != "onnx" else ", format onnx")
        + (f", {cfg.rows} rows per request" if cfg.rows != 1 else ", 1 row per request"),
        generators=generators, points=points, offline=offline, notes=notes,
    )
    png: Path | None = cfg.output_dir / f"{name}.png"
    try:
        assert png is not None
        plot(report, png)
    except ImportError:
        notes.append("No plot: matplotlib is not installed (pip install 'tensorgate[bench]').")
        png = None
    md = cfg.output_dir / f"{name}.md"
    md.write_text(markdown(report, png.name if png else None))
    js = cfg.output_dir / f"{name}.json"
    js.write_text(report.to_json())
    shutil.rmtree(workdir, ignore_errors=True)
    return RunOutput(report, md, js, png)
