"""The ``tensorgate`` command line."""

import argparse
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import uvloop

from gateway.logs import configure
from gateway.repository.mounted import MountError, stage
from gateway.settings import SettingsError, add_serve_arguments, settings_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tensorgate", description="Open Inference Protocol model server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('tensorgate')}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve a model repository over REST and gRPC")
    add_serve_arguments(serve_parser)
    bench_parser = commands.add_parser("bench", help="benchmark a server against the model's offline limit",
                                       description="Closed-loop benchmark: see benchmarks/cli.py and the README.")
    try:
        from benchmarks.cli import add_arguments as add_bench_arguments
    except ImportError:  # an install without the benchmarks package: serve must still work
        bench_parser.set_defaults(bench_missing=True)
    else:
        add_bench_arguments(bench_parser)
    args = parser.parse_args(argv)

    if args.command == "serve":
        # Workers are spawned (fork+exec) while gRPC runs; its fork handlers only apply to
        # children that keep using gRPC, which ours never do.
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        from gateway.server import serve

        try:
            settings = settings_from(args)
        except SettingsError as exc:
            serve_parser.error(str(exc))
        configure(settings.log_level, settings.log_format)
        if not settings.model_repo.is_dir():
            serve_parser.error(f"--model-repo {settings.model_repo}: no such directory")
        if not settings.model_name:
            return uvloop.run(serve(settings))
        try:
            staging = tempfile.TemporaryDirectory(prefix="tensorgate-mounted-")
        except OSError as exc:
            serve_parser.error(f"--model-name: no writable temporary folder for the model's links ({exc}); "
                               f"mount an emptyDir at /tmp or set TMPDIR")
        with staging:
            try:
                repo = stage(settings.model_repo, settings.model_name, Path(staging.name))
            except MountError as exc:
                serve_parser.error(str(exc))
            return uvloop.run(serve(settings.model_copy(update={"model_repo": repo})))
    elif args.command == "bench":
        if getattr(args, "bench_missing", False):
            parser.error("bench: the benchmarks package is not installed (pip install -e '.[bench]')")
        from benchmarks.cli import main as bench

        return bench(args, sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
