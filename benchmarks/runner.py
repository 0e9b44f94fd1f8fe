"""One benchmark run: start the server (or use a running one), read each model's signature from it
and generate its request, check that request with one inference per protocol, drive each (model,
protocol, concurrency) point with a closed-loop load generator in its own process, read the
server's statistics and the CPU time of each of its processes, measure the offline limit where
the model file is at hand, and write the report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from benchmarks import offline as offline_module
from benchmarks import profile as pyspy
from benchmarks import stats, system, wrk
from benchmarks.inputs import (
    BenchError,
    Signature,
    Tensor,
    error_text,
    fetch_signature,
    generate_inputs,
    http_json,
    request_shapes,
)
from benchmarks.inputs import describe as describe_inputs
from benchmarks.loadgen import GRPC_METHOD, LoadResult
from benchmarks.models import MODEL_FILES, MODELS
from benchmarks.payloads import Payload, build_payload
from benchmarks.processes import ProcessCpu, ProcessTree, ServerProcess, cpu_between, find_server, is_loopback
from benchmarks.report import Offline, Point, Report, compare, markdown, plot
from benchmarks.repository import CACHE, ServingOptions, ensure_built, prepare_run_repo
from benchmarks.server import BenchServer, worker_pids
from runtimes.onednn_linear import linear_kernel

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunConfig:
    #: Built-in benchmark models (the harness's own server), or the server's model names (with ``url``).
    models: list[str]
    protocols: list[str]
    concurrency: list[int]
    fmt: str = "onnx"
    duration: float | None = 15.0
    requests: int | None = None
    warmup: float = 2.0
    #: Rows per request (``--batch-size``), for models that batch.
    rows: int = 1
    #: ``--shape``: an input's dims after the batch dim, which fixes its variable dims.
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    options: ServingOptions = field(default_factory=ServingOptions)
    url: str | None = None
    grpc_target: str | None = None
    server_pid: int | None = None
    #: With ``url``: the repository the server serves, where the offline measurement finds the model files.
    model_repo: Path | None = None
    #: ``--api-key-header``: REST inference requests carry $TENSORGATE_BENCH_API_KEY in this header.
    api_key_header: str | None = None
    #: Command-line fragments that mark a server process as a model worker (besides the known ones).
    worker_match: tuple[str, ...] = ()
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
    #: The server's processes, when they can be seen from here.
    tree: ProcessTree | None

    @property
    def gateway_pid(self) -> int | None:
        return self.tree.root if self.tree is not None else None


@dataclass
class _Model:
    """One model to measure: its name on the server, its signature and its generated request."""

    served: str
    base: str
    format: str
    signature: Signature
    tensors: list[Tensor]
    rows: int
    #: The offline measurement's model file, format and framework threads, or why there is none.
    offline_file: Path | None = None
    offline_format: str = ""
    offline_threads: int = 1
    offline_threads_from: str = ""
    offline_why: str = ""
    #: Why the server's statistics cannot be read ("" when they can): no batch sizes, queue or compute times.
    no_stats: str = ""

    def stats(self, target: _Target) -> stats.StatsSnapshot:
        return stats.StatsSnapshot() if self.no_stats else stats.fetch(target.http_url, self.served)

    @property
    def batch_cap(self) -> int:
        """The largest batch the server may form: the reference batch is capped there."""
        if not self.signature.batching:
            return 1
        return self.signature.max_batch_size or 1 << 30


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
                               concurrency, duration, requests, cfg.wrk_threads,
                               key_header=cfg.api_key_header), interrupt
        hostport = target.http_url.split("://", 1)[-1].rstrip("/")
        command = [sys.executable, "-m", "benchmarks.loadgen", "http", "--target", hostport, "--path", path,
                   "--content-type", payload.content_type]
        for name, value in payload.headers.items():
            command += ["--header", f"{name}: {value}"]
        if cfg.api_key_header:
            command += ["--key-header", cfg.api_key_header]
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


def _snapshot(target: _Target) -> dict[int, tuple[ServerProcess, float]] | None:
    return target.tree.snapshot() if target.tree is not None else None


def _profile_names(target: _Target) -> dict[str, int]:
    """py-spy targets: the server's processes, named as the report names them."""
    if target.tree is None:
        return {}
    names = {}
    for process in target.tree.processes():
        if process.pid == target.tree.root:
            names["gateway"] = process.pid
        else:
            names[f"{'worker' if process.worker else process.role} {process.pid}"] = process.pid
    return names


