"""``tensorgate bench``: closed-loop benchmark of a real server against the model's offline limit.

Example: ``tensorgate bench --model mlp_large --protocol grpc --concurrency 16,32,64 --duration 20``.
Without ``--url`` the harness starts ``tensorgate serve`` itself on free loopback ports, serving
a repository of just the benchmark models asked for (built on first use into
``benchmarks/model_repo/``). Results: ``benchmarks/results/<name>.md``, ``.json`` and ``.png``.

This module imports only the standard library at the top, so ``tensorgate`` starts fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

PROTOCOLS = ("rest-json", "rest-binary", "grpc")
MODEL_NAMES = ("mlp_small", "mlp_large", "identity", "mlp_tiny")
FORMATS = ("onnx", "torchscript")


def _ints(text: str) -> list[int]:
    """A comma-separated list of positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give integers >= 1, not {text!r}")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to measure")
    what.add_argument("--model", type=_names(MODEL_NAMES), default=["mlp_small"],
                      help=f"comma-separated benchmark models: {', '.join(MODEL_NAMES)} (default mlp_small)")
    what.add_argument("--format", choices=FORMATS, default="onnx",
                      help="model format, served as <model> (onnx) or <model>_torchscript (default onnx)")
    what.add_argument("--protocol", type=_names(PROTOCOLS), default=["grpc"],
                      help=f"comma-separated: {', '.join(PROTOCOLS)} (default grpc)")
    what.add_argument("--concurrency", type=_ints, default=[1, 16],
                      help="comma-separated closed-loop client counts to sweep (default 1,16)")
    length = what.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, default=None, help="seconds per point (default 15)")
    length.add_argument("--requests", type=int, default=None, help="requests per point, instead of a duration")
    what.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each point")
    what.add_argument("--rows", type=int, default=1, help="rows (batch dimension) per request (default 1)")
    serving = parser.add_argument_group("the server's model config (ignored with --url)")
    serving.add_argument("--max-batch-size", type=int, default=64)
    serving.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    serving.add_argument("--threads", type=int, default=1,
                         help="framework threads per instance, in the server and offline (default 1)")
    serving.add_argument("--instances", type=int, default=1)
    external = parser.add_argument_group("an already running server")
    external.add_argument("--url", default=None, help="REST base URL, e.g. http://127.0.0.1:8000")
    external.add_argument("--grpc-target", default=None, help="host:port (default: the --url host, port 8001)")
    external.add_argument("--server-pid", type=int, default=None, help="gateway pid, to report the server's CPU")
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

    from benchmarks.repository import ServingOptions
    from benchmarks.runner import RunConfig, run

    cfg = RunConfig(
        models=list(args.model), protocols=list(args.protocol), concurrency=list(args.concurrency),
        fmt=args.format, duration=args.duration if args.requests is None else None,
        requests=args.requests, warmup=args.warmup, rows=args.rows,
        options=ServingOptions(max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                               instances=args.instances, threads=args.threads),
        url=args.url, grpc_target=args.grpc_target, server_pid=args.server_pid, loadgen=args.loadgen,
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
    output = run(cfg)
    sys.stderr.write(f"results: {output.markdown}" + (f", {output.png}" if output.png else "") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
