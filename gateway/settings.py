"""Server settings: one validated model, read from command-line flags over ``TENSORGATE_*`` variables.

Every setting is a field of :class:`Settings`; the ``serve`` flags are generated from the fields, so a
flag and its environment variable can never disagree on type, range or choices, and a bad value is
refused with a message that names the flag or the variable it came from.
"""

import argparse
import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.access import GROUPS, REFUSED_BY_DEFAULT, check_rules, parse_rule
from gateway.tracing_env import environment_problem

MIB = 1024 * 1024
ENV_PREFIX = "TENSORGATE_"
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


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number of seconds")
    return value


def _lowercase(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _names(value: object) -> object:
    """A comma-separated list (as the environment gives it) or a sequence of names."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return value


def _rules(value: object) -> object:
    """``--protect`` rules: repeated flags, or one variable with the rules separated by ``;``."""
    if isinstance(value, str):
        return tuple(rule.strip() for rule in value.split(";") if rule.strip())
    return value


def _protect_rules(value: tuple[str, ...]) -> tuple[str, ...]:
    for rule in value:
        parse_rule(rule)
    return value


def _openable(value: tuple[str, ...]) -> tuple[str, ...]:
    for group in value:
        if group not in REFUSED_BY_DEFAULT:
            raise ValueError(f"{group!r} cannot be opened: only {', '.join(REFUSED_BY_DEFAULT)} are refused by "
                             "default (every other group is open unless protected)")
    return value


def _origins(value: tuple[str, ...]) -> tuple[str, ...]:
    for origin in value:
        if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s?#]+", origin):
            raise ValueError(f"{origin!r} is not an origin: scheme://host[:port] without a path, as a browser "
                             "sends it (e.g. https://app.example.com), or '*'")
    return value


def _lower_names(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name.lower() for name in value)


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(ge=0), AfterValidator(_finite)]
Choice = BeforeValidator(_lowercase)
OptionalFile = Annotated[Path | None, BeforeValidator(_blank_is_none)]
Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names), AfterValidator(_lower_names)]


class Settings(BaseSettings):
    """What ``tensorgate serve`` runs with; the supervisor hands the same object to every child."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_by_name=True)

    model_repo: Path = Field(Path("model_repo"), description="model repository folder")
    model_name: str = Field(
        "", description="serve --model-repo as this one model: a folder as KServe's storage initializer mounts "
                        "it at /mnt/models (a model file, a SavedModel, or version folders; a Triton repository "
                        "is served as it is); see docs/kserve.md")
    host: str = Field("127.0.0.1", description="address to listen on")
    http_port: Port = Field(8000, description="REST port")
    grpc_port: Port = Field(8001, description="gRPC port")
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8002, description="Prometheus metrics port, 0 to turn metrics off")
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Choice] = Field(
        "info", description="log level, of every process of the server")
    log_format: Annotated[Literal["text", "json"], Choice] = Field(
        "text", description="log lines as text (logfmt: key=value pairs) or json (one object per line); the same "
                            "fields either way")
    access_log: bool = Field(
        False, description="log one line per request (REST and gRPC): model, version, protocol, endpoint, status, "
                           "duration, request id, client, trace id; never tensor data or header values")
    max_request_bytes: Annotated[int, Field(ge=1)] = Field(
        128 * MIB, description="largest REST body or gRPC message accepted, in bytes (default 128 MiB: a 64 MiB "
                               "tensor plus its envelope fits)")
    drain_timeout: Seconds = Field(
        30.0, description="on SIGTERM, seconds to finish the requests queued and in flight while new ones get "
                          "503 / UNAVAILABLE")
    frontends: Annotated[int, Field(ge=1, le=64)] = Field(
        default_factory=default_frontends,
        description="frontend processes sharing the REST and gRPC ports, doing the protocol work "
                    "(default: one per two CPUs, 1 to 8)")
    grpc_server: Annotated[Literal["aio", "native"], Choice] = Field(
        "native", description="the gRPC port's server: native (TensorGate's own HTTP/2 on the frontend's event "
                              "loop, a fraction of grpc.aio's CPU per call: docs/decisions.md) or aio (grpc.aio)")
    grpc_keepalive: Seconds = Field(
        7200.0, description="seconds a gRPC client may stay silent before the server pings its connection; one "
                            "that answers nothing within 20 s (or this long, if shorter) is disconnected. 0: never "
                            "(default 7200, grpc's)")
    grpc_min_ping_interval: Seconds = Field(
        300.0, description="the shortest gap between a gRPC client's PINGs when the server has sent it nothing "
                           "in between; a client that pings sooner more than twice is sent GOAWAY too_many_pings "
                           "and disconnected. 0: no limit (default 300, grpc's)")
    strict_readiness: bool = Field(
        True, description="true: /v2/health/ready only when every model is ready; false: ready once the first "
                          "load of every model has finished, whatever its outcome (per-model readiness tells the "
                          "rest)")
    metrics_compat: Annotated[Literal["none", "triton"], Choice] = Field(
        "none", description="also export another server's metric names: triton adds Triton's nv_inference_* "
                            "families with its model/version labels, beside TensorGate's own")
    model_control_mode: Annotated[Literal["none", "poll", "explicit"], Choice] = Field(
        "none", description="Triton's model control modes. none: load every model at start, change nothing later; "
                            "poll: the same, then rescan the repository every --repository-poll-secs and load, "
                            "reload or unload what changed; explicit: load the --load-model models at start, then "
                            "only what the repository API asks for")
    repository_poll_secs: Annotated[Seconds, Field(gt=0)] = Field(
        15.0, description="poll mode: seconds between repository scans")
    load_models: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)] = Field(
        (), validation_alias=AliasChoices("load_models", "TENSORGATE_LOAD_MODEL"),
        description="explicit mode: a model to load at start (repeat for more; '*' alone: every model; the "
                    "variable takes a comma-separated list)")

    protect: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_rules), AfterValidator(_protect_rules)] = Field(
        (), description="GROUP[,GROUP]:HEADER[:KEYS_FILE]: the groups need one of the accepted keys in HEADER, from "
                        "KEYS_FILE or else --api-keys-file / TENSORGATE_API_KEYS (repeat for more rules; the "
                        "variable separates rules with ';'); groups: " + ", ".join(GROUPS))
    api_keys_file: Path | None = Field(
        None, description="the keys of --protect rules without their own file: one key per line (several, to "
                          "rotate); or TENSORGATE_API_KEYS, comma-separated")
    open_groups: Annotated[Names, AfterValidator(_openable)] = Field(
        (), description="open model-repository and/or shared-memory to every caller without a key (refused by "
                        "default unless --protect gives them a key)")
    cors_origins: Annotated[Names, AfterValidator(_origins)] = Field(
        (), description="CORS: browser origins allowed to call the REST port, comma-separated ('*': any); "
                        "default none: CORS off")
    cors_methods: Names = Field(
        ("get", "post"), description="CORS: the methods allowed, comma-separated")
    cors_headers: Names = Field(
        ("content-type", "content-encoding", "inference-header-content-length"),
        description="CORS: the request headers allowed, comma-separated ('*': any); the --protect headers are "
                    "allowed as well")

    health_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        0, description="a plain-HTTP port answering GET /v2/health/live and /v2/health/ready only, for probes "
                       "that cannot present a client certificate under --tls-client-ca (0: off)")
    tls_cert: OptionalFile = Field(
        None, description="PEM certificate (leaf first, then intermediates): TLS on the REST, gRPC and metrics "
                          "ports, reloaded when the file changes (docs/tls.md)")
    tls_key: OptionalFile = Field(None, description="unencrypted PEM private key of --tls-cert")
    tls_client_ca: OptionalFile = Field(
        None, description="PEM CA certificate(s): mTLS, every client must present a certificate they signed")

    tracing: bool = Field(
        False, description="trace inference requests with OpenTelemetry and export the spans over OTLP, as the "
                           "standard OTEL_* variables say (endpoint, protocol, sampler, service name: see "
                           "docs/tracing.md)")

    @model_validator(mode="after")
    def _access_rules_agree(self) -> "Settings":
        check_rules(self.protect, self.open_groups)
        return self

    @model_validator(mode="after")
    def _health_port_is_its_own(self) -> "Settings":
        others = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        for flag, port in others.items():
            if self.health_port and self.health_port == port:
                raise ValueError(f"--health-port {port} is already {flag}: give the health port a port of its own")
        return self

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> "Settings":
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            raise ValueError(f"{given} needs {missing} as well (a certificate and its private key go together)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS with client certificates)")
        return self

    @model_validator(mode="after")
    def _tracing_variables_are_sound(self) -> "Settings":
        problem = environment_problem(os.environ) if self.tracing else None
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _load_models_fit_the_mode(self) -> "Settings":
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError(f"--load-model applies to --model-control-mode explicit only (the mode is "
                             f"{self.model_control_mode}, which loads every model)")
        if "*" in self.load_models and len(self.load_models) > 1:
            raise ValueError("--load-model '*' loads every model: give it alone, without other names")
        return self

    def to_json(self) -> str:
        """The settings for a child process's command line."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        """The settings a parent passed on; validated again, and never merged with this process's environment."""
        return cls.model_validate_json(text)


