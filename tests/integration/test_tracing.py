"""OpenTelemetry tracing on a real server, exported to a real OTLP receiver started by the test.

The server runs with ``--tracing`` and the standard OTEL_* variables pointing at the receiver; the
checks read the spans as a collector gets them: trace and parent ids, kinds, attributes, status,
links, and the order of start and end times (never their durations).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import model_factory
from tests.helpers import run_client_script
from tests.otlp_receiver import GrpcReceiver, HttpReceiver, Received, ReceivedSpan
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
SERVER, INTERNAL = 2, 1  # OTLP span kinds
STATUS_ERROR = 2
#: Loop turns that keep the ``gated`` model's instance busy for a few seconds, so that the requests
#: sent meanwhile are all queued when it frees, and leave in one batch.
GATE_TURNS = 800_000


def repository(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    model_factory.delay_model(repo, "delay", turns=50)
    model_factory.delay_model(repo, "gated", turns=GATE_TURNS, config=(
        "max_batch_size: 8\ndynamic_batching: {max_queue_delay_ms: 0}\n"))
    return repo


def start_server(repo: Path, env: dict[str, str], args: list[str]) -> ServerProcess:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        server = ServerProcess(repo, args)
        server.start()
    return server


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: HttpReceiver) -> Iterator[ServerProcess]:
    """Tracing on, OTLP/HTTP to ``receiver``, spans exported every 100 ms."""
    server = start_server(repository(tmp_path_factory.mktemp("traced")),
                          {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
                          ["--tracing"])
    yield server
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


def new_parent() -> tuple[str, str, str]:
    """A caller's trace id, span id and the traceparent header naming them (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def rest_infer(server: ServerProcess, model: str, x: np.ndarray, headers: dict[str, str] | None = None,
               request_id: str = "") -> httpx.Response:
    body: dict[str, object] = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                           "data": x.ravel().tolist()}]}
    if request_id:
        body["id"] = request_id
    return httpx.post(f"{server.http_url}/v2/models/{model}/infer", json=body, headers=headers, timeout=120)


def grpc_infer(server: ServerProcess, model: str, x: np.ndarray, traceparent: str | None = None,
               datatype: str = "FP32") -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model, id="grpc-1", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    metadata = [("traceparent", traceparent)] if traceparent else []
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply: pb.ModelInferResponse = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=metadata, timeout=120)
    return reply


def in_trace(trace_id: str, count: int) -> Callable[[list[ReceivedSpan]], bool]:
    return lambda spans: sum(s.trace_id == trace_id for s in spans) >= count


def request_spans(received: Received, trace_id: str, count: int = 4) -> dict[str, ReceivedSpan]:
    """The request's server span ("server") and its children by name, once all ``count`` have come."""
    spans = [s for s in received.wait_for(in_trace(trace_id, count)) if s.trace_id == trace_id]
    assert len(spans) == count, spans
    by_name = {("server" if s.kind == SERVER else s.name): s for s in spans}
    assert len(by_name) == count, spans
    return by_name


def check_request_tree(spans: dict[str, ReceivedSpan]) -> None:
    """queue, batch and encode are children of the server span, in that order, inside it."""
    server = spans["server"]
    for name in ("queue", "batch", "encode"):
        assert spans[name].parent_span_id == server.span_id, name
        assert spans[name].kind == INTERNAL
        assert spans[name].start_ns <= spans[name].end_ns
    queue, batch, encode = spans["queue"], spans["batch"], spans["encode"]
    assert server.start_ns <= queue.start_ns <= queue.end_ns <= batch.start_ns
    assert batch.end_ns <= encode.start_ns <= encode.end_ns <= server.end_ns
    [(event, at)] = batch.events
    assert event == "compute" and batch.start_ns <= at <= batch.end_ns