def measure_point(cfg: RunConfig, model: _Model, payload: Payload, body_file: Path, concurrency: int,
                  target: _Target, profile_dir: Path) -> Point:
    served = model.served
    label = f"{served} {payload.protocol} c={concurrency}"
    if cfg.warmup > 0:
        warm, _ = loadgen_command(cfg, payload, body_file, served, concurrency, target, cfg.warmup, None)
        run_child(warm)
    command, interrupt = loadgen_command(cfg, payload, body_file, served, concurrency, target, cfg.duration,
                                         cfg.requests)
    before = model.stats(target)
    cpu_before = _snapshot(target)
    profilers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    if cfg.profile:
        seconds = cfg.duration or 10.0
        for name, pid in _profile_names(target).items():
            out = profile_dir / f"{served}-{payload.protocol}-c{concurrency}-{name.replace(' ', '')}.txt"
            spy = pyspy.start(pid, seconds, out, native=cfg.profile_native)
            if spy is not None:
                profilers[name] = (spy, out)
    started = time.monotonic()
    machine_before = system.machine_busy_seconds()
    tick = None if model.no_stats else _progress(cfg, label, target, served, before, started)
    stdout, stderr, code, loadgen_cpu = run_child(command, tick, interrupt_after=interrupt)
    machine_busy = system.machine_busy_seconds() - machine_before
    after = model.stats(target)
    cpu_after = _snapshot(target)
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
    processes: list[ProcessCpu] = []
    exited: list[int] = []
    if cpu_before is not None and cpu_after is not None:
        processes, exited = cpu_between(cpu_before, cpu_after)
    gateway_cpu = workers_cpu = None
    if cpu_before is not None:
        gateway_cpu = sum(p.cpu_s for p in processes if not p.worker)
        workers_cpu = sum(p.cpu_s for p in processes if p.worker)
    elapsed = result.elapsed_s or 1e-9
    ok = result.requests - result.errors
    point = Point(
        model=served, base_model=model.base, format=model.format, protocol=payload.protocol,
        concurrency=concurrency, rows_per_request=model.rows, generator=result.generator, requests=result.requests,
        errors=result.errors, elapsed_s=result.elapsed_s, requests_per_s=ok / elapsed,
        inferences_per_s=ok * model.rows / elapsed,
        p50_ms=result.p50_ms, p90_ms=result.p90_ms, p99_ms=result.p99_ms, mean_ms=result.mean_ms,
        max_ms=result.max_ms, executions=delta.executions, mean_batch=delta.mean_batch,
        batch_histogram=delta.histogram(), server_queue_ms=delta.mean_queue_ms,
        server_compute_ms=delta.mean_compute_ms, server_failures=delta.fail, loadgen_cpu_s=loadgen_cpu,
        gateway_cpu_s=gateway_cpu, workers_cpu_s=workers_cpu,
        other_cpu_s=None if gateway_cpu is None or workers_cpu is None else
        max(0.0, machine_busy - loadgen_cpu - gateway_cpu - workers_cpu),
        error_samples=result.error_samples if result.errors else [], profile=profile,
        processes=processes, exited_pids=exited,
    )
    cfg.progress.write(f"  {label}: {point.requests_per_s:,.1f} req/s, {point.inferences_per_s:,.1f} infer/s, "
                       f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, mean batch {point.mean_batch:.2f}, "
                       f"errors {point.errors}\n")
    cfg.progress.flush()
    return point


