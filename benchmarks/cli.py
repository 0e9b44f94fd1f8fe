"""``tensorgate bench``: closed-loop benchmark of a real server against the model's offline limit.

Example: ``tensorgate bench --model mlp_large --protocol grpc --concurrency 16,32,64 --duration 20``.
Without ``--url`` the harness starts ``tensorgate serve`` itself on free loopback ports, serving
a repository of just the benchmark models asked for (built on first use into
``benchmarks/model_repo/``). With ``--url`` it measures any model of any running Open Inference
Protocol server (TensorGate, Triton, KServe runtimes), generating the requests from the model's
metadata: ``tensorgate bench --url http://127.0.0.1:8000 --model bert --shape input_ids:128``.
Results: ``benchmarks/results/<name>.md``, ``.json`` and ``.png``.

This module imports only the standard library at the top, so ``tensorgate`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

#: The formats the harness serves and times on a GPU (``benchmarks.offline --device``).
DEVICE_FORMATS = ("torchscript", "torch_export")

PROTOCOLS = ("rest-json", "rest-binary", "grpc")
MODEL_NAMES = ("mlp_small", "mlp_large", "identity", "mlp_tiny")
FORMATS = ("onnx", "torchscript", "torch_export", "torch_aoti")


def _ints(text: str) -> list[int]:
    """A comma-separated list of positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give integers >= 1, not {text!r}")
    return values


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:d1,d2,...``: an input's dims after the batch dim."""
    name, sep, dims = text.rpartition(":")
    try:
        values = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        values = ()
    if not sep or not name or not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME:d1,d2,... (integers >= 1: the input's dims after "
                                         "the batch dim)")
    return name, values


def _any_names(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated model names")
    return values


def _names(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A parser of comma-separated names out of ``choices``."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in choices]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)}")
        return values

    return parse


def _api_key_header(header: str | None) -> str | None:
    if header is not None and not os.environ.get("TENSORGATE_BENCH_API_KEY"):
        raise SystemExit("--api-key-header: set TENSORGATE_BENCH_API_KEY to the key to send")
    return header


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to measure")
    what.add_argument("--model", type=_any_names, default=["mlp_small"],
                      help="comma-separated models: with --url, the server's model names; without, the "
                           f"harness's benchmark models {', '.join(MODEL_NAMES)} (default mlp_small)")
    what.add_argument("--format", choices=FORMATS, default="onnx",
                      help="benchmark model format, served as <model> (onnx) or <model>_<format> (default onnx; "
                           "not with --url)")
    what.add_argument("--protocol", type=_names(PROTOCOLS), default=["grpc"],
                      help=f"comma-separated: {', '.join(PROTOCOLS)} (default grpc)")
    what.add_argument("--concurrency", type=_ints, default=[1, 16],
                      help="comma-separated closed-loop client counts to sweep (default 1,16)")
    length = what.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, default=None, help="seconds per point (default 15)")
    length.add_argument("--requests", type=int, default=None, help="requests per point, instead of a duration")
    what.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each point")
    what.add_argument("--batch-size", "--rows", dest="rows", type=int, default=1,
                      help="rows (batch dimension) per request, for models that batch (default 1)")
    what.add_argument("--shape", type=_shape, action="append", default=[], metavar="NAME:D1,D2,...",
                      help="an input's dims after the batch dim, for its variable (-1) dims; repeatable")
    serving = parser.add_argument_group("the server's model config (ignored with --url)")
    serving.add_argument("--max-batch-size", type=int, default=64)
    serving.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    serving.add_argument("--threads", type=int, default=1,
                         help="framework threads per instance, in the server and offline (default 1)")
    serving.add_argument("--instances", type=int, default=1)
    serving.add_argument("--device", default="cpu",
                         help="where the instances run, and the offline measurement with them: cpu or cuda:N "
                              "(cuda: torchscript or torch_export; default cpu)")
    external = parser.add_argument_group("an already running server (any Open Inference Protocol server)")
    external.add_argument("--url", default=None, help="REST base URL, e.g. http://127.0.0.1:8000")
    external.add_argument("--grpc-url", "--grpc-target", dest="grpc_target", default=None, metavar="HOST:PORT",
                          help="gRPC address (default: the --url host, port 8001)")
    external.add_argument("--server-pid", type=int, default=None,
                          help="the server's root pid, to report the CPU of its processes (default: on a loopback "
                               "URL, found from the process listening on the port)")
    external.add_argument("--worker-match", action="append", default=[], metavar="TEXT",
                          help="a command-line fragment that marks a server process as a model worker (not "
                               "gateway CPU); repeatable; TensorGate's and Triton's Python stubs are known")
    external.add_argument("--api-key-header", default=None, metavar="NAME",
                          help="send the key in $TENSORGATE_BENCH_API_KEY in this header with every REST inference "
                               "request (a server with --protect inference:NAME); the key stays out of the results")
    external.add_argument("--model-repo", type=Path, default=None,
                          help="the repository the server serves: its ONNX, TorchScript, torch.export and "
                               "AOTInductor files are timed offline")
    gen = parser.add_argument_group("load generation and output")
    gen.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                     help="HTTP load from wrk (auto: when installed) or the Python client")
    gen.add_argument("--wrk-threads", type=int, default=1)
    gen.add_argument("--grpc-client", choices=["aio", "sync"], default="aio",
                     help="gRPC load from grpc.aio (default) or blocking calls in threads")
    gen.add_argument("--no-offline", action="store_true", help="skip the offline measurement")
    gen.add_argument("--offline-time", type=float, default=0.5, help="seconds of offline calls per batch size")
    gen.add_argument("--profile", nargs="?", const="python", choices=["python", "native"], default=None,
                     help="sample the gateway and workers with py-spy during each point "
                          "('native': include C/C++ frames, e.g. uvloop, grpc, onnxruntime)")
    gen.add_argument("--output-dir", type=Path, default=None, help="default benchmarks/results")
    gen.add_argument("--name", default="", help="file name stem of the results (default: a timestamp)")
    gen.add_argument("--title", default="", help="the results file's title")
    gen.add_argument("--model-cache", type=Path, default=None,
                     help="where built models are kept (default benchmarks/model_repo)")


