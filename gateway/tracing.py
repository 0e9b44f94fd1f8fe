"""OpenTelemetry spans for inference requests, exported over OTLP; imported only when ``--tracing`` is on.

Each inference request gets one SERVER span, child of the caller's ``traceparent`` when it sends
one, with three children: ``queue`` (waiting in the model's queue), ``batch`` (the batch it ran
in, linked to the other traced requests of that batch, whichever frontend sent them) and
``encode`` (the response). The queue and the batch happen in the runtime worker, which imports nothing of
OpenTelemetry: it reports their times (``RequestTrace``) with the answer, and the frontend makes
the spans with those start and end times (docs/decisions.md, "Tracing"). Spans leave through a
batch span processor, on its own thread, so exporting never holds a request; ``shutdown`` flushes.
The exporter, sampler and resource come from the standard ``OTEL_*`` variables.
"""

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from gateway import __version__
from gateway.contract import SpanRef
from gateway.protocol.types import InferResponse
from gateway.tracecontext import parse_traceparent
from gateway.tracing_env import otlp_protocol

__all__ = ["InferSpan", "Tracing"]

GRPC_SERVICE = "inference.GRPCInferenceService"


def _exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter for OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL; it reads its endpoint, headers, timeout,
    compression and certificates from the OTEL_EXPORTER_OTLP_* variables itself."""
    if otlp_protocol(environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    return HttpExporter()


def _resource() -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME as the SDK reads them; what they leave out of
    service.name and service.version is tensorgate and the server's version."""
    given = OTELResourceDetector().detect().attributes
    defaults = {SERVICE_NAME: "tensorgate", SERVICE_VERSION: __version__}
    return Resource.create({key: value for key, value in defaults.items() if key not in given})


def _epoch_offset_ns() -> int:
    """What to add to ``time.monotonic_ns`` (the clock every process shares) to get the wall clock spans use.
    A request's spans all take their times from it, with one offset, so a step of the wall clock
    never reorders them."""
    return time.time_ns() - time.monotonic_ns()


class Tracing:
    """One frontend's tracer provider: the sampler (OTEL_TRACES_SAMPLER, default parentbased_always_on),
    the OTLP exporter behind a batch span processor, and the resource."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        # A malformed tracestate member is a client's doing: the API's warning about it, one per request
        # and quoting the header, would let any client write the server's log.
        logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)
        self._provider = TracerProvider(resource=_resource())
        self._provider.add_span_processor(BatchSpanProcessor(_exporter(environ)))
        self._tracer = self._provider.get_tracer("tensorgate", __version__)

    def start(self, protocol: str, method: str, model: str, version: str | None,
              traceparent: str | bytes | None, tracestate: str | bytes | None) -> "InferSpan":
        """The server span of one inference request, begun now, under the caller's span if it sent one."""
        parent = parse_traceparent(traceparent)
        context = None
        if parent is not None:
            # W3C: pass on at least 512 characters; a longer tracestate (a client's to choose) is dropped.
            state = TraceState.from_header([_text(tracestate)]) if tracestate and len(tracestate) <= 512 else None
            remote = SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                 trace_flags=TraceFlags(parent.flags & TraceFlags.SAMPLED), trace_state=state)
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        attributes: dict[str, str | int] = {"tensorgate.model.name": model, "tensorgate.protocol": protocol}
        if version:
            attributes["tensorgate.model.version"] = version
        if protocol == "grpc":
            name = f"{GRPC_SERVICE}/{method}"
            attributes.update({"rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": method})
        else:
            route = "/v2/models/{model_name}/versions/{model_version}/infer" if version else \
                "/v2/models/{model_name}/infer"
            name = f"POST {route}"
            attributes.update({"http.request.method": "POST", "http.route": route, "url.scheme": "http"})
        offset = _epoch_offset_ns()
        span = self._tracer.start_span(name, context, SpanKind.SERVER, attributes,
                                       start_time=time.monotonic_ns() + offset)
        return InferSpan(self._tracer, span, protocol, offset)

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the processor's thread (on the way out of the frontend)."""
        self._provider.shutdown()


class InferSpan:
    """One request's server span and its children."""

    __slots__ = ("_context", "_offset", "_protocol", "_recording", "_span", "_tracer")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, protocol: str, offset_ns: int) -> None:
        self._tracer = tracer
        self._span = span
        self._protocol = protocol
        self._offset = offset_ns
        #: Not sampled: nothing more to record, and no child spans to make (each would cost a sampling call).
        self._recording = span.is_recording()
        self._context = trace.set_span_in_context(span) if self._recording else None

    @property
    def ref(self) -> SpanRef | None:
        """This span's context for the worker, or None when it is not sampled (nothing to report back)."""
        if not self._recording:
            return None
        context = self._span.get_span_context()
        return context.trace_id, context.span_id, int(context.trace_flags)

    def request_id(self, request_id: str | None) -> None:
        if request_id and self._recording:
            self._span.set_attribute("tensorgate.request.id", request_id)

    def ran(self, response: InferResponse) -> None:
        """The version that answered, and the request's queue and batch spans from the worker's times."""
        if not self._recording:
            return
        span = self._span
        span.set_attribute("tensorgate.model.version", response.model_version)
        timing = response.trace
        if timing is None:
            return
        offset = self._offset
        batch = timing.batch
        span.set_attribute("tensorgate.request.rows", timing.rows)
        queue = self._tracer.start_span("queue", self._context, SpanKind.INTERNAL,
                                        start_time=timing.enqueued_ns + offset)
        queue.end(batch.dispatched_ns + offset)
        # The batch's first traced request links every traced request of it; each other one links that
        # first request: every request is one or two links away from all the others, for 2n links in all
        # (n per request would be n squared per batch, a real cost for large batches).
        own = span.get_span_context()
        first = batch.links[0]
        shared = batch.links if first[:2] == (own.trace_id, own.span_id) else (first,)
        links = [Link(SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags)))
                 for trace_id, span_id, flags in shared]
        executed = self._tracer.start_span(
            "batch", self._context, SpanKind.INTERNAL,
            {"tensorgate.batch.requests": batch.requests, "tensorgate.batch.rows": batch.rows},
            links, start_time=batch.dispatched_ns + offset)
        executed.add_event("compute", timestamp=batch.started_ns + offset)  # on the instance: gather and run
        executed.end(batch.finished_ns + offset)

    @contextmanager
    def encoding(self) -> Iterator[None]:
        """The ``encode`` span around encoding the response."""
        if not self._recording:
            yield
            return
        span = self._tracer.start_span("encode", self._context, SpanKind.INTERNAL,
                                       start_time=time.monotonic_ns() + self._offset)
        try:
            yield
        finally:
            span.end(time.monotonic_ns() + self._offset)

    def end(self, status: int | None, error: BaseException | None = None, cancelled: bool = False) -> None:
        """End the server span: ``status`` is the HTTP status or the gRPC status code (None: no answer sent)."""
        span = self._span
        if not self._recording:
            span.end()
            return
        if status is not None:
            span.set_attribute("rpc.grpc.status_code" if self._protocol == "grpc" else "http.response.status_code",
                               status)
        if cancelled:
            span.set_attribute("error.type", "cancelled")
        elif error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(getattr(error, "message", error))))
        span.end(time.monotonic_ns() + self._offset)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