def measure_offline(cfg: RunConfig, model: _Model, sizes: set[int]) -> Offline:
    """Time ``model``'s file in its framework at ``sizes`` (a subprocess: its imports stay out of the harness)."""
    assert model.offline_file is not None
    batched = model.signature.batching
    description = {"batched": batched, "tensors": [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape[1:] if batched else t.data.shape)}
        for t in model.tensors]}
    command = [sys.executable, "-m", "benchmarks.offline", "--format", model.offline_format,
               "--model-file", str(model.offline_file), "--inputs", json.dumps(description),
               "--threads", str(model.offline_threads), "--batch-sizes", ",".join(map(str, sorted(sizes))),
               "--min-time", str(cfg.offline_time), "--device", cfg.options.device]
    if model.offline_format in offline_module.LINEAR_FORMATS:
        # The served config's choice, read as the adapter reads it (unset: TensorGate's default).
        with contextlib.suppress(ValueError):  # a value the server refuses: its model is not served
            command += ["--linear-kernel", linear_kernel(model.signature.parameters)]
    stdout, stderr, code, _ = run_child(command)
    if code != 0:
        raise RuntimeError(f"the offline measurement of {model.served} failed ({code}): {stderr.strip()[-1500:]}")
    line = next(x for x in stdout.splitlines() if x.startswith("TGBENCH "))
    document = json.loads(line[len("TGBENCH "):])
    return Offline(document["framework"], int(document["threads"]),
                   {int(size): float(b["median_ms"]) for size, b in document["batches"].items()})


def _offline_sizes(model: _Model, points: list[Point]) -> set[int]:
    if not model.signature.batching:
        return {1}
    sizes = {1} | {min(p.concurrency * p.rows_per_request, model.batch_cap) for p in points}
    for p in points:
        sizes |= set(p.batch_histogram)
    return sizes


def _offline_source(cfg: RunConfig, signature: Signature) -> tuple[Path | None, str, str]:
    """(model file, format, "") for the offline measurement of a model on an external server, or
    (None, "", why not)."""
    if cfg.model_repo is None:
        return None, "", "its file is not at hand (give --model-repo, the repository the server serves)"
    folder = cfg.model_repo / signature.model
    if not folder.is_dir():
        return None, "", f"{folder} is not a folder"
    versions = [v for v in signature.versions if (folder / v).is_dir()] or [
        d.name for d in folder.iterdir() if d.is_dir() and d.name.isdigit()]
    if not versions:
        return None, "", f"{folder} holds no version folder"
    version = folder / max(versions, key=lambda v: int(v) if v.isdigit() else -1)
    fmt = offline_module.PLATFORMS.get(signature.platform) or offline_module.format_of(version)
    if fmt is None:
        return None, "", (f"its format ({signature.platform or 'platform not stated'}) is not timed offline "
                          f"(only {', '.join(offline_module.MODEL_FILES)} are)")
    path = version / offline_module.MODEL_FILES[fmt]
    if not path.is_file():
        return None, "", f"{path} is not a file"
    return path, fmt, ""


def _config_threads(signature: Signature) -> int | None:
    """The framework's intra-op threads from the model config (TensorGate's, Triton ONNX's and TFLite's names)."""
    for key in ("intra_op_threads", "intra_op_thread_count", "tflite_num_threads"):
        value = signature.parameters.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _external_target(cfg: RunConfig) -> tuple[_Target, str, str | None]:
    """The server at ``cfg.url``, a line about it for the report, and a note when its CPU is not measured."""
    assert cfg.url is not None
    url = cfg.url if "://" in cfg.url else f"http://{cfg.url}"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BenchError(f"--url {cfg.url!r}: not a URL with a valid port") from None
    http_url = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    grpc_target = cfg.grpc_target or (f"[{host}]:8001" if ":" in host else f"{host}:8001")
    note = None
    tree = None
    if cfg.server_pid is not None:
        if system.cpu_seconds(cfg.server_pid) is None:
            raise BenchError(f"--server-pid {cfg.server_pid}: no such process")
        tree = ProcessTree(cfg.server_pid, cfg.worker_match)
        how = f"pid {cfg.server_pid} (--server-pid)"
    elif is_loopback(host):
        root, how = find_server(port)
        if root is None:
            note = f"Server CPU not measured: {how}."
        else:
            tree = ProcessTree(root, cfg.worker_match)
    else:
        how = "not measured"
        note = (f"Server CPU not measured: {host} is not a loopback address (give --server-pid if the server "
                "runs on this machine).")
    text = f"external, {http_url} (gRPC {grpc_target}); server processes: {how}"
    return _Target(http_url, grpc_target, tree), text, note


def _check_ready(http_url: str, model: str) -> None:
    """An external server's model must be ready: its metadata says why not (e.g. an unknown name)."""
    quoted = urllib.parse.quote(model, safe="")
    status, _, _ = http_json(f"{http_url}/v2/models/{quoted}/ready", timeout=10)
    if status != 200:
        fetch_signature(http_url, model)  # raises with the server's words when the model is unknown
        raise BenchError(f"model {model!r} at {http_url} is not ready (HTTP {status} from /ready)")