class SettingsError(ValueError):
    """A setting that is out of range, or settings that do not go together (the message says which)."""


#: Flags spelled otherwise than their field, and how argparse gathers them.
_FLAG_NAMES = {"load_models": "--load-model"}
_REPEATED = {"load_models", "protect"}
_METAVARS = {"load_models": "NAME", "model_name": "NAME", "model_repo": "DIR", "strict_readiness": "{true,false}",
             "tls_cert": "FILE", "tls_key": "FILE", "tls_client_ca": "FILE", "access_log": "{true,false}",
             "tracing": "{true,false}",
             "protect": "GROUPS:HEADER[:FILE]", "api_keys_file": "PATH", "open_groups": "GROUP[,GROUP]",
             "cors_origins": "ORIGIN[,ORIGIN]", "cors_methods": "METHOD[,METHOD]", "cors_headers": "HEADER[,HEADER]"}


def flag_name(field: str) -> str:
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def env_name(field: str) -> str:
    return ENV_PREFIX + flag_name(field).removeprefix("--").replace("-", "_").upper()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, with its variable and default in the help; values are checked by ``settings_from``."""
    for field, info in Settings.model_fields.items():
        default = "" if info.default_factory is not None else f"; default {_shown(info.default)}"
        choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is Literal else None
        metavar = "{" + ",".join(choices) + "}" if choices else _METAVARS.get(field)
        # A boolean flag alone means true (``--access-log``); ``--access-log false`` works too.
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if info.annotation is bool else {}
        parser.add_argument(flag_name(field), dest=field, default=argparse.SUPPRESS, metavar=metavar,
                            action="append" if field in _REPEATED else "store", **switch,
                            help=f"{info.description} (env {env_name(field)}{default})")


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple) and default:
        return ",".join(map(str, default))
    return str(default) if default not in ((), "", None) else "none"


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings from parsed flags, each missing one from its ``TENSORGATE_*`` variable or default."""
    given = {field: value for field, value in vars(args).items() if field in Settings.model_fields}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(error, given) for error in exc.errors())) from None


def _describe(error: Any, given: dict[str, Any]) -> str:
    """One validation error as the user wrote the value: ``--flag VALUE`` or ``TENSORGATE_NAME=VALUE``."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    field = "load_models" if error["loc"][0] == env_name("load_models") else str(error["loc"][0])
    if field not in Settings.model_fields:
        return f"{ENV_PREFIX}{field.upper()}: not a setting"
    source = f"{flag_name(field)} {given[field]!r}" if field in given else \
        f"{env_name(field)}={os.environ.get(env_name(field), '')!r}"
    return f"{source}: {message[:1].lower()}{message[1:]}"
