"""The standard ``OTEL_*`` variables that ``--tracing`` reads, checked at start without the OpenTelemetry SDK.

The SDK falls back to its defaults, with a warning, on a value it does not know (an unknown
sampler samples everything); a server refuses such a value at start instead, naming the variable.
"""

from collections.abc import Mapping

#: The samplers the SDK builds from OTEL_TRACES_SAMPLER.
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
#: OTLP transports the Python exporters offer (http/json has none).
PROTOCOLS = ("http/protobuf", "grpc")
_PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def _value(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip().lower()


def sdk_disabled(environ: Mapping[str, str]) -> bool:
    """OTEL_SDK_DISABLED=true turns tracing off whatever ``--tracing`` says, as the specification wants."""
    return _value(environ, "OTEL_SDK_DISABLED") == "true"


def otlp_protocol(environ: Mapping[str, str]) -> str:
    """The OTLP transport: the traces variable, else the general one, else http/protobuf (the spec's default)."""
    for name in _PROTOCOL_VARIABLES:
        if _value(environ, name):
            return _value(environ, name)
    return "http/protobuf"


def environment_problem(environ: Mapping[str, str]) -> str | None:
    """What is wrong with the tracing variables, naming the variable, or None."""
    exporter = _value(environ, "OTEL_TRACES_EXPORTER")
    if exporter not in ("", "otlp"):
        return f"OTEL_TRACES_EXPORTER={exporter!r}: --tracing exports with OTLP only (otlp)"
    for name in _PROTOCOL_VARIABLES:
        protocol = _value(environ, name)
        if protocol and protocol not in PROTOCOLS:
            return f"{name}={protocol!r}: must be one of {', '.join(PROTOCOLS)}"
    sampler = _value(environ, "OTEL_TRACES_SAMPLER")
    if sampler and sampler not in SAMPLERS:
        return f"OTEL_TRACES_SAMPLER={sampler!r}: must be one of {', '.join(SAMPLERS)}"
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if argument and sampler.endswith("traceidratio"):
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            return f"OTEL_TRACES_SAMPLER_ARG={argument!r}: must be a sampling ratio from 0 to 1"
    return None
