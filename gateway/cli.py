"""The ``tensorgate`` command line."""

import argparse
import os
import sys

import uvloop

from gateway.logs import configure
from gateway.settings import add_serve_arguments, settings_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tensorgate", description="Open Inference Protocol model server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve a model repository over REST and gRPC")
    add_serve_arguments(serve_parser)
    args = parser.parse_args(argv)

    if args.command == "serve":
        # Workers are spawned (fork+exec) while gRPC runs; its fork handlers only apply to
        # children that keep using gRPC, which ours never do.
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        from gateway.server import serve

        configure(args.log_level)
        settings = settings_from(args)
        if not settings.model_repo.is_dir():
            parser.error(f"--model-repo {settings.model_repo}: no such directory")
        uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
