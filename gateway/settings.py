"""Server settings: command-line flags, each with a ``TENSORGATE_*`` environment default."""

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
#: --metrics-compat choices: which other server's metric names to export as well as ours.
METRICS_COMPAT = ("none", "triton")


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    limit; ``os.cpu_count()`` sees the whole node)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota != "max" and int(period) > 0:
        cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    return cpus


def default_frontends() -> int:
    """Frontend processes when not configured: one per two CPUs (the rest feed the models), 1 to 8."""
    return max(1, min(8, available_cpus() // 2))


@dataclass(frozen=True, slots=True)
class Settings:
    model_repo: Path = Path("model_repo")
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_level: str = "info"
    #: Largest accepted request, REST body or gRPC message (a 64 MiB tensor plus its envelope fits).
    max_request_bytes: int = 128 * MIB
    #: On SIGTERM, how long to keep serving what is queued and in flight before stopping anyway.
    drain_timeout: float = 30.0
    #: Frontend processes sharing the REST and gRPC ports.
    frontends: int = dataclasses.field(default_factory=default_frontends)
    #: Ready only when every model is ready (Triton's --strict-readiness); off: ready once loading is done.
    strict_readiness: bool = True
    #: Metric names another server uses, exported beside ours: "none", or "triton" (nv_inference_*).
    metrics_compat: str = "none"
    #: Triton's model control mode: none (load all at start, then no changes), poll (and rescan the
    #: repository every repository_poll_secs), explicit (load load_models at start, then the API decides).
    model_control_mode: str = "none"
    repository_poll_secs: float = 15.0
    #: explicit mode: the models loaded at start ("*": all).
    load_models: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The settings for a child process's command line."""
        return json.dumps({**dataclasses.asdict(self), "model_repo": str(self.model_repo)})

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        document = json.loads(text)
        return cls(**{**document, "model_repo": Path(document["model_repo"]),
                      "load_models": tuple(document.get("load_models", ()))})


def _env(name: str, default: object) -> str:
    return os.environ.get(f"TENSORGATE_{name.upper()}", str(default))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64, not {text!r}")
    return value


def _poll_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text!r}")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not true or false: {text!r}")


def _metrics_compat(text: str) -> str:
    """A --metrics-compat choice; checked here so that a bad TENSORGATE_METRICS_COMPAT fails too."""
    value = text.strip().lower()
    if value not in METRICS_COMPAT:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(METRICS_COMPAT)}, not {text!r}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--model-repo", type=Path, default=Path(_env("model_repo", d.model_repo)),
                        help="model repository folder (env TENSORGATE_MODEL_REPO; default ./model_repo)")
    parser.add_argument("--host", default=_env("host", d.host),
                        help="address to listen on (env TENSORGATE_HOST; default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=int(_env("http_port", d.http_port)),
                        help="REST port (env TENSORGATE_HTTP_PORT; default 8000)")
    parser.add_argument("--grpc-port", type=int, default=int(_env("grpc_port", d.grpc_port)),
                        help="gRPC port (env TENSORGATE_GRPC_PORT; default 8001)")
    parser.add_argument("--metrics-port", type=int, default=int(_env("metrics_port", d.metrics_port)),
                        help="Prometheus metrics port, 0 to turn metrics off "
                             "(env TENSORGATE_METRICS_PORT; default 8002)")
    parser.add_argument("--log-level", default=_env("log_level", d.log_level),
                        choices=["debug", "info", "warning", "error"],
                        help="log level (env TENSORGATE_LOG_LEVEL; default info)")
    parser.add_argument("--max-request-bytes", type=int,
                        default=int(_env("max_request_bytes", d.max_request_bytes)),
                        help="largest REST body or gRPC message accepted, in bytes "
                             "(env TENSORGATE_MAX_REQUEST_BYTES; default 128 MiB)")
    parser.add_argument("--drain-timeout", type=_seconds, default=_env("drain_timeout", d.drain_timeout),
                        help="on SIGTERM, seconds to finish the requests queued and in flight while new ones "
                             "get 503 / UNAVAILABLE (env TENSORGATE_DRAIN_TIMEOUT; default 30)")
    parser.add_argument("--frontends", type=_count, default=_env("frontends", d.frontends),
                        help="frontend processes sharing the REST and gRPC ports, doing the protocol work "
                             "(env TENSORGATE_FRONTENDS; default: one per two CPUs, 1 to 8)")
    parser.add_argument("--strict-readiness", type=_boolean, default=_env("strict_readiness", "true"),
                        help="true: /v2/health/ready only when every model is ready; false: ready once the "
                             "first load of every model has finished, whatever its outcome (per-model readiness "
                             "tells the rest) (env TENSORGATE_STRICT_READINESS; default true)")
    parser.add_argument("--metrics-compat", type=_metrics_compat, metavar="{" + ",".join(METRICS_COMPAT) + "}",
                        default=_env("metrics_compat", d.metrics_compat),
                        help="also export another server's metric names: triton adds Triton's nv_inference_* "
                             "families with its model/version labels, beside TensorGate's own "
                             "(env TENSORGATE_METRICS_COMPAT; default none)")
    parser.add_argument("--model-control-mode", default=_env("model_control_mode", d.model_control_mode),
                        choices=["none", "poll", "explicit"],
                        help="Triton's model control modes. none: load every model at start, change nothing "
                             "later; poll: the same, then rescan the repository every --repository-poll-secs and "
                             "load, reload or unload what changed; explicit: load the --load-model models at "
                             "start, then only what the repository API asks for "
                             "(env TENSORGATE_MODEL_CONTROL_MODE; default none)")
    parser.add_argument("--repository-poll-secs", type=_poll_seconds,
                        default=_env("repository_poll_secs", d.repository_poll_secs),
                        help="poll mode: seconds between repository scans "
                             "(env TENSORGATE_REPOSITORY_POLL_SECS; default 15)")
    environment_models = [n.strip() for n in _env("load_model", "").split(",") if n.strip()]
    parser.add_argument("--load-model", action="append", dest="load_models", metavar="NAME", default=None,
                        help="explicit mode: a model to load at start (repeat for more; '*' alone: every model) "
                             "(env TENSORGATE_LOAD_MODEL, comma-separated; default none)")
    parser.set_defaults(environment_load_models=environment_models)


class SettingsError(ValueError):
    """Flags that do not go together (the message says which)."""


def settings_from(args: argparse.Namespace) -> Settings:
    load_models = tuple(args.load_models if args.load_models is not None else args.environment_load_models)
    if load_models and args.model_control_mode != "explicit":
        raise SettingsError(f"--load-model applies to --model-control-mode explicit only (the mode is "
                            f"{args.model_control_mode}, which loads every model)")
    if "*" in load_models and len(load_models) > 1:
        raise SettingsError("--load-model '*' loads every model: give it alone, without other names")
    return Settings(
        model_repo=args.model_repo, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, log_level=args.log_level, max_request_bytes=args.max_request_bytes,
        drain_timeout=args.drain_timeout, frontends=args.frontends, strict_readiness=args.strict_readiness,
        metrics_compat=args.metrics_compat,
        model_control_mode=args.model_control_mode, repository_poll_secs=args.repository_poll_secs,
        load_models=load_models,
    )