def main(args: argparse.Namespace | list[str] | None = None, argv: list[str] | None = None) -> int:
    """Run a benchmark: ``args`` parsed by ``tensorgate``'s parser (``argv`` is its command line,
    for the results file), or a list of arguments to parse here."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="tensorgate bench", description=__doc__.splitlines()[0])
        add_arguments(parser)
        bench_argv = sys.argv[1:] if args is None else args
        args = parser.parse_args(bench_argv)
        argv = ["bench", *bench_argv]
    command = "tensorgate " + shlex.join(argv if argv is not None else ["bench"])
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in args.shape:
        if name in shapes:
            return _fail(f"--shape {name} is given twice")
        shapes[name] = dims
    if args.url is None:
        unknown = [m for m in args.model if m not in MODEL_NAMES]
        if unknown:
            return _fail(f"--model {','.join(unknown)}: without --url, choose from {', '.join(MODEL_NAMES)} "
                         "(or give --url of a running server)")
        if args.model_repo is not None:
            return _fail("--model-repo goes with --url (without it the harness serves and times its own models)")
    if args.rows < 1:
        return _fail(f"--batch-size {args.rows}: give 1 or more")
    if args.device != "cpu" and not (args.device.startswith("cuda:") and args.device[5:].isdigit()):
        return _fail(f"--device {args.device}: give cpu or cuda:N")
    if args.device != "cpu" and args.url is None and args.format not in DEVICE_FORMATS:
        return _fail(f"--device {args.device}: the harness puts {' and '.join(DEVICE_FORMATS)} models on a GPU, "
                     f"not {args.format} (give --format)")

    from benchmarks.inputs import BenchError
    from benchmarks.repository import ServingOptions
    from benchmarks.runner import RunConfig, run

    cfg = RunConfig(
        models=list(args.model), protocols=list(args.protocol), concurrency=list(args.concurrency),
        fmt=args.format, duration=args.duration if args.requests is None else None,
        requests=args.requests, warmup=args.warmup, rows=args.rows, shapes=shapes,
        options=ServingOptions(max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                               instances=args.instances, threads=args.threads, device=args.device),
        url=args.url, grpc_target=args.grpc_target, server_pid=args.server_pid, model_repo=args.model_repo,
        api_key_header=_api_key_header(args.api_key_header), worker_match=tuple(args.worker_match),
        loadgen=args.loadgen,
        wrk_threads=args.wrk_threads, grpc_client=args.grpc_client, offline=not args.no_offline,
        offline_time=args.offline_time,
        name=args.name, title=args.title, profile=args.profile is not None,
        profile_native=args.profile == "native", command=command,
    )
    if args.requests is None and args.duration is None:
        cfg.duration = 15.0
    if args.output_dir is not None:
        cfg.output_dir = args.output_dir
    if args.model_cache is not None:
        cfg.cache = args.model_cache
    try:
        output = run(cfg)
    except BenchError as exc:
        return _fail(str(exc))
    sys.stderr.write(f"results: {output.markdown}" + (f", {output.png}" if output.png else "") + "\n")
    return 0


def _fail(message: str) -> int:
    sys.stderr.write(f"tensorgate bench: error: {message}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
