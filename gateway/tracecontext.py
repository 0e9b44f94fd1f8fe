"""W3C Trace Context: the ``traceparent`` header parsed, without OpenTelemetry.

Kept apart from ``gateway.tracing`` (which needs the OpenTelemetry SDK) so that anything that only
wants a request's trace id, such as a log line, can read it for the cost of a string split.
Parsing follows https://www.w3.org/TR/trace-context/#traceparent-header: lowercase hex only, the
all-zero ids and version ``ff`` are invalid, and a future version may append fields after a dash.
"""

from dataclasses import dataclass

__all__ = ["TraceParent", "parse_traceparent"]

_HEX = frozenset("0123456789abcdef")
_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2


@dataclass(frozen=True, slots=True)
class TraceParent:
    """The caller's span: trace id (128 bits), its span id (64 bits) and the trace flags."""

    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        return f"{self.span_id:016x}"


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """The ``traceparent`` header's value parsed, or None when it is missing or invalid (the spec's answer
    to an invalid header: start a new trace)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if len(text) < _LENGTH or (len(text) > _LENGTH and text[_LENGTH] != "-"):
        return None
    version, trace_id, span_id, flags = text[0:2], text[3:35], text[36:52], text[53:55]
    if text[2] != "-" or text[35] != "-" or text[52] != "-":
        return None
    if not _HEX.issuperset(version + trace_id + span_id + flags) or version == "ff":
        return None
    if version == "00" and len(text) != _LENGTH:
        return None
    parent = TraceParent(int(trace_id, 16), int(span_id, 16), int(flags, 16))
    return parent if parent.trace_id and parent.span_id else None