def check_request(payload: Payload, target: _Target, model: str, key_header: str | None = None) -> None:
    """Send the generated request once; ``BenchError`` with the server's message if it is refused."""
    refused = f"model {model!r}: the server refused the generated {payload.protocol} request"
    if payload.protocol == "grpc":
        import grpc

        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(target.grpc_target, options=options) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=10)
            except grpc.FutureTimeoutError:
                raise BenchError(f"no gRPC server answered at {target.grpc_target} within 10 s "
                                 "(give --grpc-url HOST:PORT)") from None
            try:
                channel.unary_unary(GRPC_METHOD)(payload.body, timeout=60)
            except grpc.RpcError as exc:
                code, details = getattr(exc, "code", None), getattr(exc, "details", None)
                words = f"{code().name}: {details()}" if callable(code) and callable(details) else str(exc)
                raise BenchError(f"{refused}: {words}") from None
        return
    quoted = urllib.parse.quote(model, safe="")
    status, document, raw = http_json(f"{target.http_url}/v2/models/{quoted}/infer", payload.body,
                                      {"Content-Type": payload.content_type, **payload.headers,
                                       **_key(key_header)}, timeout=60)
    if status != 200:
        raise BenchError(f"{refused}: {error_text(status, document, raw)}")


def _key(header: str | None) -> dict[str, str]:
    """The ``--api-key-header`` header with its key, from the environment (never from a command line)."""
    return {header: os.environ["TENSORGATE_BENCH_API_KEY"]} if header else {}


def _prepare(cfg: RunConfig, target: _Target, names: list[tuple[str, str]]) -> list[_Model]:
    """Each model's signature and generated request; a --shape naming no input of any model is an error."""
    signatures = [fetch_signature(target.http_url, served) for served, _ in names]
    inputs = {t.name for s in signatures for t in s.inputs}
    unknown = sorted(set(cfg.shapes) - inputs)
    if unknown:
        listed = "; ".join(f"{s.model}: {', '.join(t.name for t in s.inputs)}" for s in signatures)
        raise BenchError(f"--shape names {', '.join(map(repr, unknown))}, not an input of "
                         f"{'the model' if len(signatures) == 1 else 'any model'} (inputs: {listed})")
    models = []
    for (served, base), signature in zip(names, signatures, strict=True):
        shapes = request_shapes(signature, {k: v for k, v in cfg.shapes.items()
                                            if k in {t.name for t in signature.inputs}}, cfg.rows)
        model = _Model(served=served, base=base, format=cfg.fmt if cfg.url is None else signature.platform or "?",
                       signature=signature, tensors=generate_inputs(signature, shapes),
                       rows=cfg.rows if signature.batching else 1)
        if cfg.url is None:
            model.offline_file = ensure_built(MODELS[base], cfg.fmt, cfg.cache) / MODEL_FILES[cfg.fmt]
            model.offline_format = cfg.fmt
            model.offline_threads, model.offline_threads_from = cfg.options.threads, "the served config"
        else:
            model.offline_file, model.offline_format, model.offline_why = _offline_source(cfg, signature)
            threads = _config_threads(signature)
            model.offline_threads = threads or cfg.options.threads
            model.offline_threads_from = "the model config" if threads else "--threads (the server's are not known)"
        try:
            stats.fetch(target.http_url, served)
        except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            model.no_stats = f"{type(exc).__name__}: {exc}"
        models.append(model)
    return models