def test_rest_request_is_a_child_of_the_callers_span(traced: ServerProcess, receiver: HttpReceiver) -> None:
    trace_id, parent_id, traceparent = new_parent()
    x = np.ones((3, 4), np.float32)
    reply = rest_infer(traced, "delay", x, {"traceparent": traceparent, "tracestate": "vendor=opaque"}, "rest-7")
    assert reply.status_code == 200, reply.text
    spans = request_spans(receiver.received, trace_id)
    server = spans["server"]
    assert server.parent_span_id == parent_id and server.trace_state == "vendor=opaque"
    assert server.name == "POST /v2/models/{model_name}/infer"
    assert server.attributes == {
        "tensorgate.model.name": "delay", "tensorgate.model.version": "1", "tensorgate.protocol": "rest",
        "tensorgate.request.id": "rest-7", "tensorgate.request.rows": 3, "http.request.method": "POST",
        "http.route": "/v2/models/{model_name}/infer", "url.scheme": "http", "http.response.status_code": 200}
    assert server.status_code == 0  # unset: success
    assert spans["queue"].trace_state == "vendor=opaque"
    assert server.resource["service.name"] == "tensorgate"
    assert server.resource["service.version"] == version("tensorgate")
    check_request_tree(spans)
    assert spans["batch"].attributes["tensorgate.batch.rows"] >= 3
    assert spans["batch"].links  # itself, or the first request of its batch
    assert set(receiver.received.content_types) == {"application/x-protobuf"}


def test_grpc_request_is_a_child_of_the_callers_span(traced: ServerProcess, receiver: HttpReceiver) -> None:
    trace_id, parent_id, traceparent = new_parent()
    grpc_infer(traced, "delay", np.ones((2, 4), np.float32), traceparent)
    spans = request_spans(receiver.received, trace_id)
    server = spans["server"]
    assert server.parent_span_id == parent_id
    assert server.name == "inference.GRPCInferenceService/ModelInfer"
    assert server.attributes == {
        "tensorgate.model.name": "delay", "tensorgate.model.version": "1", "tensorgate.protocol": "grpc",
        "tensorgate.request.id": "grpc-1", "tensorgate.request.rows": 2, "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService", "rpc.method": "ModelInfer", "rpc.grpc.status_code": 0}
    check_request_tree(spans)


def test_a_request_without_traceparent_starts_a_new_trace(traced: ServerProcess, receiver: HttpReceiver) -> None:
    before = {s.trace_id for s in receiver.received.snapshot()}
    for request_id in ("fresh-1", "fresh-2"):
        assert rest_infer(traced, "delay", np.ones((1, 4), np.float32), request_id=request_id).status_code == 200
    spans = receiver.received.wait_for(
        lambda spans: sum(s.attributes.get("tensorgate.request.id", "").startswith("fresh") for s in spans) == 2)
    roots = [s for s in spans if s.attributes.get("tensorgate.request.id", "").startswith("fresh")]
    assert all(s.parent_span_id == "" and s.trace_id not in before for s in roots)
    assert roots[0].trace_id != roots[1].trace_id
    for root in roots:
        check_request_tree(request_spans(receiver.received, root.trace_id))


def test_a_bad_request_ends_its_span_with_an_error(traced: ServerProcess, receiver: HttpReceiver) -> None:
    trace_id, parent_id, traceparent = new_parent()
    reply = rest_infer(traced, "delay", np.ones((1, 3), np.float32), {"traceparent": traceparent})
    assert reply.status_code == 400, reply.text
    [server] = request_spans(receiver.received, trace_id, count=1).values()
    assert server.parent_span_id == parent_id and server.kind == SERVER
    assert server.status_code == STATUS_ERROR and "shape" in server.status_message
    assert server.attributes["http.response.status_code"] == 400
    assert server.attributes["error.type"] == "InvalidRequest"

    trace_id, _, traceparent = new_parent()
    with pytest.raises(grpc.RpcError) as error:
        grpc_infer(traced, "delay", np.ones((1, 4), np.int32), traceparent, datatype="INT32")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [server] = request_spans(receiver.received, trace_id, count=1).values()
    assert server.status_code == STATUS_ERROR
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def gauge(server: ServerProcess, name: str, model: str) -> float:
    for line in httpx.get(server.metrics_url).text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_requests_that_share_a_batch_are_linked(traced: ServerProcess, receiver: HttpReceiver) -> None:
    """8 requests (4 REST, 4 gRPC, over both frontends) queued behind a busy instance leave in one batch:
    each has its own batch span; the first request's links all 8 requests' spans, each other one links
    the first."""
    parents = [new_parent() for _ in range(8)]
    x = np.ones((1, 4), np.float32)
    with ThreadPoolExecutor(9) as pool:
        gate = pool.submit(rest_infer, traced, "gated", x)
        wait_until(lambda: gauge(traced, "tensorgate_inflight_requests", "gated") == 1, "the gate never started")
        calls = [pool.submit(rest_infer, traced, "gated", x, {"traceparent": p}) if i % 2 else
                 pool.submit(grpc_infer, traced, "gated", x, p) for i, (_, _, p) in enumerate(parents)]
        wait_until(lambda: gauge(traced, "tensorgate_queue_depth", "gated") == 8, "the 8 requests never queued")
        assert gate.result().status_code == 200
        for call in calls:
            call.result()
    trees = [request_spans(receiver.received, trace_id) for trace_id, _, _ in parents]
    contexts = {(tree["server"].trace_id, tree["server"].span_id) for tree in trees}
    [first] = [tree for tree in trees if len(tree["batch"].links) > 1]
    assert set(first["batch"].links) == contexts and len(first["batch"].links) == 8
    first_context = (first["server"].trace_id, first["server"].span_id)
    for tree, (_, parent_id, _) in zip(trees, parents, strict=True):
        assert tree["server"].parent_span_id == parent_id
        check_request_tree(tree)
        batch = tree["batch"]
        assert batch.attributes == {"tensorgate.batch.requests": 8, "tensorgate.batch.rows": 8}
        if tree is not first:
            assert batch.links == [first_context]
    assert {tree["server"].attributes["tensorgate.protocol"] for tree in trees} == {"rest", "grpc"}


def test_tritonclient_sends_traceparent(traced: ServerProcess, receiver: HttpReceiver) -> None:
    (http_trace, http_parent, http_header), (grpc_trace, grpc_parent, grpc_header) = new_parent(), new_parent()
    result = run_client_script(HERE / "tritonclient_tracing_checks.py", f"127.0.0.1:{traced.http_port}",
                               traced.grpc_address, http_header, grpc_header)
    assert result["http"] == result["grpc"] == (2 * np.arange(8).reshape(2, 4)).tolist()
    for trace_id, parent_id, request_id in ((http_trace, http_parent, "triton-http"),
                                            (grpc_trace, grpc_parent, "triton-grpc")):
        spans = request_spans(receiver.received, trace_id)
        assert spans["server"].parent_span_id == parent_id
        assert spans["server"].attributes["tensorgate.request.id"] == request_id
        check_request_tree(spans)


def test_otlp_grpc_export_and_the_flush_on_sigterm(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc exports to an OTLP/gRPC collector; the spans still buffered when
    SIGTERM comes (the processor would wait 60 s) are exported on the way out."""
    receiver = GrpcReceiver()
    try:
        server = start_server(repository(tmp_path), {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_SERVICE_NAME": "models-east",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.version=9"}, ["--tracing"])
        trace_id, parent_id, traceparent = new_parent()
        try:
            grpc_infer(server, "delay", np.ones((1, 4), np.float32), traceparent)
            assert rest_infer(server, "delay", np.ones((1, 4), np.float32), {"traceparent": traceparent}
                              ).status_code == 200
            assert receiver.received.snapshot() == []  # still buffered
        finally:
            assert server.stop() == 0, server.log()
        spans = [s for s in receiver.received.snapshot() if s.trace_id == trace_id]
        servers = [s for s in spans if s.kind == SERVER]
        assert len(spans) == 8 and len(servers) == 2
        assert all(s.parent_span_id == parent_id for s in servers)
        assert {(s.resource["service.name"], s.resource["service.version"], s.resource["deployment.environment"])
                for s in spans} == {("models-east", "9", "test")}
    finally:
        receiver.close()


@pytest.mark.parametrize(("env", "args"), [({}, []), ({"OTEL_SDK_DISABLED": "true"}, ["--tracing"])],
                         ids=["no-flag", "sdk-disabled"])
def test_tracing_off_exports_nothing(tmp_path: Path, env: dict[str, str], args: list[str]) -> None:
    """Without --tracing, an OTLP endpoint in the environment (a cluster-wide default, say) changes nothing;
    OTEL_SDK_DISABLED=true turns --tracing off."""
    receiver = HttpReceiver()
    try:
        server = start_server(repository(tmp_path), {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                     "OTEL_BSP_SCHEDULE_DELAY": "100", **env}, args)
        try:
            _, _, traceparent = new_parent()
            assert rest_infer(server, "delay", np.ones((1, 4), np.float32), {"traceparent": traceparent}
                              ).status_code == 200
            grpc_infer(server, "delay", np.ones((1, 4), np.float32), traceparent)
        finally:
            assert server.stop() == 0, server.log()
        assert receiver.received.snapshot() == []
        assert receiver.received.content_types == []
    finally:
        receiver.close()



def test_each_message_of_a_stream_has_its_span(traced: ServerProcess, receiver: HttpReceiver) -> None:
    trace_id, parent_id, traceparent = new_parent()
    good = pb.ModelInferRequest(model_name="delay", id="stream-good",
                                raw_input_contents=[np.ones((1, 4), np.float32).tobytes()])
    good.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    bad = pb.ModelInferRequest(model_name="nowhere", id="stream-bad")
    with grpc.insecure_channel(traced.grpc_address) as channel:
        replies = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([good, bad]), metadata=[("traceparent", traceparent)], timeout=120))
    assert not replies[0].error_message and replies[1].error_message == "the request has no inputs"
    spans = [s for s in receiver.received.wait_for(in_trace(trace_id, 5)) if s.trace_id == trace_id]
    servers = {s.attributes["tensorgate.request.id"]: s for s in spans if s.kind == SERVER}
    assert {s.name for s in servers.values()} == {"inference.GRPCInferenceService/ModelStreamInfer"}
    assert all(s.parent_span_id == parent_id for s in servers.values())
    assert servers["stream-good"].status_code == 0 and servers["stream-good"].attributes["rpc.grpc.status_code"] == 0
    assert servers["stream-bad"].status_code == STATUS_ERROR
    assert servers["stream-bad"].attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    good_tree = {s.name: s for s in spans if s.parent_span_id == servers["stream-good"].span_id}
    check_request_tree({**good_tree, "server": servers["stream-good"]})
    assert len(spans) == 5  # the bad message never reached a queue


def test_a_caller_that_does_not_sample_is_not_traced(traced: ServerProcess, receiver: HttpReceiver) -> None:
    """The default sampler, parentbased_always_on, follows the caller's sampled flag."""
    unsampled_trace, _, _ = new_parent()
    unsampled = f"00-{unsampled_trace}-{secrets.token_hex(8)}-00"
    assert rest_infer(traced, "delay", np.ones((1, 4), np.float32), {"traceparent": unsampled}).status_code == 200
    grpc_infer(traced, "delay", np.ones((1, 4), np.float32), unsampled)
    sampled_trace, _, sampled = new_parent()
    assert rest_infer(traced, "delay", np.ones((1, 4), np.float32), {"traceparent": sampled}).status_code == 200
    request_spans(receiver.received, sampled_trace)
    assert all(s.trace_id != unsampled_trace for s in receiver.received.snapshot())


def test_a_malformed_tracestate_is_dropped_without_a_word(traced: ServerProcess, receiver: HttpReceiver) -> None:
    """A client's bad tracestate (or one over the 512 characters W3C asks to pass on) never reaches the log."""
    for tracestate in ("not a member, at all", "k=" + "v" * 600):
        trace_id, parent_id, traceparent = new_parent()
        reply = rest_infer(traced, "delay", np.ones((1, 4), np.float32),
                           {"traceparent": traceparent, "tracestate": tracestate})
        assert reply.status_code == 200, reply.text
        server = request_spans(receiver.received, trace_id)["server"]
        assert server.parent_span_id == parent_id and server.trace_state == ""
    assert "not a member" not in traced.log() and "v" * 600 not in traced.log()


def test_a_client_that_hangs_up_ends_its_span_as_cancelled(traced: ServerProcess, receiver: HttpReceiver) -> None:
    """Not a server error: no ERROR status, error.type=cancelled, no status code (nothing was answered)."""
    trace_id, parent_id, traceparent = new_parent()
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{traced.http_url}/v2/models/gated/infer", json=body, headers={"traceparent": traceparent},
                   timeout=httpx.Timeout(60, read=0.5))
    [server] = request_spans(receiver.received, trace_id, count=1).values()
    assert server.parent_span_id == parent_id
    assert server.attributes["error.type"] == "cancelled" and server.status_code == 0
    assert "http.response.status_code" not in server.attributes