def run(cfg: RunConfig) -> RunOutput:
    if cfg.url is None:
        unknown = [m for m in cfg.models if m not in MODELS]
        if unknown:
            raise BenchError(f"--model {', '.join(unknown)}: without --url choose from {', '.join(MODELS)}")
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    name = cfg.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    profile_dir = cfg.output_dir / f"{name}-profiles"
    load_before = system.load_average()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
    server: BenchServer | None = None
    notes: list[str] = []
    points: list[Point] = []
    models: list[_Model] = []
    try:
        if cfg.url is None:
            specs = [MODELS[m] for m in cfg.models]
            cfg.progress.write(f"building models and starting the server ({', '.join(cfg.models)}, {cfg.fmt})\n")
            repo = prepare_run_repo(workdir / "repo", [(s, cfg.fmt) for s in specs], cfg.options, cfg.cache)
            server = BenchServer(repo, workdir / "server.log")
            server.start()
            target = _Target(server.http_url, server.grpc_address, ProcessTree(server.pid, cfg.worker_match))
            server_text = (f"started by the harness (`tensorgate serve` on loopback, pid {server.pid}; "
                           f"runtime workers {worker_pids(server.pid)})")
            names = [(s.served_name(cfg.fmt), s.name) for s in specs]
            for served, _ in names:
                _wait_ready(target.http_url, served)
        else:
            target, server_text, cpu_note = _external_target(cfg)
            if cpu_note:
                notes.append(cpu_note)
            names = [(m, m) for m in cfg.models]
            for served, _ in names:
                _check_ready(target.http_url, served)
        models = _prepare(cfg, target, names)
        notes += [f"No server statistics for {m.served} (`/v2/models/{m.served}/stats`: {m.no_stats}): executed "
                  "batch sizes, queue and compute times are not reported." for m in models if m.no_stats]
        bodies: dict[tuple[str, str], tuple[Payload, Path]] = {}
        for model in models:
            for protocol in cfg.protocols:
                payload = build_payload(model.served, model.tensors, [o.name for o in model.signature.outputs],
                                        protocol)
                check_request(payload, target, model.served, cfg.api_key_header)
                bodies[model.served, protocol] = payload, payload.write(workdir / model.served)
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        for model in models:
            for protocol in cfg.protocols:
                payload, body_file = bodies[model.served, protocol]
                for concurrency in cfg.concurrency:
                    points.append(measure_point(cfg, model, payload, body_file, concurrency, target, profile_dir))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        if server is not None:
            code = server.stop()
            if code != 0:
                notes.append(f"The server exited with code {code}; its log: {server.log()[-2000:]!r}")
    offline: dict[str, Offline] = {}
    if cfg.offline:
        for model in models:
            mine = [p for p in points if p.model == model.served]
            if model.offline_file is None:
                notes.append(f"Offline limit of {model.served} not measured: {model.offline_why}.")
                continue
            sizes = _offline_sizes(model, mine)
            cfg.progress.write(f"offline: {model.served} at batch sizes {sorted(sizes)}\n")
            try:
                offline[model.served] = measure_offline(cfg, model, sizes)
            except RuntimeError as exc:
                notes.append(f"Offline limit of {model.served} not measured: {exc}")
                continue
            notes.append(f"Offline: {model.served} from {model.offline_file} ({model.offline_format}), "
                         f"{model.offline_threads} intra-op thread(s) from {model.offline_threads_from}.")
            for p in mine:
                p.comparison = compare(p, offline[model.served], model.batch_cap)
    measured = [p for p in points if p.processes]
    if measured and not any(c.worker for p in measured for c in p.processes):
        notes.append("No model worker process was found below the server's root (give --worker-match if it has "
                     "some): the model runs inside the server's own processes, so the gateway CPU includes its "
                     "compute.")
    generators = sorted({p.generator for p in points})
    if any(p.protocol != "grpc" for p in points) and not _use_wrk(cfg):
        notes.append("HTTP load came from the Python fallback client (wrk " +
                     ("not installed" if not wrk.available() else "not chosen: --loadgen python") + ").")
    if any(p.generator == "wrk" for p in points):
        notes.append(f"wrk: {cfg.wrk_threads} thread(s), one connection per client, benchmarks/infer.lua.")
    rows_text = f", {cfg.rows} rows per request" if cfg.rows != 1 else ", 1 row per request"
    if cfg.url is None:
        serving = cfg.options.describe() + f", format {cfg.fmt}" + rows_text
    else:
        serving = "as the external server's configs say (the harness's serving options do not apply)" + rows_text
    report = Report(
        title=cfg.title or f"TensorGate benchmark: {', '.join(cfg.models)} over {', '.join(cfg.protocols)}",
        command=cfg.command, started=started, machine=system.machine(), versions=system.versions(),
        load_before=load_before, load_after=system.load_average(), server=server_text,
        serving=serving, generators=generators, points=points, offline=offline, notes=notes,
        models={m.served: f"platform {m.signature.platform or '?'}; {m.signature.batch_text()}; "
                          f"{m.rows} row(s) per request; inputs generated: {describe_inputs(m.tensors)}"
                for m in models},
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
